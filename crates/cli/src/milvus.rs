//! `dssm milvus load | check | search`: an export's item embeddings in Milvus, searched with user
//! vectors. The client is `dssm-milvus`; the exact top-K it is checked against is `dssm-retrieval`'s
//! [`ExactIndex`] over the same file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use dssm_data::Dataset;
use dssm_milvus::{
    AgreementCounts, BlockingClient, ClientConfig, Hit, IndexKind, SearchParams, compare_top_k,
};
use dssm_recommend::export_files;
use dssm_retrieval::{EmbeddingMatrix, ExactIndex, TopK, read_embeddings};

/// Options of `dssm milvus`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Milvus is the distributed vector database; Milvus Lite \
    (`pip install -r .ci/milvus-lite.txt`, then `milvus-lite server --data-dir DIR --host 127.0.0.1 \
    --port 19530`) serves the same gRPC API from one process.\n\nExamples:\n  \
    dssm export --run runs/ml-1m-llo --out /tmp/emb\n  \
    dssm milvus load --embeddings /tmp/emb --collection ml1m --replace\n  \
    dssm milvus check --embeddings /tmp/emb --collection ml1m -k 10,50,100\n  \
    dssm milvus search --embeddings /tmp/emb --collection ml1m --user 42")]
pub struct MilvusArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: MilvusCommand,
}

/// The `dssm milvus` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum MilvusCommand {
    /// Load an export's item embeddings into a collection (int64 `id`, float vector `embedding`),
    /// build an inner-product index and load it for search.
    Load(MilvusLoadArgs),
    /// Search the collection with every user vector of the export and compare each top-K with the
    /// exact in-process top-K over the same item embeddings.
    Check(MilvusCheckArgs),
    /// Top-K items from the collection for one user of the export, or for a vector given on the
    /// command line (the `embedding` of the server's `POST /v1/user-embedding`).
    Search(MilvusSearchArgs),
}

/// Where Milvus is.
#[derive(Debug, Clone, Args)]
pub struct MilvusConnection {
    /// Milvus's gRPC endpoint (standalone, a cluster's proxy, or Milvus Lite).
    #[arg(
        long,
        env = "DSSM_MILVUS_URI",
        default_value = "http://127.0.0.1:19530"
    )]
    pub uri: String,
    /// The collection.
    #[arg(long, default_value = "dssm_items")]
    pub collection: String,
}

/// Options of `dssm milvus load`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Reads <embeddings>/item_embeddings.parquet (written by `dssm export`: \
    every item of the catalogue, id Int64, embedding List<Float32>) and inserts it in batches. \
    That file is already in the shape Milvus's bulk import reads (see README, section Milvus), \
    the faster path for a production cluster.\n\nExamples:\n  \
    dssm milvus load --embeddings runs/ml-1m-llo/embeddings --collection ml1m --replace\n  \
    dssm milvus load --embeddings /tmp/emb --index hnsw --hnsw-m 32"
)]
pub struct MilvusLoadArgs {
    /// Where Milvus is.
    #[command(flatten)]
    pub connection: MilvusConnection,
    /// An export folder written by `dssm export`.
    #[arg(long, value_name = "DIR")]
    pub embeddings: PathBuf,
    /// The vector index: FLAT (exact) or HNSW (approximate), both by inner product.
    #[arg(long, value_enum, default_value_t = MilvusIndexArg::Flat)]
    pub index: MilvusIndexArg,
    /// HNSW: links per node (M).
    #[arg(long, default_value_t = 16)]
    pub hnsw_m: u32,
    /// HNSW: candidate list size while building (efConstruction).
    #[arg(long, default_value_t = 200)]
    pub hnsw_ef_construction: u32,
    /// Rows per insert request.
    #[arg(long, default_value_t = 5_000)]
    pub batch_rows: usize,
    /// Drop the collection first if it exists (otherwise an existing collection is an error).
    #[arg(long)]
    pub replace: bool,
    /// Load only the retrieval candidates (items with train interactions, as `dssm recommend` and the
    /// server rank), read from the dataset named in the export's export.json.
    #[arg(long)]
    pub candidates_only: bool,
    /// Create the collection (the export's dim) and its index and load it, but insert nothing:
    /// Milvus's bulk import then reads item_embeddings.parquet from the cluster's object storage
    /// (README, section Milvus).
    #[arg(long)]
    pub skip_insert: bool,
    /// How long to wait for the collection to load, in seconds.
    #[arg(long, default_value_t = 300)]
    pub load_timeout: u64,
}

