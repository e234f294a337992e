//! `dssm export`, `dssm evaluate-retrieval` and `dssm recommend`: the trained towers as embedding
//! matrices, searched with `dssm-retrieval`.
//!
//! Scores are the towers' similarity: the inner product of the two embeddings, or, for a model with
//! `similarity = "cosine"`, the inner product of the L2-normalised embeddings (normalised here the way
//! the model does it). The model's logit is that divided by a positive temperature, so the order is
//! the same.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use dssm_data::{Dataset, Protocol, Split, Vocabularies};
use dssm_model::{FeatureKind, FeatureSpec, HostColumn, Mode, Side, SideBatch, Similarity};
use dssm_retrieval::{
    EmbeddingMatrix, ExactIndex, Exclusions, HnswConfig, HnswIndex, MatrixView, PROTOCOL_CUTOFFS,
    PopularityBaseline, ProtocolVariant, RankingReport, ScoredItem, TopK, write_embeddings,
};
use dssm_trainer::{LoadedRun, RunConfig, layout, load_run};
use serde::Serialize;

/// File names written by `dssm export`.
pub mod export_files {
    /// User embeddings (`id` = raw MovieLens user id).
    pub const USERS: &str = "user_embeddings.parquet";
    /// Item embeddings (`id` = raw MovieLens movie id), every movie of movies.dat.
    pub const ITEMS: &str = "item_embeddings.parquet";
    /// What was exported, from which run and dataset, and where the movie metadata is.
    pub const MANIFEST: &str = "export.json";
}

/// The same epsilon as the model's cosine similarity (`x / sqrt(|x|^2 + eps)`).
const COSINE_EPS: f32 = 1e-12;

/// Options of `dssm export`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Writes user_embeddings.parquet and item_embeddings.parquet (columns `id`, \
    `embedding`) and export.json, which names the run's checkpoint and the dataset's items.parquet \
    (movie_id, title, year, genres, train_count) for showing results.\n\nExamples:\n  \
    dssm export --run runs/quickstart\n  \
    dssm export --run runs/quickstart --out /tmp/quickstart-embeddings"
)]
pub struct ExportArgs {
    /// A run folder written by `dssm train`.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Where to write [default: <run>/embeddings].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Options of `dssm evaluate-retrieval`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Protocol leave-last-out: every movie in the train split is a candidate; \
    for each user, the held-out movie is ranked among them by the model's score. `unmasked` keeps \
    the user's train movies in the ranking (DeepMatch, torch-rechub); `masked` removes them \
    (RecBole). The popularity baseline (train interaction counts) is always printed beside the \
    model. The figures go to <run>/retrieval-<split>.json.\n\nExamples:\n  \
    dssm evaluate-retrieval --run runs/ml-1m-llo\n  \
    dssm evaluate-retrieval --run runs/ml-1m-llo --split val"
)]
pub struct EvaluateRetrievalArgs {
    /// A run folder written by `dssm train` on a dataset prepared with `--protocol leave-last-out`.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Which held-out interaction to rank: the last (test) or the second-last (val) of each user.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub split: SplitArg,
}

/// The held-out splits of `leave-last-out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// The second-last interaction of each user.
    Val,
    /// The last interaction of each user.
    Test,
}

impl From<SplitArg> for Split {
    fn from(arg: SplitArg) -> Self {
        match arg {
            SplitArg::Val => Split::Val,
            SplitArg::Test => Split::Test,
        }
    }
}

/// Options of `dssm recommend`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "A known user is looked up by key (MovieLens: the user id; your own data: the \
    user column's value). A new user is described by features: `--feature NAME=VALUE` for any \
    user feature (or its source column, e.g. zip_code=48067 for the zip prefix), or MovieLens's \
    --gender, --age and --occupation; every feature not given is unknown to the model. \
    Candidates are the items seen in train.\n\nExamples:\n  \
    dssm recommend --run runs/quickstart --user 42 --exclude-seen\n  \
    dssm recommend --run runs/quickstart --gender F --age 25 --occupation 4 -k 20\n  \
    dssm recommend --run runs/shop --feature segment=student --feature country=FR\n  \
    dssm recommend --run runs/quickstart --user 42 --index hnsw   # approximate search"
)]
pub struct RecommendArgs {
    /// A run folder written by `dssm train`.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// A user key from the dataset (MovieLens: the user id).
    #[arg(
        long,
        value_name = "KEY",
        required_unless_present_any = ["gender", "feature"],
        conflicts_with_all = ["gender", "age", "occupation", "feature"]
    )]
    pub user: Option<String>,
    /// A new user's feature value, as NAME=VALUE (repeatable).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_feature, help_heading = "New user")]
    pub feature: Vec<(String, String)>,
    /// A new user's gender (MovieLens).
    #[arg(long, value_parser = ["M", "F"], requires_all = ["age", "occupation"], help_heading = "New user")]
    pub gender: Option<String>,
    /// A new user's age group code (MovieLens-1M: 1, 18, 25, 35, 45, 50, 56).
    #[arg(long, value_name = "N", requires_all = ["gender", "occupation"], help_heading = "New user")]
    pub age: Option<u32>,
    /// A new user's occupation code (MovieLens-1M: 0 to 20).
    #[arg(long, value_name = "N", requires_all = ["gender", "age"], help_heading = "New user")]
    pub occupation: Option<u32>,
    /// How many items to show.
    #[arg(short = 'k', long = "top", default_value_t = 10)]
    pub k: usize,
    /// Hide every item the user has interacted with (train, val and test). A new user has none.
    #[arg(long, conflicts_with_all = ["gender", "feature"])]
    pub exclude_seen: bool,
    /// Exact search, or an HNSW graph built over the item embeddings (approximate).
    #[arg(long, value_enum, default_value_t = IndexArg::Exact)]
    pub index: IndexArg,
}

/// The search indexes `recommend` can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IndexArg {
    /// Brute force over every candidate.
    Exact,
    /// An HNSW graph (approximate).
    Hnsw,
}

fn parse_feature(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, found {text:?}")),
    }
}

impl RecommendArgs {
    /// The new user's given feature values: `--feature` pairs, then MovieLens's shortcuts.
    fn new_user(&self) -> Vec<(String, String)> {
        let mut given = self.feature.clone();
        if let (Some(gender), Some(age), Some(occupation)) =
            (&self.gender, self.age, self.occupation)
        {
            given.push(("gender".into(), gender.clone()));
            given.push(("age".into(), age.to_string()));
            given.push(("occupation".into(), occupation.to_string()));
        }
        given
    }
}

