//! `dssm export`, `dssm evaluate-retrieval` and `dssm recommend`: argument parsing and printing over
//! `dssm-recommend`'s [`Recommender`], which loads the run, embeds the towers and searches.
//!
//! Scores are the towers' similarity: the inner product of the two embeddings, or, for a model with
//! `similarity = "cosine"`, the inner product of the L2-normalised embeddings. The model's logit is
//! that divided by a positive temperature, so the order is the same.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use dssm_data::Split;
use dssm_model::Similarity;
use dssm_recommend::{
    HnswConfig, IndexKind, Query, Recommendation, Recommender, ScoredItem, User, export_files,
};
use dssm_retrieval::{PROTOCOL_CUTOFFS, ProtocolVariant, RankingReport};

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
    /// Also build an HNSW graph over the candidates and save it as item_index.hnsw beside the
    /// embeddings. In the run's own export folder (the default --out), `dssm serve --index hnsw`
    /// and `dssm recommend --index hnsw` then map it at start instead of building the graph, and
    /// refuse it by name if the run's embeddings have changed since.
    #[arg(long, value_enum, default_value_t = ExportIndexArg::None)]
    pub index: ExportIndexArg,
}

/// The index `export` can save beside the embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportIndexArg {
    /// Embeddings only.
    None,
    /// An HNSW graph over the candidates (M 16, ef_construction 200), as item_index.hnsw.
    Hnsw,
}