/// The indexes `dssm milvus load` can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MilvusIndexArg {
    /// Brute force: the exact top-K.
    Flat,
    /// An HNSW graph: approximate.
    Hnsw,
}

/// Options of `dssm milvus check`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Every user of <embeddings>/user_embeddings.parquet is a query. Items \
    of equal score may come back in another order, or another of several items tied at the K-th \
    score may make the cut: such a list counts as tie-equivalent (Milvus's ids re-scored here, \
    position by position within --tolerance of the exact scores). Exits with an error when any \
    list differs, unless --report-only.\n\nExamples:\n  \
    dssm milvus check --embeddings /tmp/emb --collection ml1m -k 10,50,100\n  \
    dssm milvus check --embeddings /tmp/emb --collection ml1m_hnsw --ef 128 --report-only"
)]
pub struct MilvusCheckArgs {
    /// Where Milvus is.
    #[command(flatten)]
    pub connection: MilvusConnection,
    /// The export folder the collection was loaded from.
    #[arg(long, value_name = "DIR")]
    pub embeddings: PathBuf,
    /// Compare with the exact top-K over the retrieval candidates only (for a collection loaded with
    /// `load --candidates-only`).
    #[arg(long)]
    pub candidates_only: bool,
    /// The K values to check, comma-separated.
    #[arg(
        short = 'k',
        long = "top",
        value_delimiter = ',',
        default_value = "10,50,100"
    )]
    pub ks: Vec<usize>,
    /// HNSW's candidate list size while searching (at least the largest K); leave out for FLAT.
    #[arg(long)]
    pub ef: Option<usize>,
    /// Query vectors per search request.
    #[arg(long, default_value_t = 256)]
    pub queries_per_request: usize,
    /// Largest difference between scores at the same position that still counts as a tie.
    #[arg(long, default_value_t = 1e-5)]
    pub tolerance: f32,
    /// Print the counts and exit successfully even when some lists differ (an HNSW collection).
    #[arg(long)]
    pub report_only: bool,
}

/// Options of `dssm milvus search`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("query").args(["user", "vector"]).required(true)))]
#[command(after_help = "Examples:\n  \
    dssm milvus search --embeddings /tmp/emb --collection ml1m --user 42 -k 20\n  \
    dssm milvus search --collection ml1m --vector 0.12,-0.03,...   # from POST /v1/user-embedding")]
pub struct MilvusSearchArgs {
    /// Where Milvus is.
    #[command(flatten)]
    pub connection: MilvusConnection,
    /// An export folder (for --user).
    #[arg(long, value_name = "DIR", requires = "user")]
    pub embeddings: Option<PathBuf>,
    /// A user id of the export's user_embeddings.parquet.
    #[arg(long, value_name = "ID", requires = "embeddings")]
    pub user: Option<u32>,
    /// A user vector, comma-separated.
    #[arg(
        long,
        value_name = "X,X,...",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub vector: Option<Vec<f32>>,
    /// How many items.
    #[arg(short = 'k', long = "top", default_value_t = 10)]
    pub k: usize,
    /// HNSW's candidate list size while searching.
    #[arg(long)]
    pub ef: Option<usize>,
}

/// Runs `dssm milvus <command>`.
pub fn run(args: &MilvusArgs) -> Result<()> {
    match &args.command {
        MilvusCommand::Load(args) => load(args),
        MilvusCommand::Check(args) => check(args),
        MilvusCommand::Search(args) => search(args),
    }
}

fn connect(connection: &MilvusConnection) -> Result<BlockingClient> {
    Ok(BlockingClient::connect(&ClientConfig::new(
        connection.uri.clone(),
    ))?)
}

fn read_matrix(dir: &Path, file: &str) -> Result<EmbeddingMatrix> {
    let path = dir.join(file);
    Ok(read_embeddings(&path)
        .with_context(|| format!("reading the export's {file} (written by `dssm export`)"))?
        .matrix)
}

