//! `cargo xtask bench-serve`: a load generator on loopback. Starts the server in this process on
//! 127.0.0.1:0 and sends requests over keep-alive connections, bounded in requests and in time,
//! then prints throughput and p50/p99/p99.9 latency (client-side: request written to response
//! read) for
//!
//! 1. a known user, top 10, exact search;
//! 2. a new user (features) with 20 recent items, top 10 (the user tower per request);
//! 3. a known user, top 10, HNSW over a synthetic catalogue of `--hnsw-items` random unit vectors.
//!
//! ```text
//! cargo xtask bench-serve [--run DIR] [--requests N] [--seconds S] [--connections C]
//!                         [--server-threads T] [--hnsw-items N] [--skip-hnsw]
//! ```
//! Defaults: runs/ml-1m-leave-last-out, 50,000 requests or 10 s per scenario, 16 connections,
//! 2 server threads, 200,000 HNSW items (1,000,000 takes several minutes to build on 2 cores).

#[path = "../tests/common/http.rs"]
mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dssm_recommend::{HnswConfig, IndexKind, Recommender};
use dssm_retrieval::EmbeddingMatrix;
use dssm_serve::{ServeConfig, Server};

struct Options {
    run: PathBuf,
    requests: usize,
    seconds: f64,
    connections: usize,
    server_threads: usize,
    hnsw_items: usize,
    skip_hnsw: bool,
}