/// Options of `dssm evaluate-retrieval`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Protocol leave-last-out: every movie in the train split is a candidate; \
    for each user, the held-out movie is ranked among them by the model's score. `unmasked` keeps \
    the user's train movies in the ranking (DeepMatch, torch-rechub); `masked` removes them, \
    keeping the validation movie in the test ranking; `masked_all` removes every movie the user \
    saw before the held-out one, the validation movie too (SASRec, HSTU, RecBole's full-sort \
    test; on the validation split it equals `masked`). The popularity baseline (train \
    interaction counts) is always printed beside the model. The figures go to <run>/retrieval-<split>.json.\n\nExamples:\n  \
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
#[command(group(clap::ArgGroup::new("seen").args(["user", "recent"]).multiple(true)))]
#[command(
    after_help = "A known user is looked up by key (MovieLens: the user id; your own data: the \
    user column's value). A new user is described by features: `--feature NAME=VALUE` for any \
    user feature (or its source column, e.g. zip_code=48067 for the zip prefix), or MovieLens's \
    --gender, --age and --occupation; every feature not given is unknown to the model. \
    --recent gives the movies the user watched lately (a known or a new user; alone, a new user \
    without features). Candidates are the items seen in train.\n\nExamples:\n  \
    dssm recommend --run runs/quickstart --user 42 --exclude-seen\n  \
    dssm recommend --run runs/quickstart --gender F --age 25 --occupation 4 -k 20\n  \
    dssm recommend --run runs/sequence --user 42 --recent 1193,661   # 661 watched last\n  \
    dssm recommend --run runs/sequence --recent 1193,661,2355 --exclude-seen\n  \
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
        required_unless_present_any = ["gender", "feature", "recent"],
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
    /// Movie ids the user watched lately, comma-separated, oldest first, newest last.
    ///
    /// A model with history features reads the newest of them in place of a known user's own
    /// history; a sequence tower reads them after a known user's train and validation items (a
    /// new user: these alone), the newest `max_len` of the sequence; another model ignores them
    /// (with a note). Ids not in the catalogue are an error naming them.
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',')]
    pub recent: Vec<u32>,
    /// How many items to show.
    #[arg(short = 'k', long = "top", default_value_t = 10)]
    pub k: usize,
    /// Hide every item the user has interacted with: a known user's train, val and test items,
    /// a new user's --recent items.
    #[arg(long, requires = "seen")]
    pub exclude_seen: bool,
    /// Exact search, or HNSW (approximate): mapped from <run>/embeddings/item_index.hnsw when
    /// `dssm export --index hnsw` saved one, otherwise built over the item embeddings at start.
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
    let recommender = load(&args.run, IndexKind::Exact)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.run.join("embeddings"));
    let index = match args.index {
        ExportIndexArg::None => None,
        ExportIndexArg::Hnsw => Some(HnswConfig::default()),
    };
    let manifest = recommender.export_with_index(&out, index)?;
    let (users, items) = (&manifest.user_embeddings, &manifest.item_embeddings);
    println!("run          {}", recommender.run_dir().display());
    println!("model id     {}", manifest.model_id);
    println!(
        "users        {} x {} -> {}",
        users.rows,
        manifest.dim,
        out.join(&users.file).display()
    );
    println!(
        "items        {} x {} -> {} ({} in train: the candidates)",
        items.rows,
        manifest.dim,
        out.join(&items.file).display(),
        manifest.candidates
    );
    println!(
        "scores       {}",
        if manifest.normalized {
            "inner product of these (L2-normalised) rows = the model's similarity, a cosine"
        } else {
            "inner product of these rows = the model's dot similarity"
        }
    );
    if let Some(index) = &manifest.index {
        println!(
            "index        hnsw over {} candidates (M {}, ef_construction {}) -> {} ({:.2} s)",
            index.items,
            index.config.max_connections,
            index.config.ef_construction,
            out.join(&index.file).display(),
            index.build_seconds
        );
    }
    println!("metadata     {}", manifest.item_metadata.display());
    println!(
        "manifest     {}",
        out.join(export_files::MANIFEST).display()
    );
    println!("time         {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `evaluate-retrieval`, prints the table and writes `<run>/retrieval-<split>.json`.
pub fn evaluate(args: &EvaluateRetrievalArgs) -> Result<()> {
    let started = Instant::now();
    let recommender = load(&args.run, IndexKind::Exact)?;
    let split = Split::from(args.split);
    let (record, path) = recommender.evaluate_retrieval(split)?;
    let report = |ranker: &str, variant: ProtocolVariant| {
        record
            .report(ranker, variant)
            .context("the record has every ranker and variant")
    };
    println!("run          {}", recommender.run_dir().display());
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
         masked = they are removed; masked_all = the validation movie too (SASRec, HSTU, RecBole)"
    );
    let pairs = ProtocolVariant::ALL
        .iter()
        .map(|&v| Ok((report("model", v)?, report("popularity", v)?)))
        .collect::<Result<Vec<_>>>()?;
    print!("{}", format_table(&model_and_popularity_rows(pairs)));
    let misses = report("model", ProtocolVariant::Unmasked)?.misses;
    if misses > 0 {
        println!(
            "misses       {misses} of {} targets are not candidates (never in train) and count as misses",
            record.users
        );
    }
    println!("saved        {}", path.display());
    println!("time         {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `recommend` and prints the top K.
pub fn recommend(args: &RecommendArgs) -> Result<()> {
    let (recommender, found) = recommendations(args)?;
    for note in &found.notes {
        println!("note         {note}");
    }
    let config = recommender.run().model.config();
    println!("run          {}", recommender.run_dir().display());
    println!("user         {}", describe_user(&recommender, args)?);
    if !args.recent.is_empty() {
        let ids: Vec<String> = args.recent.iter().map(u32::to_string).collect();
        println!("recent       {} (oldest first)", ids.join(", "));
    }
    let hidden = match (&args.user, args.exclude_seen) {
        (Some(key), true) => format!(", {} seen items hidden", recommender.seen(key)?.len()),
        (None, true) => format!(", {} recent items hidden", found.hidden),
        _ => String::new(),
    };
    println!(
        "index        {}, {} candidates (items in train){hidden}",
        describe_index(&recommender),
        recommender.candidates()
    );
    println!(
        "score        {} of the tower outputs (the model's logit is this / temperature {})",
        match config.similarity {
            Similarity::Dot => "dot product",
            Similarity::Cosine => "cosine similarity",
        },
        recommender.run().model.temperature()?
    );
    print!("{}", format_recommendations(&found.items, &recommender));
    Ok(())
}

/// The run loaded, and the answer to `args`.
fn recommendations(args: &RecommendArgs) -> Result<(Recommender, Recommendation)> {
    if args.k == 0 {
        bail!("-k must be at least 1");
    }
    let index = match args.index {
        IndexArg::Exact => IndexKind::Exact,
        IndexArg::Hnsw => IndexKind::Hnsw(HnswConfig::default()),
    };
    let recommender = load(&args.run, index)?;
    let user = match &args.user {
        Some(key) => User::Known(key.clone()),
        None => User::New(args.new_user()),
    };
    let mut query = Query::new(user, args.k.min(dssm_recommend::MAX_K));
    query.exclude_seen = args.exclude_seen;
    query.recent_items = args.recent.clone();
    let found = recommender.recommend(&query).map_err(|error| match error {
        dssm_recommend::Error::UnknownUser { .. } => anyhow::anyhow!(
            "{error}; with the command line: --feature NAME=VALUE (MovieLens: --gender, --age and \
             --occupation)"
        ),
        dssm_recommend::Error::UnknownItems {
            field: "recent_items",
            ..
        } => anyhow::anyhow!(
            "{}",
            error.to_string().replacen("recent_items", "--recent", 1)
        ),
        other => other.into(),
    })?;
    Ok((recommender, found))
}

fn load(run: &std::path::Path, index: IndexKind) -> Result<Recommender> {
    Ok(Recommender::load(run, index)?)
}

/// The user line: a known user's key, display columns and interactions, or a new user's features.
fn describe_user(recommender: &Recommender, args: &RecommendArgs) -> Result<String> {
    let Some(key) = &args.user else {
        let described: Vec<String> = args
            .new_user()
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        if described.is_empty() {
            return Ok("new (no features)".to_string());
        }
        return Ok(format!("new ({})", described.join(", ")));
    };
    let user = recommender.user(key)?;
    let attributes: Vec<String> = user
        .attributes
        .iter()
        .map(|(name, value)| format!("{name} {}", value.unwrap_or("-")))
        .collect();
    let attributes = if attributes.is_empty() {
        String::new()
    } else {
        format!("{}; ", attributes.join(", "))
    };
    Ok(format!(
        "{key} ({attributes}{} interactions)",
        recommender.seen(key)?.len()
    ))
}

fn describe_index(recommender: &Recommender) -> String {
    match (recommender.index_kind(), recommender.index_file()) {
        (IndexKind::Exact, _) => "exact".to_string(),
        (IndexKind::Hnsw(config), Some(file)) => format!(
            "hnsw (approximate: mapped from {}, ef_search {})",
            file.display(),
            config.ef_search
        ),
        (IndexKind::Hnsw(config), None) => format!(
            "hnsw (approximate, built at start: M {}, ef_construction {}, ef_search {})",
            config.max_connections, config.ef_construction, config.ef_search
        ),
    }
}

/// The recommendations as a table: rank, item key, the items' display attributes, score.
fn format_recommendations(top: &[ScoredItem], recommender: &Recommender) -> String {
    let items = &recommender.run().dataset.items;
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
        let view = recommender.item(item.id);
        let key = view.map_or_else(|| item.id.to_string(), |v| v.key().to_string());
        out.push_str(&format!("{:>4}  {key:>8}", rank + 1));
        for ((name, _), w) in items.attributes.columns.iter().zip(&widths) {
            let value = view.and_then(|v| v.attribute(name)).unwrap_or("-");
            out.push_str(&format!("  {value:<w$}"));
        }
        out.push_str(&format!("  {:>8.4}\n", item.score));
    }
    out
}

/// The table rows of (model, popularity) report pairs, one pair per variant: model first.
pub(crate) fn model_and_popularity_rows<'a>(
    pairs: impl IntoIterator<Item = (&'a RankingReport, &'a RankingReport)>,
) -> Vec<(&'static str, &'a RankingReport)> {
    let rows = pairs.into_iter();
    rows.flat_map(|(model, popularity)| [("model", model), ("popularity", popularity)])
        .collect()
}

