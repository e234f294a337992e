//! Draws per second of the samplers, against two yardsticks: the RNG alone (one `u64` per draw,
//! the limit) and `rand`'s `WeightedIndex` (binary search over cumulative weights, the obvious
//! baseline).
//!
//! Problems (synthetic, fixed seeds, built outside the timed loops):
//! - `ml1m`: 3,706 items with Zipf-like counts, 6,040 users with 20..~2,300 positives each,
//!   about 1M positives in all (the shape of MovieLens-1M).
//! - `catalogue_10m`: 10,000,000 items with Zipf-like counts, 6,040 users, about 1M positives.
//!
//! Each timed iteration makes 65,536 draws; exclusion cases draw 4 negatives for each of 16,384
//! users picked like training rows (heavy users more often).
//!
//! Run: `cargo bench -p dssm-sampler --bench sampling` (about a minute and a half).

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dssm_sampler::{
    NegativeSampler, PopularitySampler, SamplerRng, UniformSampler, UserItems, fill_negatives,
    fill_negatives_serial,
};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, RngExt, SeedableRng};

const DRAWS: usize = 65_536;
const PER_USER: usize = 4;
const NUM_USERS: usize = 6_040;
const NUM_POSITIVES: f64 = 1_000_000.0;

struct Problem {
    name: &'static str,
    counts: Vec<u32>,
    user_items: UserItems,
    /// Users of random training rows, `DRAWS / PER_USER` of them.
    batch_users: Vec<u32>,
}

/// Zipf-like item counts (`rank^-exponent`), then users whose positives are drawn by popularity,
/// with user sizes `20 + K * rank^-0.37` (max about 2,300, total about 1M). The sampler counts are
/// the item frequencies of the generated positives.
fn build_problem(name: &'static str, num_items: usize, exponent: f64) -> Problem {
    let mut rng = SamplerRng::seed_from_u64(2024);
    let raw: Vec<f64> = (1..=num_items)
        .map(|r| (r as f64).powf(-exponent))
        .collect();
    let proposal = PopularitySampler::builder().alpha(1.0).build(&raw).unwrap();
    let size_shape: Vec<f64> = (1..=NUM_USERS).map(|r| (r as f64).powf(-0.37)).collect();
    let scale = (NUM_POSITIVES - 20.0 * NUM_USERS as f64) / size_shape.iter().sum::<f64>();
    let mut pairs = Vec::with_capacity(NUM_POSITIVES as usize);
    let mut seen = HashSet::new();
    for (user, shape) in size_shape.iter().enumerate() {
        let size = (20.0 + scale * shape).round() as usize;
        let size = size.min(num_items * 2 / 3);
        seen.clear();
        while seen.len() < size {
            seen.insert(proposal.sample(&mut rng));
        }
        pairs.extend(seen.iter().map(|&item| (user as u32, item)));
    }
    let mut counts = vec![0u32; num_items];
    for &(_, item) in &pairs {
        counts[item as usize] += 1;
    }
    let user_items = UserItems::from_pairs(NUM_USERS, num_items, &pairs).unwrap();
    let batch_users = (0..DRAWS / PER_USER)
        .map(|_| pairs[rng.random_range(0..pairs.len())].0)
        .collect();
    Problem {
        name,
        counts,
        user_items,
        batch_users,
    }
}

fn bench_problem(c: &mut Criterion, problem: &Problem) {
    let n = problem.counts.len();
    let uniform = UniformSampler::new(n).unwrap();
    let popularity = PopularitySampler::builder()
        .alpha(0.75)
        .build(&problem.counts)
        .unwrap();
    let popularity_alpha1 = PopularitySampler::builder()
        .alpha(1.0)
        .build(&problem.counts)
        .unwrap();
    let weights: Vec<f64> = problem
        .counts
        .iter()
        .map(|&count| f64::from(count).powf(0.75))
        .collect();
    let weighted_index = WeightedIndex::new(&weights).unwrap();
    let mut out = vec![0u32; DRAWS];
    let mut rng = SamplerRng::seed_from_u64(1);

    let mut group = c.benchmark_group(problem.name);
    group.throughput(Throughput::Elements(DRAWS as u64));
    group.bench_function("rng_alone", |b| {
        b.iter(|| {
            for slot in out.iter_mut() {
                *slot = rng.next_u64() as u32;
            }
            black_box(&out);
        })
    });
    group.bench_function("uniform", |b| {
        b.iter(|| {
            for slot in out.iter_mut() {
                *slot = uniform.sample(&mut rng);
            }
            black_box(&out);
        })
    });
    group.bench_function("popularity_alias_a0.75", |b| {
        b.iter(|| {
            for slot in out.iter_mut() {
                *slot = popularity.sample(&mut rng);
            }
            black_box(&out);
        })
    });
    group.bench_function("baseline_weighted_index_a0.75", |b| {
        b.iter(|| {
            for slot in out.iter_mut() {
                *slot = weighted_index.sample(&mut rng) as u32;
            }
            black_box(&out);
        })
    });
    let exclude = Some(&problem.user_items);
    let users = &problem.batch_users;
    let mut epoch = 0;
    group.bench_function("uniform_excluding_serial", |b| {
        b.iter(|| {
            epoch += 1;
            fill_negatives_serial(&uniform, users, PER_USER, exclude, 7, epoch, &mut out).unwrap();
            black_box(&out);
        })
    });
    group.bench_function("popularity_excluding_serial_a0.75", |b| {
        b.iter(|| {
            epoch += 1;
            fill_negatives_serial(&popularity, users, PER_USER, exclude, 7, epoch, &mut out)
                .unwrap();
            black_box(&out);
        })
    });
    group.bench_function("popularity_excluding_serial_a1", |b| {
        b.iter(|| {
            epoch += 1;
            fill_negatives_serial(
                &popularity_alpha1,
                users,
                PER_USER,
                exclude,
                7,
                epoch,
                &mut out,
            )
            .unwrap();
            black_box(&out);
        })
    });
    group.bench_function("popularity_excluding_parallel_a0.75", |b| {
        b.iter(|| {
            epoch += 1;
            fill_negatives(&popularity, users, PER_USER, exclude, 7, epoch, &mut out).unwrap();
            black_box(&out);
        })
    });
    group.finish();
}

fn sampling(c: &mut Criterion) {
    let ml1m = build_problem("ml1m", 3_706, 1.0);
    bench_problem(c, &ml1m);
    drop(ml1m);
    let large = build_problem("catalogue_10m", 10_000_000, 1.0);
    bench_problem(c, &large);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = sampling
}
criterion_main!(benches);