fn options() -> Options {
    let mut o = Options {
        run: PathBuf::from("runs/ml-1m-leave-last-out"),
        requests: 50_000,
        seconds: 10.0,
        connections: 16,
        server_threads: 2,
        hnsw_items: 200_000,
        skip_hnsw: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--run" => o.run = PathBuf::from(value()),
            "--requests" => o.requests = value().replace('_', "").parse().expect("--requests N"),
            "--seconds" => o.seconds = value().parse().expect("--seconds S"),
            "--connections" => o.connections = value().parse().expect("--connections C"),
            "--server-threads" => o.server_threads = value().parse().expect("--server-threads T"),
            "--hnsw-items" => {
                o.hnsw_items = value().replace('_', "").parse().expect("--hnsw-items N")
            }
            "--skip-hnsw" => o.skip_hnsw = true,
            "-h" | "--help" => {
                println!(
                    "{}",
                    include_str!("bench_serve.rs")
                        .lines()
                        .take(17)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => panic!("unknown option {other}; --help lists them"),
        }
    }
    o
}

/// A request body per index (cycled).
type Bodies = Arc<Vec<String>>;

struct Figures {
    requests: usize,
    errors: usize,
    wall: Duration,
    latencies_us: Vec<u32>,
}

fn main() {
    let o = options();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.server_threads)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let recommender = Recommender::load(&o.run, IndexKind::Exact)
        .unwrap_or_else(|e| panic!("{e} (train it: README, Serving)"));
    println!(
        "run          {} ({}; {} users, {} candidates, dim {}), loaded in {:.1} s",
        o.run.display(),
        recommender.model_id(),
        recommender.user_keys().len(),
        recommender.candidates(),
        recommender.dim(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "load         {} requests or {} s per scenario, {} connections, {} server threads, loopback",
        o.requests, o.seconds, o.connections, o.server_threads
    );
    let known = known_user_bodies(&recommender);
    let new_users = new_user_bodies(&recommender);
    let hnsw = (!o.skip_hnsw).then(|| synthetic_catalogue(&o, &recommender));

    println!(
        "\n{:<44} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "scenario", "requests", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    let (addr, stop) = start(&server_rt, recommender, &o);
    report(
        "known user, top 10, exact",
        &client_rt.block_on(load(addr, known.clone(), &o)),
    );
    report(
        "new user + 20 recent items, top 10, exact",
        &client_rt.block_on(load(addr, new_users, &o)),
    );
    let _ = stop.send(());
    if let Some((catalogue, items, built)) = hnsw {
        let (addr, stop) = start(&server_rt, catalogue, &o);
        let name = format!("known user, top 10, HNSW over {items} items");
        report(&name, &client_rt.block_on(load(addr, known, &o)));
        let c = HnswConfig::default();
        println!(
            "(HNSW M {}, ef_construction {}, ef_search {}: built in {built:.1} s)",
            c.max_connections, c.ef_construction, c.ef_search
        );
        let _ = stop.send(());
    }
}

fn start(
    rt: &tokio::runtime::Runtime,
    recommender: Recommender,
    o: &Options,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut config = ServeConfig::new(o.run.clone());
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.max_in_flight = o.connections.max(256);
    let server = rt.block_on(Server::bind_with(recommender, config)).unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn known_user_bodies(r: &Recommender) -> Bodies {
    Arc::new(
        r.user_keys()
            .iter()
            .map(|key| format!("{{\"user_id\": \"{key}\", \"k\": 10}}"))
            .collect(),
    )
}

/// Deterministic pseudo-random new users: MovieLens-like features and 20 distinct recent items.
fn new_user_bodies(r: &Recommender) -> Bodies {
    let items: Vec<u32> = r
        .user_keys()
        .iter()
        .filter_map(|key| r.user(key).ok())
        .flat_map(|u| u.recent.into_iter().take(1))
        .collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let ages = ["1", "18", "25", "35", "45", "50", "56"];
    Arc::new(
        (0..2_000)
            .map(|_| {
                let mut recent: Vec<u32> = Vec::with_capacity(20);
                while recent.len() < 20 {
                    let id = items[(next() % items.len() as u64) as usize];
                    if !recent.contains(&id) {
                        recent.push(id);
                    }
                }
                let gender = if next() % 2 == 0 { "F" } else { "M" };
                let age = ages[(next() % 7) as usize];
                let occupation = next() % 21;
                let features: Vec<String> = [
                    ("gender", format!("\"{gender}\"")),
                    ("age", age.to_string()),
                    ("occupation", occupation.to_string()),
                ]
                .into_iter()
                .filter(|(name, _)| r.feature_names().iter().any(|n| n == name))
                .map(|(name, value)| format!("\"{name}\": {value}"))
                .collect();
                format!(
                    "{{\"features\": {{{}}}, \"recent_items\": {recent:?}, \"k\": 10}}",
                    features.join(", ")
                )
            })
            .collect(),
    )
}

/// The run with its candidates replaced by `hnsw_items` random unit vectors under HNSW.
fn synthetic_catalogue(o: &Options, r: &Recommender) -> (Recommender, usize, f64) {
    let dim = r.dim();
    let n = o.hnsw_items;
    let mut state = 42u64;
    let mut data = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let row: Vec<f32> = (0..dim)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        data.extend(row.iter().map(|v| v / norm));
    }
    println!(
        "hnsw         building the graph over {n} synthetic items (random unit vectors, the hardest case: minutes for 1M on 2 cores)"
    );
    let ids: Vec<u32> = (1..=n as u32).map(|i| 1_000_000 + i).collect();
    let matrix = EmbeddingMatrix::new(ids, dim, data).unwrap();
    let started = Instant::now();
    let copy = Recommender::load(&o.run, IndexKind::Exact).unwrap();
    let catalogue = copy
        .with_candidates(matrix, IndexKind::Hnsw(HnswConfig::default()))
        .unwrap();
    (catalogue, n, started.elapsed().as_secs_f64())
}

/// Sends requests from `o.connections` connections until `o.requests` are answered or
/// `o.seconds` pass.
async fn load(addr: SocketAddr, bodies: Bodies, o: &Options) -> Figures {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.connections {
        let (next, bodies, limit) = (next.clone(), bodies.clone(), o.requests);
        tasks.push(tokio::spawn(async move {
            let mut connection = http::Connection::open(addr).await.unwrap();
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit || Instant::now() >= deadline {
                    break;
                }
                let body = bodies[i % bodies.len()].as_bytes();
                let sent = Instant::now();
                match connection
                    .send("POST", "/v1/recommend", Some("application/json"), body)
                    .await
                {
                    Ok(r) if r.status == 200 => {}
                    _ => errors += 1,
                }
                latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            (latencies, errors)
        }));
    }
    let mut figures = Figures {
        requests: 0,
        errors: 0,
        wall: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (latencies, errors) = task.await.unwrap();
        figures.errors += errors;
        figures.latencies_us.extend(latencies);
    }
    figures.wall = started.elapsed();
    figures.requests = figures.latencies_us.len();
    figures
}

fn report(name: &str, f: &Figures) {
    let mut sorted = f.latencies_us.clone();
    sorted.sort_unstable();
    let pct = |p: f64| -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        f64::from(sorted[i]) / 1e3
    };
    println!(
        "{name:<44} {:>9} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>7}",
        f.requests,
        f.requests as f64 / f.wall.as_secs_f64(),
        pct(50.0),
        pct(99.0),
        pct(99.9),
        f.errors
    );
}