/// Runs `export` and prints what was written.
pub fn export(args: &ExportArgs) -> Result<()> {
    let started = Instant::now();
    let loaded = load(&args.run)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.run.join("embeddings"));
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the folder {}", out.display()))?;
    let model_id = checkpoint_id(&loaded.run_dir);
    let (users, items) = tower_outputs(&loaded)?;
    let user_path = out.join(export_files::USERS);
    let item_path = out.join(export_files::ITEMS);
    write_embeddings(&user_path, &users, &model_id)?;
    write_embeddings(&item_path, &items, &model_id)?;

    let dataset = &loaded.dataset;
    let candidates = candidate_rows(&dataset.items.train_count).len();
    let manifest = ExportManifest {
        model_id: model_id.clone(),
        run: absolute(&loaded.run_dir),
        dataset: dataset_record(dataset)?,
        similarity: similarity_name(loaded.model.config().similarity),
        normalized: loaded.model.config().similarity == Similarity::Cosine,
        temperature: loaded.model.temperature()?,
        dim: users.dim(),
        user_embeddings: ExportedFile {
            file: export_files::USERS.to_string(),
            rows: users.len(),
        },
        item_embeddings: ExportedFile {
            file: export_files::ITEMS.to_string(),
            rows: items.len(),
        },
        candidates,
        item_metadata: absolute(&dataset.dir.join(dssm_data::dataset::files::ITEMS)),
    };
    let manifest_path = out.join(export_files::MANIFEST);
    write_json_atomically(&manifest_path, &manifest)?;

    println!("run          {}", loaded.run_dir.display());
    println!("model id     {model_id}");
    println!(
        "users        {} x {} -> {}",
        users.len(),
        users.dim(),
        user_path.display()
    );
    println!(
        "items        {} x {} -> {} ({candidates} in train: the candidates)",
        items.len(),
        items.dim(),
        item_path.display()
    );
    println!(
        "scores       {}",
        if manifest.normalized {
            "inner product of these (L2-normalised) rows = the model's cosine similarity"
        } else {
            "inner product of these rows = the model's dot similarity"
        }
    );
    println!("metadata     {}", manifest.item_metadata.display());
    println!("manifest     {}", manifest_path.display());
    println!("time         {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `evaluate-retrieval`, prints the table and writes `<run>/retrieval-<split>.json`.
pub fn evaluate(args: &EvaluateRetrievalArgs) -> Result<()> {
    let started = Instant::now();
    let loaded = load(&args.run)?;
    let dataset = &loaded.dataset;
    require_leave_last_out(dataset)?;
    let split = Split::from(args.split);

    let (users, items) = tower_outputs(&loaded)?;
    let train = dataset
        .interactions(Split::Train)
        .context("cannot read the train split")?;
    let held_out = dataset
        .interactions(split)
        .with_context(|| format!("cannot read the {split} split"))?;
    if held_out.is_empty() {
        bail!(
            "the {split} split of {} has no rows to rank",
            dataset.dir.display()
        );
    }
    let ranked = rank_held_out(
        &users,
        &items,
        &dataset.items.train_count,
        (&train.user_row, &train.movie_id),
        (&held_out.user_row, &held_out.movie_id),
    )?;
    let (model_reports, popularity_reports) = (&ranked.model, &ranked.popularity);

    let record = RetrievalRecord {
        protocol: Protocol::LeaveLastOut.name().to_string(),
        split: split.name().to_string(),
        dataset: dataset_record(dataset)?,
        split_seed: None,
        run: absolute(&loaded.run_dir),
        checkpoint: checkpoint_id(&loaded.run_dir),
        config: loaded.config.clone(),
        similarity: similarity_name(loaded.model.config().similarity),
        candidates: ranked.candidates,
        users: held_out.len(),
        cutoffs: PROTOCOL_CUTOFFS.to_vec(),
        metrics: VariantMetrics {
            model: by_variant(model_reports),
            popularity: by_variant(popularity_reports),
        },
        code_version: format!("dssm-cli {}", env!("CARGO_PKG_VERSION")),
        wall_s: started.elapsed().as_secs_f64(),
    };
    let path = loaded
        .run_dir
        .join(format!("retrieval-{}.json", split.name()));
    write_json_atomically(&path, &record)?;

    println!("run          {}", loaded.run_dir.display());
    println!("checkpoint   {}", record.checkpoint);
    println!(
        "protocol     leave-last-out ({}, {} split): {} users, {} candidates (movies in train)",
        record.dataset.name,
        split.name(),
        record.users,
        record.candidates
    );
    println!(
        "variants     unmasked = train movies stay in the ranking (DeepMatch, torch-rechub); \
         masked = they are removed (RecBole)"
    );
    print!(
        "{}",
        format_table(&[
            ("model", &model_reports[0]),
            ("popularity", &popularity_reports[0]),
            ("model", &model_reports[1]),
            ("popularity", &popularity_reports[1]),
        ])
    );
    let misses = model_reports[0].misses;
    if misses > 0 {
        println!(
            "misses       {misses} of {} targets are not candidates (never in train) and count as misses",
            record.users
        );
    }
    println!("saved        {}", path.display());
    println!("time         {:.2} s", record.wall_s);
    Ok(())
}

/// Runs `recommend` and prints the top K.
pub fn recommend(args: &RecommendArgs) -> Result<()> {
    let Recommendations {
        loaded,
        who,
        seen,
        index_line,
        candidate_count,
        top,
    } = recommendations(args)?;
    let dataset = &loaded.dataset;
    let config = loaded.model.config();
    println!("run          {}", loaded.run_dir.display());
    println!("user         {who}");
    println!(
        "index        {index_line}, {candidate_count} candidates (items in train){}",
        if args.exclude_seen {
            format!(", {} seen items hidden", seen.len())
        } else {
            String::new()
        }
    );
    println!(
        "score        {} of the tower outputs (the model's logit is this / temperature {})",
        match config.similarity {
            Similarity::Dot => "dot product",
            Similarity::Cosine => "cosine similarity",
        },
        loaded.model.temperature()?
    );
    let rows: HashMap<u32, usize> = dataset
        .items
        .movie_id
        .iter()
        .enumerate()
        .map(|(row, &id)| (id, row))
        .collect();
    print!(
        "{}",
        format_recommendations(&top, &dataset.items, |id| rows.get(&id).copied())
    );
    Ok(())
}

/// What `recommend` found, before it is printed.
struct Recommendations {
    loaded: LoadedRun,
    /// The user, described.
    who: String,
    /// Item ids the user has interacted with (empty for a new user).
    seen: Vec<u32>,
    /// The index used, described.
    index_line: String,
    candidate_count: usize,
    /// The top K, best first.
    top: Vec<ScoredItem>,
}

/// The top K of `recommend`.
fn recommendations(args: &RecommendArgs) -> Result<Recommendations> {
    if args.k == 0 {
        bail!("-k must be at least 1");
    }
    let loaded = load(&args.run)?;
    let dataset = &loaded.dataset;
    let config = loaded.model.config();
    let batch_size = loaded.config.train.eval_batch_size;
    let (items, dim) = loaded
        .embeddings(Side::Item, batch_size)
        .context("cannot compute the item embeddings")?;
    let mut items = items;
    if config.similarity == Similarity::Cosine {
        l2_normalize_rows(&mut items, dim);
    }
    let items = EmbeddingMatrix::new(dataset.items.movie_id.clone(), dim, items)?;
    let candidates = candidate_matrix(&items, &dataset.items.train_count)?;

    let (mut query, seen, who) = match &args.user {
        Some(key) => {
            let row = user_row(&dataset.users.key, key)?;
            let (users, _) = loaded
                .embeddings(Side::User, batch_size)
                .context("cannot compute the user embeddings")?;
            let query = users[row * dim..(row + 1) * dim].to_vec();
            let seen = rated_by(dataset, row)?;
            let who = format!(
                "{key} ({}{} interactions)",
                describe(&dataset.users.attributes, row),
                seen.len()
            );
            (query, seen, who)
        }
        None => {
            let given = args.new_user();
            let specs: Vec<FeatureSpec> = config.side_features(Side::User).cloned().collect();
            let encoded = encode_new_user(&specs, &given, &dataset.vocabularies);
            for note in &encoded.notes {
                println!("note         {note}");
            }
            let host: Vec<HostColumn<'_>> = encoded
                .columns
                .iter()
                .map(|c| match c {
                    NewUserColumn::Ids(ids) => HostColumn::Ids(ids),
                    NewUserColumn::Dense(values) => HostColumn::Dense(values),
                })
                .collect();
            let model = &loaded.model;
            let batch = SideBatch::from_host(config, Side::User, 1, &host, model.device())?;
            let embedded = model.encode_users(&batch, Mode::Eval)?;
            // `"f32".parse()` is candle's `DType::F32` (this crate does not depend on candle directly).
            let query = embedded
                .flatten_all()?
                .to_dtype("f32".parse()?)?
                .to_vec1::<f32>()?;
            let described: Vec<String> = given.iter().map(|(n, v)| format!("{n} {v}")).collect();
            let who = format!("new ({})", described.join(", "));
            (query, Vec::new(), who)
        }
    };
    if config.similarity == Similarity::Cosine {
        l2_normalize_rows(&mut query, dim);
    }
    let exclusions = Exclusions::from_rows([if args.exclude_seen {
        seen.clone()
    } else {
        Vec::new()
    }]);
    let queries = MatrixView::new(&query, dim)?;
    let candidate_count = candidates.len();
    let (top, index_line) = match args.index {
        IndexArg::Exact => {
            let index = ExactIndex::new(candidates);
            let top = index.top_k(queries, args.k, Some(&exclusions))?;
            (top, "exact".to_string())
        }
        IndexArg::Hnsw => {
            let hnsw_config = HnswConfig::default();
            let index = HnswIndex::build(candidates, hnsw_config)?;
            let top = index.top_k(queries, args.k, Some(&exclusions))?;
            (
                top,
                format!(
                    "hnsw (approximate: M {}, ef_construction {}, ef_search {})",
                    hnsw_config.max_connections, hnsw_config.ef_construction, hnsw_config.ef_search
                ),
            )
        }
    };

    Ok(Recommendations {
        loaded,
        who,
        seen,
        index_line,
        candidate_count,
        top: top.into_iter().next().unwrap_or_default(),
    })
}

/// `name value, ...; ` of a row's display attributes (empty without any).
fn describe(attributes: &dssm_data::Attributes, row: usize) -> String {
    let parts: Vec<String> = attributes
        .columns
        .iter()
        .map(|(name, values)| format!("{name} {}", values[row].as_deref().unwrap_or("-")))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{}; ", parts.join(", "))
    }
}