/// The export's item embeddings, or only the retrieval candidates: the items with train
/// interactions in the dataset the export's export.json names.
fn export_items(dir: &Path, candidates_only: bool) -> Result<EmbeddingMatrix> {
    let items = read_matrix(dir, export_files::ITEMS)?;
    if !candidates_only {
        return Ok(items);
    }
    let manifest_path = dir.join(export_files::MANIFEST);
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", manifest_path.display()))?;
    let dataset_dir = manifest["dataset"]["path"]
        .as_str()
        .with_context(|| format!("{} has no dataset.path", manifest_path.display()))?;
    let dataset = Dataset::open(Path::new(dataset_dir))
        .with_context(|| format!("opening the export's dataset {dataset_dir}"))?;
    let in_train: HashSet<u32> = dataset
        .items
        .movie_id
        .iter()
        .zip(&dataset.items.train_count)
        .filter(|&(_, &count)| count > 0)
        .map(|(&id, _)| id)
        .collect();
    let dim = items.dim();
    let (ids, _, data) = items.into_parts();
    let (mut kept_ids, mut kept) = (Vec::new(), Vec::new());
    for (id, row) in ids.into_iter().zip(data.chunks_exact(dim)) {
        if in_train.contains(&id) {
            kept_ids.push(id);
            kept.extend_from_slice(row);
        }
    }
    Ok(EmbeddingMatrix::new(kept_ids, dim, kept)?)
}

fn load(args: &MilvusLoadArgs) -> Result<()> {
    let collection = &args.connection.collection;
    let items = export_items(&args.embeddings, args.candidates_only)?;
    let ids: Vec<i64> = items.ids().iter().map(|&id| i64::from(id)).collect();
    let mut milvus = connect(&args.connection)?;
    if milvus.has_collection(collection)? {
        if !args.replace {
            bail!(
                "collection {collection:?} already exists at {}; pass --replace to drop it first",
                args.connection.uri
            );
        }
        milvus.drop_collection(collection)?;
    }
    let index = match args.index {
        MilvusIndexArg::Flat => IndexKind::Flat,
        MilvusIndexArg::Hnsw => IndexKind::Hnsw {
            m: args.hnsw_m,
            ef_construction: args.hnsw_ef_construction,
        },
    };
    let started = Instant::now();
    milvus.create_collection(collection, items.dim())?;
    let inserted = if args.skip_insert {
        0
    } else {
        milvus.insert_batches(
            collection,
            &ids,
            items.data(),
            items.dim(),
            args.batch_rows,
            |_| {},
        )?
    };
    let insert_time = started.elapsed();
    let started = Instant::now();
    milvus.create_index(collection, index)?;
    milvus.load_collection(collection, Duration::from_secs(args.load_timeout))?;
    let index_time = started.elapsed();
    println!("milvus       {}", args.connection.uri);
    println!("collection   {collection} (id INT64 primary key, embedding FLOAT_VECTOR)");
    println!(
        "items        {inserted} x {} from {}{}",
        items.dim(),
        args.embeddings.join(export_files::ITEMS).display(),
        if args.skip_insert {
            " (--skip-insert: none inserted, for a bulk import)"
        } else {
            ""
        }
    );
    println!("insert       {:.2} s", insert_time.as_secs_f64());
    println!(
        "index + load {:.2} s ({index:?}, metric IP)",
        index_time.as_secs_f64()
    );
    Ok(())
}