/// The metrics table: one line per (variant, ranker).
pub(crate) fn format_table(rows: &[(&str, &RankingReport)]) -> String {
    let mut out = format!("{:<11}{:<12}", "variant", "ranker");
    for k in PROTOCOL_CUTOFFS {
        out.push_str(&format!("{:>9}", format!("HR@{k}")));
    }
    for k in PROTOCOL_CUTOFFS {
        out.push_str(&format!("{:>10}", format!("NDCG@{k}")));
    }
    out.push_str(&format!("{:>9}\n", "MRR"));
    for (ranker, report) in rows {
        out.push_str(&format!("{:<11}{:<12}", report.variant, ranker));
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use dssm_data::{Dataset, Protocol};
    use dssm_trainer::RunConfig;

    fn parse(args: &[&str]) -> Result<crate::Command, clap::Error> {
        crate::Cli::try_parse_from(std::iter::once("dssm").chain(args.iter().copied()))
            .map(|cli| cli.command)
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
        assert!(lines[1].starts_with("masked     model"), "{}", lines[1]);
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
        // --recent: comma-separated, in the order given (oldest first), for a known or new user.
        assert!(matches!(
            parse(&["recommend", "--run", "r", "--recent", "1193,661,2355"]),
            Ok(crate::Command::Recommend(RecommendArgs { user: None, ref recent, .. }))
                if recent == &[1193, 661, 2355]
        ));
        assert!(matches!(
            parse(&["recommend", "--run", "r", "--user", "3", "--recent", "5,1", "--exclude-seen"]),
            Ok(crate::Command::Recommend(RecommendArgs { user: Some(_), ref recent, exclude_seen: true, .. }))
                if recent == &[5, 1]
        ));
        assert!(matches!(
            parse(&["recommend", "--run", "r", "--feature", "age=25", "--recent", "7", "--exclude-seen"]),
            Ok(crate::Command::Recommend(RecommendArgs { ref recent, exclude_seen: true, .. }))
                if recent == &[7]
        ));
        assert!(parse(&["recommend", "--run", "r", "--recent", "1,x"]).is_err());
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
            ["unmasked", "masked", "masked_all"]
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
            index: ExportIndexArg::Hnsw,
        })
        .unwrap();
        assert!(
            out.join(export_files::INDEX).is_file(),
            "--index hnsw saves the graph"
        );
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
            let (_, found) = recommendations(&args).unwrap();
            assert!(found.items.windows(2).all(|w| w[0].score >= w[1].score));
            found.items.iter().map(|s| s.id).collect()
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
        // --recent reaches the query: with --exclude-seen, a new user's recent items are hidden.
        let recent = format!("{},{}", candidates[4], candidates[1]);
        let without = top(&["--recent", &recent, "--exclude-seen", "-k", &all]);
        assert_eq!(without.len(), candidates.len() - 2);
        assert!(!without.contains(&candidates[4]) && !without.contains(&candidates[1]));
        let known = top(&["--user", "3", "--recent", &recent, "-k", "5"]);
        assert_eq!(known.len(), 5);
        let unknown = RecommendArgs {
            run: run.clone(),
            user: Some("3".into()),
            feature: Vec::new(),
            gender: None,
            age: None,
            occupation: None,
            recent: vec![candidates[0], 99_998, 99_999],
            k: 10,
            exclude_seen: false,
            index: IndexArg::Exact,
        };
        let error = recommend(&unknown).unwrap_err().to_string();
        assert_eq!(error, "--recent: unknown movie id(s) 99998, 99999");
        let error = recommend(&RecommendArgs {
            run: run.clone(),
            user: Some("99999".into()),
            feature: Vec::new(),
            gender: None,
            age: None,
            occupation: None,
            recent: Vec::new(),
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