// ---- Records ----

/// `export.json`.
#[derive(Debug, Serialize)]
struct ExportManifest {
    model_id: String,
    run: PathBuf,
    dataset: DatasetRecord,
    /// `dot` or `cosine`.
    similarity: &'static str,
    /// True when the rows were L2-normalised (cosine models), so that the inner product of a user
    /// and an item row is the model's similarity.
    normalized: bool,
    /// The model's logit is the similarity divided by this.
    temperature: f32,
    dim: usize,
    user_embeddings: ExportedFile,
    item_embeddings: ExportedFile,
    /// Movies with train interactions (`train_count > 0` in the metadata): the retrieval candidates.
    candidates: usize,
    /// The dataset's items.parquet: movie_id, title, year, genres, train_count.
    item_metadata: PathBuf,
}

#[derive(Debug, Serialize)]
struct ExportedFile {
    file: String,
    rows: usize,
}

/// The dataset an evaluation or export used.
#[derive(Debug, Serialize)]
struct DatasetRecord {
    path: PathBuf,
    name: String,
    protocol: String,
    /// FNV-1a 64 (hex) of manifest.json's bytes, as the trainer records it in `run.json`.
    manifest_checksum: String,
}

/// `retrieval-<split>.json`.
#[derive(Debug, Serialize)]
struct RetrievalRecord {
    protocol: String,
    split: String,
    dataset: DatasetRecord,
    /// Always null: `leave-last-out` splits by time, not by a seed.
    split_seed: Option<u64>,
    run: PathBuf,
    checkpoint: String,
    config: RunConfig,
    similarity: &'static str,
    candidates: usize,
    users: usize,
    cutoffs: Vec<usize>,
    metrics: VariantMetrics,
    code_version: String,
    wall_s: f64,
}

#[derive(Debug, Serialize)]
struct VariantMetrics {
    model: BTreeMap<String, RankingReport>,
    popularity: BTreeMap<String, RankingReport>,
}

fn by_variant(reports: &[RankingReport]) -> BTreeMap<String, RankingReport> {
    reports
        .iter()
        .map(|r| (r.variant.clone(), r.clone()))
        .collect()
}

// ---- Helpers ----

/// The `leave-last-out` figures of one split: unmasked then masked, for the model and the popularity
/// baseline.
#[derive(Debug)]
struct RankedSplit {
    candidates: usize,
    model: Vec<RankingReport>,
    popularity: Vec<RankingReport>,
}

/// Ranks each held-out `(user row, movie id)` among the candidates (items with a train count),
/// by the inner product of the user's and the items' rows, and by train popularity. `users` has one
/// row per users-table row, `items` one per items-table row; `train` is `(user rows, movie ids)` of
/// the train split, whose items the masked variant removes.
fn rank_held_out(
    users: &EmbeddingMatrix,
    items: &EmbeddingMatrix,
    train_count: &[u32],
    train: (&[u32], &[u32]),
    held_out: (&[u32], &[u32]),
) -> Result<RankedSplit> {
    let candidates = candidate_matrix(items, train_count)?;
    let candidate_ids = candidates.ids().to_vec();
    let seen_in_train = items_by_user(users.len(), train.0, train.1)?;
    let train_items = exclusions_for(&seen_in_train, held_out.0);
    let queries = gather_rows(users.data(), users.dim(), held_out.0)?;
    let queries = MatrixView::new(&queries, users.dim())?;
    let targets = held_out.1;

    let index = ExactIndex::new(candidates);
    let popularity = PopularityBaseline::new(&candidate_ids, train.1.iter().copied());
    let mut ranked = RankedSplit {
        candidates: candidate_ids.len(),
        model: Vec::new(),
        popularity: Vec::new(),
    };
    for variant in ProtocolVariant::ALL {
        let ahead =
            index.items_ahead_of_targets(queries, targets, variant.exclusions(&train_items))?;
        ranked.model.push(RankingReport::from_items_ahead(
            variant.name(),
            &ahead,
            &PROTOCOL_CUTOFFS,
        ));
        ranked.popularity.push(popularity.evaluate(
            targets,
            variant,
            &train_items,
            &PROTOCOL_CUTOFFS,
        )?);
    }
    Ok(ranked)
}

fn load(run: &Path) -> Result<LoadedRun> {
    load_run(run).with_context(|| format!("cannot load the run in {}", run.display()))
}

fn require_leave_last_out(dataset: &Dataset) -> Result<()> {
    if !dataset.manifest.protocol.is_retrieval() {
        bail!(
            "evaluate-retrieval needs a dataset prepared with --protocol leave-last-out, but {} was \
             prepared for protocol {}",
            dataset.dir.display(),
            dataset.manifest.protocol.name()
        );
    }
    Ok(())
}

fn similarity_name(similarity: Similarity) -> &'static str {
    match similarity {
        Similarity::Dot => "dot",
        Similarity::Cosine => "cosine",
    }
}