fn check(args: &MilvusCheckArgs) -> Result<()> {
    let collection = &args.connection.collection;
    if args.ks.is_empty() || args.ks.contains(&0) {
        bail!("-k needs K values of at least 1");
    }
    if args.queries_per_request == 0 {
        bail!("--queries-per-request must be at least 1");
    }
    let items = export_items(&args.embeddings, args.candidates_only)?;
    let users = read_matrix(&args.embeddings, export_files::USERS)?;
    if users.dim() != items.dim() {
        bail!(
            "user vectors have dim {}, item vectors {}",
            users.dim(),
            items.dim()
        );
    }
    let dim = items.dim();
    let exact_index = ExactIndex::new(items);
    let mut milvus = connect(&args.connection)?;
    if !milvus.has_collection(collection)? {
        bail!(
            "no collection {collection:?} at {}; run `dssm milvus load` first",
            args.connection.uri
        );
    }
    println!(
        "milvus       {} collection {collection}",
        args.connection.uri
    );
    println!(
        "queries      {} users x {dim} against {} items (exact: in-process brute force)",
        users.len(),
        exact_index.len()
    );
    println!(
        "{:>5} {:>7} {:>10} {:>15} {:>10} {:>14} {:>10} {:>10}",
        "k",
        "users",
        "identical",
        "tie-equivalent",
        "different",
        "max |Δscore|",
        "milvus s",
        "queries/s"
    );
    let mut any_different = false;
    for &k in &args.ks {
        let started = Instant::now();
        let mut found = Vec::with_capacity(users.len());
        for chunk in users.data().chunks(args.queries_per_request * dim) {
            let params = SearchParams { k, ef: args.ef };
            found.extend(milvus.search(collection, chunk, dim, params)?);
        }
        let milvus_time = started.elapsed().as_secs_f64();
        let exact = exact_index.top_k(users.view(), k, None)?;
        let mut counts = AgreementCounts::default();
        let mut max_reported_difference = 0.0_f32;
        for (row, (exact, found)) in exact.iter().zip(&found).enumerate() {
            let query = users.row(row);
            // Milvus's ids, scored here from the same vectors as the exact list.
            let mut rescored = Vec::with_capacity(found.len());
            for hit in found {
                let position = u32::try_from(hit.id)
                    .ok()
                    .and_then(|id| exact_index.position_of(id))
                    .with_context(|| format!("Milvus returned id {}, not in the export", hit.id))?;
                let score = dot(query, exact_index.items().row(position));
                max_reported_difference = max_reported_difference.max((score - hit.score).abs());
                rescored.push(Hit { id: hit.id, score });
            }
            let exact: Vec<Hit> = exact
                .iter()
                .map(|s| Hit {
                    id: i64::from(s.id),
                    score: s.score,
                })
                .collect();
            counts.add(compare_top_k(&exact, &rescored, args.tolerance));
        }
        any_different |= counts.different > 0;
        println!(
            "{k:>5} {:>7} {:>10} {:>15} {:>10} {:>14.2e} {:>10.2} {:>10.0}",
            counts.total(),
            counts.identical,
            counts.tie_equivalent,
            counts.different,
            max_reported_difference,
            milvus_time,
            users.len() as f64 / milvus_time
        );
    }
    if any_different && !args.report_only {
        bail!(
            "some top-K lists from Milvus differ from the exact ones (an approximate index? pass --report-only)"
        );
    }
    Ok(())
}

fn search(args: &MilvusSearchArgs) -> Result<()> {
    let collection = &args.connection.collection;
    let query: Vec<f32> = match (&args.vector, args.user, &args.embeddings) {
        (Some(vector), _, _) => vector.clone(),
        (None, Some(user), Some(dir)) => {
            let users = read_matrix(dir, export_files::USERS)?;
            let row = users
                .ids()
                .iter()
                .position(|&id| id == user)
                .with_context(|| format!("user {user} is not in the export's user embeddings"))?;
            users.row(row).to_vec()
        }
        _ => bail!("give --vector, or --user with --embeddings"),
    };
    if query.is_empty() {
        bail!("the query vector is empty");
    }
    let mut milvus = connect(&args.connection)?;
    let started = Instant::now();
    let params = SearchParams {
        k: args.k,
        ef: args.ef,
    };
    let hits = milvus.search(collection, &query, query.len(), params)?;
    let took = started.elapsed();
    println!(
        "milvus       {} collection {collection}, {:.1} ms",
        args.connection.uri,
        took.as_secs_f64() * 1e3
    );
    println!("{:>4} {:>10} {:>10}", "rank", "id", "score");
    for (rank, hit) in hits.first().into_iter().flatten().enumerate() {
        println!("{:>4} {:>10} {:>10.5}", rank + 1, hit.id, hit.score);
    }
    Ok(())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(subcommand)]
        command: MilvusCommand,
    }

    #[test]
    fn arguments_parse() {
        let parsed = Wrapper::try_parse_from([
            "milvus",
            "check",
            "--embeddings",
            "/tmp/e",
            "-k",
            "10,50",
            "--ef",
            "64",
        ])
        .unwrap();
        let MilvusCommand::Check(check) = parsed.command else {
            panic!("not check")
        };
        assert_eq!(check.ks, vec![10, 50]);
        assert_eq!(check.ef, Some(64));
        assert_eq!(check.connection.collection, "dssm_items");
        let parsed =
            Wrapper::try_parse_from(["milvus", "check", "--embeddings", "/tmp/e"]).unwrap();
        let MilvusCommand::Check(check) = parsed.command else {
            panic!("not check")
        };
        assert_eq!(check.ks, vec![10, 50, 100]);
        assert_eq!(check.ef, None);

        let parsed =
            Wrapper::try_parse_from(["milvus", "search", "--vector", "-0.5,0.25", "-k", "3"])
                .unwrap();
        let MilvusCommand::Search(search) = parsed.command else {
            panic!("not search")
        };
        assert_eq!(search.vector, Some(vec![-0.5, 0.25]));
        // A query is required.
        assert!(Wrapper::try_parse_from(["milvus", "search"]).is_err());
    }
}