/// User and item embeddings of every table row (ids = raw MovieLens ids), L2-normalised for a cosine
/// model so that inner products are the model's similarity.
fn tower_outputs(loaded: &LoadedRun) -> Result<(EmbeddingMatrix, EmbeddingMatrix)> {
    let batch_size = loaded.config.train.eval_batch_size;
    let cosine = loaded.model.config().similarity == Similarity::Cosine;
    let matrix = |side: Side, ids: &[u32]| -> Result<EmbeddingMatrix> {
        let (mut data, dim) = loaded
            .embeddings(side, batch_size)
            .with_context(|| format!("cannot compute the {side} embeddings"))?;
        if cosine {
            l2_normalize_rows(&mut data, dim);
        }
        Ok(EmbeddingMatrix::new(ids.to_vec(), dim, data)?)
    };
    let users = matrix(Side::User, &loaded.dataset.users.user_id)?;
    let items = matrix(Side::Item, &loaded.dataset.items.movie_id)?;
    Ok((users, items))
}

/// Divides each row by `sqrt(|row|^2 + eps)`, as the model's cosine similarity does.
fn l2_normalize_rows(data: &mut [f32], dim: usize) {
    for row in data.chunks_mut(dim.max(1)) {
        let norm = (row.iter().map(|v| v * v).sum::<f32>() + COSINE_EPS).sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// Item-table rows of the retrieval candidates: movies with at least one train interaction.
fn candidate_rows(train_count: &[u32]) -> Vec<usize> {
    train_count
        .iter()
        .enumerate()
        .filter(|&(_, &count)| count > 0)
        .map(|(row, _)| row)
        .collect()
}

/// The rows of `items` (one per item-table row, in table order) that are candidates.
fn candidate_matrix(items: &EmbeddingMatrix, train_count: &[u32]) -> Result<EmbeddingMatrix> {
    if train_count.len() != items.len() {
        bail!(
            "{} item embeddings for {} rows of items.parquet",
            items.len(),
            train_count.len()
        );
    }
    let rows = candidate_rows(train_count);
    let mut data = Vec::with_capacity(rows.len() * items.dim());
    let mut ids = Vec::with_capacity(rows.len());
    for &row in &rows {
        ids.push(items.ids()[row]);
        data.extend_from_slice(items.row(row));
    }
    Ok(EmbeddingMatrix::new(ids, items.dim(), data)?)
}

/// For each user-table row, the movie ids of its interactions (in split order).
fn items_by_user(users: usize, user_row: &[u32], movie_id: &[u32]) -> Result<Vec<Vec<u32>>> {
    let mut by_user = vec![Vec::new(); users];
    for (&row, &movie) in user_row.iter().zip(movie_id) {
        let Some(list) = by_user.get_mut(row as usize) else {
            bail!("user row {row} is outside the users table ({users} rows)");
        };
        list.push(movie);
    }
    Ok(by_user)
}

/// One exclusion row per query: the items of the query's user.
fn exclusions_for(items_by_user: &[Vec<u32>], query_user_rows: &[u32]) -> Exclusions {
    Exclusions::from_rows(query_user_rows.iter().map(|&row| {
        items_by_user
            .get(row as usize)
            .map_or(&[][..], Vec::as_slice)
    }))
}

/// The rows `rows` of a row-major matrix with `dim` columns, gathered in that order.
fn gather_rows(data: &[f32], dim: usize, rows: &[u32]) -> Result<Vec<f32>> {
    let available = data.len() / dim.max(1);
    let mut out = Vec::with_capacity(rows.len() * dim);
    for &row in rows {
        let row = row as usize;
        if row >= available {
            bail!("user row {row} is outside the embedding matrix ({available} rows)");
        }
        out.extend_from_slice(&data[row * dim..(row + 1) * dim]);
    }
    Ok(out)
}

/// The users-table row of a raw user key.
fn user_row(keys: &[String], key: &str) -> Result<usize> {
    keys.iter().position(|k| k == key).ok_or_else(|| {
        let examples: Vec<&str> = keys.iter().take(3).map(String::as_str).collect();
        anyhow::anyhow!(
            "user {key:?} is not in the dataset ({} users, e.g. {}); describe a new user with \
             --feature NAME=VALUE (MovieLens: --gender, --age and --occupation) instead",
            keys.len(),
            examples.join(", ")
        )
    })
}

/// Every movie the user (by users-table row) rated, in any split, sorted and de-duplicated.
fn rated_by(dataset: &Dataset, row: usize) -> Result<Vec<u32>> {
    let mut seen = Vec::new();
    for split in Split::ALL {
        let rows = dataset
            .interactions(split)
            .with_context(|| format!("cannot read the {split} split"))?;
        seen.extend(
            rows.user_row
                .iter()
                .zip(&rows.movie_id)
                .filter(|&(&r, _)| r as usize == row)
                .map(|(_, &m)| m),
        );
    }
    seen.sort_unstable();
    seen.dedup();
    Ok(seen)
}

/// One column of a one-row user batch.
#[derive(Debug, Clone, PartialEq)]
enum NewUserColumn {
    Ids(Vec<u32>),
    Dense(Vec<f32>),
}

/// A new user's encoded features, plus notes on values the model cannot use.
#[derive(Debug, Clone, PartialEq)]
struct EncodedNewUser {
    /// One column per user feature of the model, in config order.
    columns: Vec<NewUserColumn>,
    notes: Vec<String>,
}

/// Encodes a new user for the model's user features (`specs`, in config order): each given
/// `(name, value)` names a feature or its source column (e.g. `zip_code` for `zip_prefix`) and is
/// encoded through the train-fitted vocabulary (buckets, hash, prefix, standardisation); every
/// other feature is the unknown index 0 (all-padding for a multi-valued feature, zeros for a
/// dense one).
fn encode_new_user(
    specs: &[FeatureSpec],
    given: &[(String, String)],
    vocabularies: &Vocabularies,
) -> EncodedNewUser {
    let mut notes = Vec::new();
    let mut used = vec![false; given.len()];
    let columns = specs
        .iter()
        .map(|spec| {
            let vocabulary = vocabularies.get(&spec.name).ok();
            let source = vocabulary.and_then(|v| v.column.as_deref());
            let found = given
                .iter()
                .position(|(name, _)| *name == spec.name || Some(name.as_str()) == source);
            let Some(i) = found else {
                return unknown_column(spec);
            };
            used[i] = true;
            let raw = &given[i].1;
            let Some(vocabulary) = vocabulary else {
                notes.push(format!(
                    "the dataset has no vocabulary for {}; it is encoded as unknown",
                    spec.name
                ));
                return unknown_column(spec);
            };
            encode_given(spec, vocabulary, raw, &mut notes)
        })
        .collect();
    for ((name, raw), used) in given.iter().zip(used) {
        if !used {
            notes.push(format!(
                "the model does not use {name}; {name} {raw} has no effect"
            ));
        }
    }
    EncodedNewUser { columns, notes }
}

fn unknown_column(spec: &FeatureSpec) -> NewUserColumn {
    match spec.kind {
        FeatureKind::Categorical { .. } => NewUserColumn::Ids(vec![0]),
        FeatureKind::MultiCategorical { max_len, .. } => NewUserColumn::Ids(vec![0; max_len]),
        FeatureKind::Dense { dim } => NewUserColumn::Dense(vec![0.0; dim]),
    }
}

/// One given value through its feature's vocabulary.
fn encode_given(
    spec: &FeatureSpec,
    vocabulary: &dssm_data::Vocabulary,
    raw: &str,
    notes: &mut Vec<String>,
) -> NewUserColumn {
    match spec.kind {
        FeatureKind::Dense { dim } => {
            let parsed: Vec<f32> = raw
                .trim_matches(|c| c == '[' || c == ']')
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse::<f64>().ok())
                .map(|x| match vocabulary.standardize {
                    Some([mean, std]) => ((x - mean) / std) as f32,
                    None => x as f32,
                })
                .collect();
            if parsed.len() == dim {
                return NewUserColumn::Dense(parsed);
            }
            notes.push(format!(
                "{} needs {dim} number(s), found {raw:?}; it is encoded as zeros",
                spec.name
            ));
            NewUserColumn::Dense(vec![0.0; dim])
        }
        FeatureKind::Categorical { .. } | FeatureKind::MultiCategorical { .. } => {
            let values: Vec<&str> = match spec.kind {
                FeatureKind::MultiCategorical { .. } => raw.split('|').collect(),
                _ => vec![raw],
            };
            let mut ids: Vec<u32> = Vec::new();
            for value in values {
                let id = vocabulary.encode(value);
                if id == 0 {
                    let known = vocabulary.values.get(1..).unwrap_or_default();
                    let known = if known.is_empty() || known.len() > 30 {
                        format!("{} values", vocabulary.size().saturating_sub(1))
                    } else {
                        known.join(", ")
                    };
                    notes.push(format!(
                        "{} {value} is not in the train vocabulary (known: {known}); it is \
                         encoded as unknown",
                        spec.name
                    ));
                }
                ids.push(id);
            }
            match spec.kind {
                FeatureKind::MultiCategorical { max_len, .. } => {
                    ids.retain(|&id| id != 0);
                    ids.resize(max_len, 0);
                    NewUserColumn::Ids(ids)
                }
                _ => NewUserColumn::Ids(ids),
            }
        }
    }
}

/// The recommendations as a table: rank, item key, the items' display attributes, score.
fn format_recommendations(
    top: &[ScoredItem],
    items: &dssm_data::ItemTable,
    row_of: impl Fn(u32) -> Option<usize>,
) -> String {
    let widths: Vec<usize> = items
        .attributes
        .columns
        .iter()
        .map(|(name, _)| match name.as_str() {
            "title" => 50,
            "genres" => 30,
            _ => name.len().max(8),
        })
        .collect();
    let mut out = format!("{:>4}  {:>8}", "rank", "item");
    for ((name, _), w) in items.attributes.columns.iter().zip(&widths) {
        out.push_str(&format!("  {name:<w$}"));
    }
    out.push_str(&format!("  {:>8}\n", "score"));
    for (rank, item) in top.iter().enumerate() {
        let row = row_of(item.id);
        let key = row.map_or_else(|| item.id.to_string(), |r| items.key[r].clone());
        out.push_str(&format!("{:>4}  {key:>8}", rank + 1));
        for ((_, values), w) in items.attributes.columns.iter().zip(&widths) {
            let value = row.and_then(|r| values[r].as_deref()).unwrap_or("-");
            out.push_str(&format!("  {value:<w$}"));
        }
        out.push_str(&format!("  {:>8.4}\n", item.score));
    }
    out
}

/// The metrics table: one line per (variant, ranker).
pub(crate) fn format_table(rows: &[(&str, &RankingReport)]) -> String {
    let mut out = format!("{:<10}{:<12}", "variant", "ranker");
    for k in PROTOCOL_CUTOFFS {
        out.push_str(&format!("{:>9}", format!("HR@{k}")));
    }
    for k in PROTOCOL_CUTOFFS {
        out.push_str(&format!("{:>10}", format!("NDCG@{k}")));
    }
    out.push_str(&format!("{:>9}\n", "MRR"));
    for (ranker, report) in rows {
        out.push_str(&format!("{:<10}{:<12}", report.variant, ranker));
        for k in PROTOCOL_CUTOFFS {
            let value = report.at(k).map_or(f64::NAN, |m| m.hit_rate);
            out.push_str(&format!("{value:>9.4}"));
        }
        for k in PROTOCOL_CUTOFFS {
            let value = report.at(k).map_or(f64::NAN, |m| m.ndcg);
            out.push_str(&format!("{value:>10.4}"));
        }
        out.push_str(&format!("{:>9.4}\n", report.mrr));
    }
    out
}

fn dataset_record(dataset: &Dataset) -> Result<DatasetRecord> {
    let manifest = dataset.dir.join(dssm_data::dataset::files::MANIFEST);
    let bytes =
        std::fs::read(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    Ok(DatasetRecord {
        path: absolute(&dataset.dir),
        name: dataset.manifest.dataset.clone(),
        protocol: dataset.manifest.protocol.name().to_string(),
        manifest_checksum: dssm_trainer::checksum(&bytes),
    })
}

/// The id of the run's best checkpoint: `best@epoch<N>:<weights checksum>` from metrics.json when it
/// matches the weights on disk, else `best:<weights checksum>`.
fn checkpoint_id(run_dir: &Path) -> String {
    let checkpoints = run_dir.join(layout::CHECKPOINTS);
    let weights = [checkpoints.join("best"), checkpoints.join(".old-best")]
        .iter()
        .map(|dir| dir.join(dssm_model::WEIGHTS_FILE))
        .find(|path| path.exists())
        .and_then(|path| std::fs::read(path).ok())
        .map_or_else(
            || "unknown".to_string(),
            |bytes| dssm_trainer::checksum(&bytes),
        );
    let recorded = std::fs::read_to_string(run_dir.join(layout::METRICS))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| json.get("checkpoint")?.as_str().map(str::to_string));
    match recorded {
        Some(id) if id.ends_with(&format!(":{weights}")) => id,
        _ => format!("best:{weights}"),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Writes pretty JSON to a temporary sibling, then renames it into place.
fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use dssm_data::MinFrequency;

    fn parse(args: &[&str]) -> Result<crate::Command, clap::Error> {
        crate::Cli::try_parse_from(std::iter::once("dssm").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn candidates_are_the_movies_with_train_interactions() {
        assert_eq!(candidate_rows(&[3, 0, 1, 0, 7]), vec![0, 2, 4]);
        let items =
            EmbeddingMatrix::new(vec![10, 20, 30], 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let candidates = candidate_matrix(&items, &[0, 2, 1]).unwrap();
        assert_eq!(candidates.ids(), &[20, 30]);
        assert_eq!(candidates.data(), &[3.0, 4.0, 5.0, 6.0]);
        let error = candidate_matrix(&items, &[1, 1]).unwrap_err().to_string();
        assert!(error.contains("3 item embeddings for 2 rows"), "{error}");
    }

    #[test]
    fn exclusions_follow_the_query_users() {
        // Train: user row 0 rated 5 and 7, user row 2 rated 9; row 1 rated nothing.
        let by_user = items_by_user(3, &[0, 2, 0], &[5, 9, 7]).unwrap();
        assert_eq!(by_user, vec![vec![5, 7], vec![], vec![9]]);
        // Queries in held-out order: rows 2, 0, 1.
        let exclusions = exclusions_for(&by_user, &[2, 0, 1]);
        assert_eq!(exclusions.rows(), 3);
        assert_eq!(exclusions.row(0), &[9]);
        assert_eq!(exclusions.row(1), &[5, 7]);
        assert!(exclusions.row(2).is_empty());
        let error = items_by_user(2, &[0, 2], &[1, 1]).unwrap_err().to_string();
        assert!(error.contains("user row 2"), "{error}");
    }

    #[test]
    fn masked_ranking_removes_train_items_but_keeps_the_validation_item() {
        // Items 1..=4 on one axis: the user prefers 4 > 3 > 2 > 1. Train item 4, val item 3,
        // test item 2.
        let items = EmbeddingMatrix::new(vec![1, 2, 3, 4], 1, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let index = ExactIndex::new(items);
        let by_user = items_by_user(1, &[0], &[4]).unwrap();
        let train = exclusions_for(&by_user, &[0]);
        let query = [1.0f32];
        let queries = MatrixView::new(&query, 1).unwrap();
        let unmasked = index
            .items_ahead_of_targets(queries, &[2], ProtocolVariant::Unmasked.exclusions(&train))
            .unwrap();
        let masked = index
            .items_ahead_of_targets(queries, &[2], ProtocolVariant::Masked.exclusions(&train))
            .unwrap();
        assert_eq!(unmasked, vec![Some(2)]);
        // Item 4 is gone; item 3 (validation) still ranks ahead.
        assert_eq!(masked, vec![Some(1)]);
        // A target that is not a candidate is a miss.
        let miss = index.items_ahead_of_targets(queries, &[99], None).unwrap();
        assert_eq!(miss, vec![None]);
    }

    /// Items ahead of the target by brute force: a higher score, or an equal score and a lower id;
    /// `None` when the target is not a candidate or is excluded.
    fn brute_force_ahead(scores: &[(u32, f32)], target: u32, excluded: &[u32]) -> Option<usize> {
        if excluded.contains(&target) {
            return None;
        }
        let &(_, t) = scores.iter().find(|(id, _)| *id == target)?;
        Some(
            scores
                .iter()
                .filter(|(id, s)| !excluded.contains(id) && (*s > t || (*s == t && *id < target)))
                .count(),
        )
    }

    #[test]
    fn held_out_ranking_matches_a_brute_force_count() {
        // 6 users x 2 dims, 9 items (rows in table order, ids not sorted), item 40 never in train.
        // Scores are small integers, so ties happen and break by the lower id.
        let user_data: Vec<f32> = (0..12).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
        let users = EmbeddingMatrix::new(vec![11, 12, 13, 14, 15, 16], 2, user_data).unwrap();
        let item_ids = vec![50, 10, 40, 20, 90, 30, 70, 60, 80];
        let item_data: Vec<f32> = (0..18).map(|i| ((i * 3) % 4) as f32 - 1.0).collect();
        let items = EmbeddingMatrix::new(item_ids.clone(), 2, item_data).unwrap();
        let train_count = [2, 1, 0, 3, 1, 1, 4, 1, 2];
        let train_rows: (Vec<u32>, Vec<u32>) = (
            vec![0, 0, 1, 2, 2, 3, 4, 5, 5, 5],
            vec![50, 70, 20, 10, 70, 30, 20, 90, 80, 60],
        );
        // Held-out rows in an order unrelated to user rows; user 3's target is its own train item
        // (masked: a miss), user 4's target (40) is not a candidate.
        let held: (Vec<u32>, Vec<u32>) = (vec![5, 3, 0, 4, 1, 2], vec![70, 30, 20, 40, 80, 60]);
        let ranked = rank_held_out(
            &users,
            &items,
            &train_count,
            (&train_rows.0, &train_rows.1),
            (&held.0, &held.1),
        )
        .unwrap();
        assert_eq!(ranked.candidates, 8);
        let candidates: Vec<(usize, u32)> = item_ids
            .iter()
            .enumerate()
            .filter(|&(row, _)| train_count[row] > 0)
            .map(|(row, &id)| (row, id))
            .collect();
        // The items a variant removes from user `u`'s ranking: its train items when masked.
        let excluded = |u: u32, variant: ProtocolVariant| -> Vec<u32> {
            match variant {
                ProtocolVariant::Unmasked => Vec::new(),
                ProtocolVariant::Masked => train_rows
                    .0
                    .iter()
                    .zip(&train_rows.1)
                    .filter(|&(&r, _)| r == u)
                    .map(|(_, &m)| m)
                    .collect(),
            }
        };
        for (v, variant) in ProtocolVariant::ALL.into_iter().enumerate() {
            let ahead: Vec<Option<usize>> = held
                .0
                .iter()
                .zip(&held.1)
                .map(|(&u, &target)| {
                    let scores: Vec<(u32, f32)> = candidates
                        .iter()
                        .map(|&(row, id)| {
                            let s = users.row(u as usize)[0] * items.row(row)[0]
                                + users.row(u as usize)[1] * items.row(row)[1];
                            (id, s)
                        })
                        .collect();
                    brute_force_ahead(&scores, target, &excluded(u, variant))
                })
                .collect();
            assert_eq!(ahead[3], None, "item 40 is not a candidate");
            if variant == ProtocolVariant::Masked {
                assert_eq!(ahead[1], None, "user 3's target is one of its train items");
            }
            let expected =
                RankingReport::from_items_ahead(variant.name(), &ahead, &PROTOCOL_CUTOFFS);
            assert_eq!(ranked.model[v], expected, "{variant:?}");

            // Popularity: train counts (20: 2, 70: 2, then 1 each), ties by the lower id.
            let counts: Vec<(u32, f32)> = candidates
                .iter()
                .map(|&(_, id)| (id, train_rows.1.iter().filter(|&&m| m == id).count() as f32))
                .collect();
            let pop_ahead: Vec<Option<usize>> = held
                .0
                .iter()
                .zip(&held.1)
                .map(|(&u, &target)| brute_force_ahead(&counts, target, &excluded(u, variant)))
                .collect();
            let expected =
                RankingReport::from_items_ahead(variant.name(), &pop_ahead, &PROTOCOL_CUTOFFS);
            assert_eq!(ranked.popularity[v], expected, "{variant:?}");
        }
        assert_eq!(ranked.model[0].misses, 1);
        assert_eq!(ranked.model[1].misses, 2);
        // Non-trivial figures: masking moves the ranks.
        assert!(ranked.model[0].mrr > 0.0 && ranked.popularity[0].mrr > 0.0);
        assert_ne!(ranked.model[0].mrr, ranked.model[1].mrr);
    }

    #[test]
    fn gather_rows_picks_query_users_in_order() {
        let data = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5];
        assert_eq!(
            gather_rows(&data, 2, &[2, 0, 2]).unwrap(),
            vec![2.0, 2.5, 0.0, 0.5, 2.0, 2.5]
        );
        assert!(gather_rows(&data, 2, &[3]).is_err());
    }

    #[test]
    fn l2_normalisation_matches_the_model_formula() {
        let mut data = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize_rows(&mut data, 2);
        assert!((data[0] - 0.6).abs() < 1e-6 && (data[1] - 0.8).abs() < 1e-6);
        // A zero row stays zero (the epsilon keeps it finite).
        assert_eq!(&data[2..], &[0.0, 0.0]);
    }

    fn tiny_vocabularies() -> Vocabularies {
        let vocabulary = |name: &str, values: &[&str]| {
            let mut all = vec![dssm_data::encode::UNKNOWN.to_string()];
            all.extend(values.iter().map(|v| v.to_string()));
            dssm_data::Vocabulary::new(
                name,
                dssm_data::Side::User,
                dssm_data::FeatureKind::Categorical,
                all,
            )
        };
        let mut zip = vocabulary("zip_prefix", &["12", "48"]);
        zip.column = Some("zip_code".into());
        zip.prefix = Some(2);
        Vocabularies {
            min_frequency: MinFrequency::Count(1),
            train_rows: 2,
            features: vec![
                vocabulary("user_id", &["1", "2"]),
                vocabulary("gender", &["F", "M"]),
                vocabulary("age", &["25", "35"]),
                vocabulary("occupation", &["4", "7"]),
                zip,
            ],
        }
    }

    fn given(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_new_user_is_encoded_with_the_train_vocabularies_and_unknown_elsewhere() {
        let vocabularies = tiny_vocabularies();
        let specs = vec![
            FeatureSpec::categorical("user_id", Side::User, 3),
            FeatureSpec::categorical("gender", Side::User, 3),
            FeatureSpec::categorical("age", Side::User, 3),
            FeatureSpec::categorical("occupation", Side::User, 3),
            FeatureSpec::categorical("zip_prefix", Side::User, 2),
        ];
        let user = given(&[("gender", "M"), ("age", "35"), ("occupation", "4")]);
        let encoded = encode_new_user(&specs, &user, &vocabularies);
        let expected = [
            0,
            vocabularies.encode("gender", "M").unwrap(),
            vocabularies.encode("age", "35").unwrap(),
            vocabularies.encode("occupation", "4").unwrap(),
            0,
        ];
        assert!(expected[1..4].iter().all(|&id| id > 0), "{expected:?}");
        let ids: Vec<u32> = encoded
            .columns
            .iter()
            .map(|c| match c {
                NewUserColumn::Ids(ids) => ids[0],
                NewUserColumn::Dense(_) => panic!("no dense features here"),
            })
            .collect();
        assert_eq!(ids, expected);
        assert!(encoded.notes.is_empty(), "{:?}", encoded.notes);

        // An age outside the vocabulary is unknown, with a note; features the model lacks are noted.
        let user = given(&[("gender", "F"), ("age", "30"), ("occupation", "7")]);
        let encoded = encode_new_user(&specs[..3], &user, &vocabularies);
        assert_eq!(encoded.columns[2], NewUserColumn::Ids(vec![0]));
        assert!(
            encoded.notes[0].starts_with("age 30 is not in the train vocabulary (known: "),
            "{:?}",
            encoded.notes
        );
        assert!(encoded.notes[1].contains("does not use occupation"));
    }

    #[test]
    fn a_source_column_reaches_its_feature_through_the_prefix() {
        let vocabularies = tiny_vocabularies();
        let specs = vec![FeatureSpec::categorical("zip_prefix", Side::User, 3)];
        let encoded = encode_new_user(&specs, &given(&[("zip_code", "48067")]), &vocabularies);
        assert_eq!(encoded.columns, [NewUserColumn::Ids(vec![2])]);
        assert!(encoded.notes.is_empty(), "{:?}", encoded.notes);
    }

    #[test]
    fn unknown_user_keys_are_reported_with_examples() {
        let keys: Vec<String> = ["5", "9", "7", "8"].iter().map(|k| k.to_string()).collect();
        assert_eq!(user_row(&keys, "7").unwrap(), 2);
        let error = user_row(&keys, "42").unwrap_err().to_string();
        assert!(
            error.contains("user \"42\" is not in the dataset (4 users, e.g. 5, 9, 7)"),
            "{error}"
        );
    }

    #[test]
    fn the_table_has_one_line_per_variant_and_ranker() {
        let report = RankingReport::from_items_ahead("masked", &[Some(0), None], &PROTOCOL_CUTOFFS);
        let table = format_table(&[("model", &report)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].contains("HR@100")
                && lines[0].contains("NDCG@10")
                && lines[0].ends_with("MRR")
        );
        assert!(lines[1].starts_with("masked    model"), "{}", lines[1]);
        // HR@10 = 0.5 (one hit, one miss), MRR = 0.5.
        assert_eq!(lines[1].matches("0.5000").count(), 9, "{}", lines[1]);
    }

    #[test]
    fn recommend_takes_a_user_id_or_all_three_attributes() {
        assert!(matches!(
            parse(&["recommend", "--run", "r", "--user", "3"]),
            Ok(crate::Command::Recommend(RecommendArgs {
                user: Some(ref key),
                k: 10,
                ..
            })) if key == "3"
        ));
        assert!(matches!(
            parse(&["recommend", "--run", "r", "--feature", "segment=pro", "--feature", "country=FR"]),
            Ok(crate::Command::Recommend(RecommendArgs { user: None, ref feature, .. }))
                if feature.len() == 2 && feature[1] == ("country".to_string(), "FR".to_string())
        ));
        assert!(parse(&["recommend", "--run", "r", "--feature", "segment"]).is_err());
        let new_user = parse(&[
            "recommend",
            "--run",
            "r",
            "--gender",
            "F",
            "--age",
            "25",
            "--occupation",
            "4",
            "-k",
            "5",
        ]);
        assert!(matches!(
            new_user,
            Ok(crate::Command::Recommend(RecommendArgs {
                user: None,
                k: 5,
                ..
            }))
        ));
        assert!(parse(&["recommend", "--run", "r"]).is_err());
        assert!(parse(&["recommend", "--run", "r", "--gender", "F"]).is_err());
        assert!(parse(&["recommend", "--run", "r", "--user", "3", "--gender", "F"]).is_err());
        assert!(
            parse(&[
                "recommend",
                "--run",
                "r",
                "--gender",
                "X",
                "--age",
                "25",
                "--occupation",
                "4"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "recommend",
                "--run",
                "r",
                "--gender",
                "F",
                "--age",
                "25",
                "--occupation",
                "4",
                "--exclude-seen"
            ])
            .is_err()
        );
    }

    #[test]
    fn checkpoint_id_uses_metrics_json_only_when_it_matches_the_weights() {
        let dir = tempfile_dir();
        let best = dir.join(layout::CHECKPOINTS).join("best");
        std::fs::create_dir_all(&best).unwrap();
        std::fs::write(best.join(dssm_model::WEIGHTS_FILE), b"weights").unwrap();
        let checksum = dssm_trainer::checksum(b"weights");
        assert_eq!(checkpoint_id(&dir), format!("best:{checksum}"));
        std::fs::write(
            dir.join(layout::METRICS),
            format!(r#"{{"checkpoint": "best@epoch3:{checksum}"}}"#),
        )
        .unwrap();
        assert_eq!(checkpoint_id(&dir), format!("best@epoch3:{checksum}"));
        std::fs::write(
            dir.join(layout::METRICS),
            r#"{"checkpoint": "best@epoch3:0000000000000000"}"#,
        )
        .unwrap();
        assert_eq!(checkpoint_id(&dir), format!("best:{checksum}"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_is_written_whole_and_the_temporary_file_is_gone() {
        let dir = tempfile_dir();
        let path = dir.join("retrieval-test.json");
        write_json_atomically(&path, &serde_json::json!({"protocol": "leave-last-out"})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"protocol\": \"leave-last-out\""), "{text}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("retrieval-test.json")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn evaluate_retrieval_reproduces_the_trainers_test_figures_end_to_end() {
        let dir = tempfile_dir();
        let data = dir.join("synthetic-llo");
        let synthetic = dssm_data::SyntheticConfig {
            users: 150,
            items: 120,
            ratings: 6_000,
            ..dssm_data::SyntheticConfig::default()
        };
        let mut request = dssm_data::PrepareRequest::new(
            dssm_data::Source::Synthetic(synthetic),
            dssm_data::DatasetKind::Synthetic,
            &data,
        );
        request.protocol = Protocol::LeaveLastOut;
        dssm_data::prepare(&request, &|_| {}).unwrap();
        let run = dir.join("run");
        let config = RunConfig::from_toml_str(&format!(
            r#"
[data]
path = {data:?}
protocol = "leave-last-out"
[model.user_tower]
hidden = [16, 8]
[model.item_tower]
hidden = [16, 8]
[train]
batch_size = 512
epochs = 1
select_metric = "hit_rate"
[output]
dir = {run:?}
"#
        ))
        .unwrap();
        let report = dssm_trainer::train(&config, &dssm_trainer::TrainOptions::default()).unwrap();
        let trained = report
            .metrics
            .retrieval
            .expect("a leave-last-out run has retrieval metrics");

        evaluate(&EvaluateRetrievalArgs {
            run: run.clone(),
            split: SplitArg::Test,
        })
        .unwrap();
        let text = std::fs::read_to_string(run.join("retrieval-test.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["protocol"], "leave-last-out");
        assert_eq!(json["split_seed"], serde_json::Value::Null);
        assert_eq!(json["candidates"], trained.candidates);
        assert_eq!(json["checkpoint"], report.metrics.checkpoint.as_str());
        assert_eq!(
            json["dataset"]["manifest_checksum"],
            report.metrics.dataset.manifest_checksum.as_str()
        );
        let reports = |ranker: &str| -> Vec<RankingReport> {
            ["unmasked", "masked"]
                .iter()
                .map(|v| serde_json::from_value(json["metrics"][ranker][v].clone()).unwrap())
                .collect()
        };
        // Popularity is deterministic (up to the JSON round trip of floats); the model's figures may
        // differ by a near-tie or two, since the trainer embeds in its own batches.
        let users = trained.test[0].users as f64;
        let close = |mine: &[RankingReport], theirs: &[RankingReport], tolerance: f64| {
            assert_eq!(mine.len(), theirs.len());
            for (a, b) in mine.iter().zip(theirs) {
                assert_eq!(
                    (a.variant.as_str(), a.users, a.at_k.len()),
                    (b.variant.as_str(), b.users, b.at_k.len())
                );
                assert!((a.mrr - b.mrr).abs() <= tolerance, "{a:?} vs {b:?}");
                for (x, y) in a.at_k.iter().zip(&b.at_k) {
                    assert_eq!(x.k, y.k);
                    assert!(
                        (x.hit_rate - y.hit_rate).abs() <= tolerance,
                        "{a:?} vs {b:?}"
                    );
                    assert!((x.ndcg - y.ndcg).abs() <= tolerance, "{a:?} vs {b:?}");
                }
            }
        };
        close(&reports("popularity"), &trained.popularity_test, 1e-12);
        close(&reports("model"), &trained.test, 2.0 / users);

        // The other two commands run on the same run.
        let out = dir.join("embeddings");
        export(&ExportArgs {
            run: run.clone(),
            out: Some(out.clone()),
        })
        .unwrap();
        let items = dssm_retrieval::read_embeddings(&out.join(export_files::ITEMS)).unwrap();
        assert_eq!(items.matrix.len(), 120);
        assert_eq!(items.model_id, report.metrics.checkpoint);
        // `recommend`, parsed from its command line; the top K's movie ids.
        let run_arg = run.to_string_lossy().into_owned();
        let top = |args: &[&str]| -> Vec<u32> {
            let mut full = vec!["recommend", "--run", &run_arg];
            full.extend(args);
            let Ok(crate::Command::Recommend(args)) = parse(&full) else {
                panic!("{full:?} parses as recommend");
            };
            recommend(&args).unwrap();
            let found = recommendations(&args).unwrap();
            assert!(found.top.windows(2).all(|w| w[0].score >= w[1].score));
            found.top.iter().map(|s| s.id).collect()
        };
        let dataset = Dataset::open(&data).unwrap();
        let candidates: Vec<u32> = (0..dataset.items.movie_id.len())
            .filter(|&row| dataset.items.train_count[row] > 0)
            .map(|row| dataset.items.movie_id[row])
            .collect();
        // User 3's movies in every split, read here by user id.
        let mut rated = Vec::new();
        for split in Split::ALL {
            let rows = dataset.interactions(split).unwrap();
            for (&user, &movie) in rows.user_id.iter().zip(&rows.movie_id) {
                if user == 3 {
                    rated.push(movie);
                }
            }
        }
        let rated_candidates = candidates.iter().filter(|id| rated.contains(id)).count();
        assert!(rated_candidates > 0);
        // Every candidate asked for: with --exclude-seen exactly the unrated ones come back;
        // without it, the rated ones are there too.
        let all = candidates.len().to_string();
        let unseen = top(&["--user", "3", "--exclude-seen", "-k", &all]);
        assert_eq!(unseen.len(), candidates.len() - rated_candidates);
        assert!(unseen.iter().all(|id| !rated.contains(id)), "{unseen:?}");
        let everything = top(&["--user", "3", "-k", &all]);
        assert_eq!(everything.len(), candidates.len());
        let hidden: Vec<u32> = everything
            .iter()
            .copied()
            .filter(|id| !unseen.contains(id))
            .collect();
        assert_eq!(hidden.len(), rated_candidates);
        assert!(hidden.iter().all(|id| rated.contains(id)));
        // HNSW against exact search, with and without the exclusions: the same top 10 up to
        // its recall (a graph over 120 items finds nearly all).
        for extra in [&[][..], &["--exclude-seen"][..]] {
            let args = |index: &'static str| {
                let mut args = vec!["--user", "3", "--index", index];
                args.extend(extra);
                args
            };
            let (exact, hnsw) = (top(&args("exact")), top(&args("hnsw")));
            assert_eq!((exact.len(), hnsw.len()), (10, 10));
            let overlap = hnsw.iter().filter(|id| exact.contains(id)).count();
            assert!(overlap >= 9, "{extra:?}: HNSW {hnsw:?} vs exact {exact:?}");
        }
        // A new user described by features: ten distinct candidates.
        let new_user = top(&["--gender", "F", "--age", "25", "--occupation", "4"]);
        assert_eq!(new_user.len(), 10);
        assert!(new_user.iter().all(|id| candidates.contains(id)));
        let distinct: std::collections::HashSet<_> = new_user.iter().collect();
        assert_eq!(distinct.len(), 10);
        let error = recommend(&RecommendArgs {
            run: run.clone(),
            user: Some("99999".into()),
            feature: Vec::new(),
            gender: None,
            age: None,
            occupation: None,
            k: 10,
            exclude_seen: false,
            index: IndexArg::Exact,
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("user \"99999\" is not in the dataset"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh folder under the system temp dir, removed by the test that made it.
    fn tempfile_dir() -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dssm-cli-retrieve-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
