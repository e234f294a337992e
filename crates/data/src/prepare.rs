//! The one entry point of the CLI: source files in, dataset folder out.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::dataset::{
    self, Attributes, FeatureSpec, Manifest, Schema, SideOutput, SplitCounts, TablesInput, files,
};
use crate::encode::{
    EncodedColumn, ItemStatistics, ItemTrainStats, MinFrequency, Side, Vocabularies, Vocabulary,
};
use crate::error::DataError;
use crate::features;
use crate::log::{self, InteractionLog, Resolver};
use crate::movielens;
use crate::raw::{RawData, SourceFile};
use crate::source::{self, DatasetKind, ML1M_URL};
use crate::spec::{DatasetSpec, FeatureDecl, SplitSpec};
use crate::split::{Protocol, Split, SplitRule, assign_splits};
use crate::synthetic::{self, SyntheticConfig};
use crate::table::{self, Keys, SourceTable, TableFile};

/// Where the raw files come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A folder holding the files (users.dat, movies.dat, ratings.dat or u.user, u.item, u.data).
    Folder(PathBuf),
    /// A zip archive such as the official ml-1m.zip (entries under `ml-1m/`).
    Zip(PathBuf),
    /// ml-1m.zip at this path, downloaded and verified first when absent (feature `download`).
    Download {
        /// Where the zip is (or will be) stored.
        zip_path: PathBuf,
    },
    /// Files made by the synthetic generator, in memory.
    Synthetic(SyntheticConfig),
}

/// Everything [`prepare`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareRequest {
    /// Where the raw files come from.
    pub source: Source,
    /// The files' layout.
    pub kind: DatasetKind,
    /// Split protocol. Default [`Protocol::Seed`].
    pub protocol: Protocol,
    /// Split seed (the `seed` protocol). Default 42.
    pub seed: u64,
    /// Rare-value rule. Default `Count(1)` (every value seen in train).
    pub min_frequency: MinFrequency,
    /// Label = rating > this. Default 3.
    pub label_threshold: u8,
    /// Quantile buckets of the per-movie train rating mean and count. Default 10.
    pub rating_buckets: usize,
    /// The dataset folder to create.
    pub out_dir: PathBuf,
    /// Replace an existing dataset folder. Default false.
    pub overwrite: bool,
    /// The creating command line, recorded in the manifest. Default empty.
    pub command: String,
    /// Rows behind the rating mean/count bucket features. Default [`ItemStatistics::Train`];
    /// [`ItemStatistics::AllRows`] is the reference's leaky variant, for reporting only.
    pub item_statistics: ItemStatistics,
}

impl PrepareRequest {
    /// A request with the documented defaults.
    pub fn new(source: Source, kind: DatasetKind, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            source,
            kind,
            protocol: Protocol::Seed,
            seed: 42,
            min_frequency: MinFrequency::default(),
            label_threshold: 3,
            rating_buckets: 10,
            out_dir: out_dir.into(),
            overwrite: false,
            command: String::new(),
            item_statistics: ItemStatistics::Train,
        }
    }

    /// Rejects inconsistent requests.
    pub fn check(&self) -> Result<(), DataError> {
        let bad = |message: String| Err(DataError::InvalidConfig { message });
        match (&self.source, self.kind) {
            (Source::Synthetic(_), k) if k != DatasetKind::Synthetic => {
                return bad(format!(
                    "a synthetic source needs dataset kind synthetic, not {}",
                    k.name()
                ));
            }
            (Source::Download { .. }, k) if k != DatasetKind::Ml1m => {
                return bad(format!("only ml-1m can be downloaded, not {}", k.name()));
            }
            (Source::Synthetic(config), _) => config.check()?,
            _ => {}
        }
        if self.label_threshold > 5 {
            return bad(format!(
                "label_threshold must be in 0..=5, not {}",
                self.label_threshold
            ));
        }
        if self.rating_buckets == 0 {
            return bad("rating_buckets must be at least 1".into());
        }
        if let MinFrequency::Share(s) = self.min_frequency
            && !(0.0..=1.0).contains(&s)
        {
            return bad(format!("min_frequency share must be in 0..=1, not {s}"));
        }
        if self.out_dir.file_name().is_none() {
            return bad(format!(
                "out_dir {} has no folder name",
                self.out_dir.display()
            ));
        }
        Ok(())
    }
}

/// A step of [`prepare`], reported to the caller's progress callback.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PrepareStage {
    /// Downloading ml-1m.zip.
    Downloading {
        /// The URL.
        url: String,
    },
    /// Running the synthetic generator.
    Generating {
        /// Target number of ratings.
        ratings: u64,
    },
    /// Reading source files.
    Reading {
        /// The folder, archive or file.
        source: String,
    },
    /// Interactions read so far (spec sources, reported per chunk).
    ReadingRows {
        /// Rows read.
        rows: u64,
    },
    /// Source files parsed.
    Parsed {
        /// Users read.
        users: usize,
        /// Movies read.
        movies: usize,
        /// Ratings read.
        ratings: usize,
    },
    /// Assigning rows to splits.
    Splitting {
        /// The protocol.
        protocol: Protocol,
    },
    /// Fitting vocabularies and statistics on train.
    Fitting {
        /// Train rows.
        train_rows: u64,
    },
    /// Writing one file of the dataset folder.
    Writing {
        /// File name.
        file: String,
    },
    /// Finished.
    Done,
}

/// What [`prepare`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareSummary {
    /// The dataset folder.
    pub out_dir: PathBuf,
    /// Rows per split.
    pub rows: SplitCounts,
    /// Users.
    pub users: u64,
    /// Movies.
    pub items: u64,
    /// Movies with at least one rating.
    pub rated_items: u64,
    /// Movies with at least one train rating.
    pub train_items: u64,
    /// Share of positive interactions.
    pub positive_share: f64,
    /// Interactions dropped for an unknown user or item (`missing = "drop"`).
    pub dropped_interactions: u64,
    /// Wall time of the whole call.
    pub elapsed: Duration,
}

/// Reads (downloading or generating when asked) and parses the raw files of a source.
pub fn load_raw(
    source: &Source,
    kind: DatasetKind,
    progress: &dyn Fn(PrepareStage),
) -> Result<RawData, DataError> {
    match source {
        Source::Folder(dir) => {
            progress(PrepareStage::Reading {
                source: dir.display().to_string(),
            });
            source::parse_files(kind, source::read_folder(kind, dir)?)
        }
        Source::Zip(path) => read_zip(kind, path, progress),
        Source::Download { zip_path } => {
            if !zip_path.is_file() {
                progress(PrepareStage::Downloading {
                    url: ML1M_URL.to_string(),
                });
            }
            source::ensure_ml1m_zip(zip_path)?;
            read_zip(kind, zip_path, progress)
        }
        Source::Synthetic(config) => {
            progress(PrepareStage::Generating {
                ratings: config.ratings,
            });
            let files = synthetic::generate(config)?;
            source::parse_files(kind, files.into_named())
        }
    }
}

fn read_zip(
    kind: DatasetKind,
    path: &Path,
    progress: &dyn Fn(PrepareStage),
) -> Result<RawData, DataError> {
    progress(PrepareStage::Reading {
        source: path.display().to_string(),
    });
    let (files, archive) = source::read_zip(kind, path)?;
    let mut raw = source::parse_files(kind, files)?;
    raw.sources.insert(0, archive);
    Ok(raw)
}

/// Builds a dataset folder from a MovieLens (or synthetic) request: reads the source, then
/// applies the MovieLens preset ([`crate::movielens::preset`]) through the same machinery as a
/// dataset spec ([`prepare_spec`]): splits by the protocol, fits the vocabularies and statistics
/// on train, writes everything into a temporary sibling folder and renames it into place.
///
/// Refuses to replace an existing `out_dir` unless `overwrite` is set; a failure leaves no
/// complete-looking folder behind.
///
/// ```
/// use dssm_data::{prepare, Dataset, DatasetKind, PrepareRequest, Source, Split, SyntheticConfig};
/// let dir = tempfile::tempdir().unwrap();
/// let config = SyntheticConfig { users: 60, items: 50, ratings: 1_000, ..Default::default() };
/// let request = PrepareRequest::new(
///     Source::Synthetic(config), DatasetKind::Synthetic, dir.path().join("synthetic"));
/// let summary = prepare(&request, &|stage| eprintln!("{stage:?}"))?;
/// let dataset = Dataset::open(&summary.out_dir)?;
/// assert_eq!(dataset.interactions(Split::Test)?.len() as u64, summary.rows.test);
/// # Ok::<(), dssm_data::DataError>(())
/// ```
pub fn prepare(
    request: &PrepareRequest,
    progress: &dyn Fn(PrepareStage),
) -> Result<PrepareSummary, DataError> {
    let started = Instant::now();
    request.check()?;
    refuse_existing(&request.out_dir, request.overwrite)?;
    let raw = load_raw(&request.source, request.kind, progress)?;
    progress(PrepareStage::Parsed {
        users: raw.users.len(),
        movies: raw.movies.len(),
        ratings: raw.ratings.len(),
    });
    let spec = movielens::preset(request);
    let inputs = movielens::inputs(raw, f64::from(request.label_threshold));
    let output = Output {
        out_dir: &request.out_dir,
        overwrite: request.overwrite,
        command: &request.command,
        synthetic: match &request.source {
            Source::Synthetic(config) => Some(config.clone()),
            _ => None,
        },
    };
    build(&spec, inputs, &output, started, progress)
}

/// Where [`prepare_spec`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecOutput {
    /// The dataset folder to create.
    pub out_dir: PathBuf,
    /// Replace an existing dataset folder.
    pub overwrite: bool,
    /// The creating command line, recorded in the manifest.
    pub command: String,
}

/// Builds a dataset folder from a dataset spec: reads the user and item tables (when given) and
/// the interactions in chunks, maps every key to a row, splits, fits every feature on train and
/// writes the same dataset folder as [`prepare`], atomically.
///
/// ```
/// use dssm_data::{prepare_spec, Dataset, DatasetSpec, SpecOutput, Split};
/// let dir = tempfile::tempdir().unwrap();
/// let mut log = String::from("customer,sku,ts\n");
/// for u in 0..6 {
///     for (t, sku) in ["a", "b", "c", "d"].iter().enumerate() {
///         log += &format!("c{u},{sku},{}\n", 100 * u + t);
///     }
/// }
/// std::fs::write(dir.path().join("clicks.csv"), log).unwrap();
/// std::fs::write(dir.path().join("shop.toml"), r#"
///     name = "shop"
///     [interactions]
///     path = "clicks.csv"
///     user = "customer"
///     item = "sku"
///     timestamp = "ts"
///     [split]
///     kind = "leave-last-out"
///     [[users.features]]
///     name = "customer"
///     kind = "categorical"
///     [[items.features]]
///     name = "sku"
///     kind = "hashed"
///     buckets = 64
/// "#).unwrap();
/// let spec = DatasetSpec::load(&dir.path().join("shop.toml"))?;
/// let output = SpecOutput { out_dir: dir.path().join("shop"), overwrite: false, command: String::new() };
/// let summary = prepare_spec(&spec, &output, &|_| {})?;
/// assert_eq!((summary.users, summary.items, summary.rows.test), (6, 4, 6));
/// let dataset = Dataset::open(&summary.out_dir)?;
/// assert_eq!(dataset.items.key, ["a", "b", "c", "d"]);
/// # Ok::<(), dssm_data::DataError>(())
/// ```
pub fn prepare_spec(
    spec: &DatasetSpec,
    output: &SpecOutput,
    progress: &dyn Fn(PrepareStage),
) -> Result<PrepareSummary, DataError> {
    let started = Instant::now();
    spec.check().map_err(|message| DataError::SpecInvalid {
        path: PathBuf::from(&spec.name),
        message,
    })?;
    refuse_existing(&output.out_dir, output.overwrite)?;
    let inputs = spec_inputs(spec, progress)?;
    progress(PrepareStage::Parsed {
        users: inputs.users.keys.len(),
        movies: inputs.items.keys.len(),
        ratings: inputs.log.len(),
    });
    let output = Output {
        out_dir: &output.out_dir,
        overwrite: output.overwrite,
        command: &output.command,
        synthetic: None,
    };
    build(spec, inputs, &output, started, progress)
}

fn refuse_existing(out_dir: &Path, overwrite: bool) -> Result<(), DataError> {
    if out_dir.file_name().is_none() {
        return Err(DataError::InvalidConfig {
            message: format!("out_dir {} has no folder name", out_dir.display()),
        });
    }
    if out_dir.exists() && !overwrite {
        return Err(DataError::DatasetExists {
            path: out_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// One side's rows: keys and the table (one row per key, in key order).
pub(crate) struct SideInput {
    pub keys: Keys,
    pub table: SourceTable,
}

/// Everything read from the sources.
pub(crate) struct Inputs {
    pub users: SideInput,
    pub items: SideInput,
    pub log: InteractionLog,
    pub sources: Vec<SourceFile>,
}

/// Where and how [`build`] writes.
struct Output<'a> {
    out_dir: &'a Path,
    overwrite: bool,
    command: &'a str,
    synthetic: Option<SyntheticConfig>,
}

/// Reads a side's table (key, display and feature columns), in key order.
fn read_side_table(spec: &DatasetSpec, side: Side) -> Result<Option<SideInput>, DataError> {
    let entity = spec.side(side);
    let Some(path) = &entity.path else {
        return Ok(None);
    };
    let key = entity.key.as_deref().unwrap_or(spec.key_column(side));
    let mut wanted: Vec<&str> = vec![key];
    let columns = entity.display.iter().map(String::as_str);
    for column in columns.chain(entity.features.iter().filter_map(FeatureDecl::column)) {
        if !wanted.contains(&column) {
            wanted.push(column);
        }
    }
    let file = TableFile {
        path,
        format: entity.format,
        delimiter: entity.delimiter,
    };
    let mut table = table::read_table(&file, &wanted)?;
    let (keys, order) = table::table_keys(&table, key)?;
    table.permute(&order);
    Ok(Some(SideInput { keys, table }))
}

fn spec_inputs(spec: &DatasetSpec, progress: &dyn Fn(PrepareStage)) -> Result<Inputs, DataError> {
    let users = read_side_table(spec, Side::User)?;
    let items = read_side_table(spec, Side::Item)?;
    let (mut user_resolver, mut item_resolver) = (
        resolver(spec, users.as_ref(), Side::User),
        resolver(spec, items.as_ref(), Side::Item),
    );
    progress(PrepareStage::Reading {
        source: spec.interactions.path.display().to_string(),
    });
    let mut log = log::read_log(spec, &mut user_resolver, &mut item_resolver, &|rows| {
        progress(PrepareStage::ReadingRows { rows })
    })?;
    let (user_keys, item_keys) = (
        user_resolver.into_discovered(),
        item_resolver.into_discovered(),
    );
    let users = side_or_discovered(spec, Side::User, users, user_keys, &mut log.user_row);
    let items = side_or_discovered(spec, Side::Item, items, item_keys, &mut log.item_row);
    let named = |path: &Path| source::file_source(path, path.display().to_string());
    let mut sources = vec![named(&spec.interactions.path)?];
    for side in [&spec.users, &spec.items] {
        if let Some(path) = &side.path {
            sources.push(named(path)?);
        }
    }
    Ok(Inputs {
        users,
        items,
        log,
        sources,
    })
}

fn resolver<'a>(spec: &'a DatasetSpec, input: Option<&'a SideInput>, side: Side) -> Resolver<'a> {
    match input {
        Some(input) => Resolver::Table {
            keys: &input.keys,
            policy: spec.side(side).missing,
            table: spec.side(side).path.as_deref().unwrap_or(Path::new("")),
        },
        None => Resolver::discover(),
    }
}

/// The side read from its table, or (no table) the keys discovered in the interactions.
fn side_or_discovered(
    spec: &DatasetSpec,
    side: Side,
    input: Option<SideInput>,
    discovered: Option<(Keys, Vec<u32>)>,
    log_rows: &mut [u32],
) -> SideInput {
    if let Some(input) = input {
        return input;
    }
    let (keys, order) = discovered.unwrap_or_default();
    InteractionLog::reorder(log_rows, &order);
    let table =
        table::keys_only_table(spec.interactions.path.clone(), spec.key_column(side), &keys);
    SideInput { keys, table }
}

fn split_rule(spec: &DatasetSpec) -> SplitRule {
    match &spec.split {
        SplitSpec::Seed { seed } => SplitRule::Seed(*seed),
        SplitSpec::LeaveLastOut => SplitRule::LeaveLastOut,
        SplitSpec::Time {
            val_from,
            test_from,
        } => SplitRule::Time {
            val_from: val_from.seconds().unwrap_or(i64::MIN),
            test_from: test_from.seconds().unwrap_or(i64::MIN),
        },
    }
}

/// Refuses data nothing can be trained or evaluated on.
fn check_not_degenerate(
    spec: &DatasetSpec,
    log: &InteractionLog,
    splits: &[Split],
    rule: SplitRule,
) -> Result<(), DataError> {
    let file = spec.interactions.path.display().to_string();
    let refuse = |message: String| Err(DataError::Degenerate { message });
    if log.len() == 0 {
        return refuse(format!(
            "{file}: no interactions (after dropping unknown keys)"
        ));
    }
    for split in Split::ALL {
        if !splits.contains(&split) {
            return refuse(format!(
                "{file}: the {} split leaves {split} empty ({} interactions)",
                rule.protocol(),
                log.len()
            ));
        }
    }
    let train_positive = splits
        .iter()
        .zip(&log.label)
        .any(|(s, &l)| *s == Split::Train && l == 1);
    if !train_positive {
        return refuse(format!(
            "{file}: no positive interaction in train (label rule {:?})",
            spec.label
        ));
    }
    Ok(())
}

/// Train interactions per user row, and per-item statistics over the rows `counted` selects.
fn statistics(
    log: &InteractionLog,
    n_users: usize,
    n_items: usize,
    counted: impl Fn(usize) -> bool,
) -> (Vec<u32>, Vec<ItemTrainStats>) {
    let mut user_rows = vec![0u32; n_users];
    let mut sums = vec![(0u32, 0f64); n_items];
    for i in (0..log.len()).filter(|&i| counted(i)) {
        user_rows[log.user_row[i] as usize] += 1;
        let e = &mut sums[log.item_row[i] as usize];
        e.0 += 1;
        e.1 += log.rating(i).map_or(0.0, f64::from);
    }
    let items = sums
        .into_iter()
        .map(|(count, sum)| ItemTrainStats {
            count,
            mean: if count == 0 {
                0.0
            } else {
                sum / f64::from(count)
            },
        })
        .collect();
    (user_rows, items)
}

fn attributes(table: &SourceTable, names: &[String]) -> Result<Attributes, DataError> {
    let columns = names
        .iter()
        .map(|name| {
            let values = table.column(name)?;
            let texts = (0..table.rows)
                .map(|row| values.text(row).map(|t| t.into_owned()))
                .collect();
            Ok((name.clone(), texts))
        })
        .collect::<Result<_, DataError>>()?;
    Ok(Attributes { columns })
}

/// The fitted and encoded features of both sides.
struct Encoded {
    users: Vec<(Vocabulary, EncodedColumn)>,
    items: Vec<(Vocabulary, EncodedColumn)>,
    train_rows: u64,
}

fn encode_features(
    spec: &DatasetSpec,
    inputs: &Inputs,
    splits: &[Split],
) -> Result<(Encoded, Vec<ItemTrainStats>), DataError> {
    let (n_users, n_items) = (inputs.users.keys.len(), inputs.items.keys.len());
    let (user_rows, item_stats) =
        statistics(&inputs.log, n_users, n_items, |i| splits[i] == Split::Train);
    let all_rows_stats = (spec.item_statistics == ItemStatistics::AllRows)
        .then(|| statistics(&inputs.log, n_users, n_items, |_| true).1);
    let total: u64 = user_rows.iter().map(|&c| u64::from(c)).sum();
    let item_rows: Vec<u32> = item_stats.iter().map(|s| s.count).collect();
    let users = features::encode_side(
        &features::SideData {
            side: Side::User,
            table: &inputs.users.table,
            train_rows: &user_rows,
            total_train_rows: total,
            stats: &[],
        },
        &spec.users.features,
        spec.min_frequency(),
    )?;
    let items = features::encode_side(
        &features::SideData {
            side: Side::Item,
            table: &inputs.items.table,
            train_rows: &item_rows,
            total_train_rows: total,
            stats: all_rows_stats.as_deref().unwrap_or(&item_stats),
        },
        &spec.items.features,
        spec.min_frequency(),
    )?;
    let encoded = Encoded {
        users,
        items,
        train_rows: total,
    };
    Ok((encoded, item_stats))
}

fn feature_spec(vocabulary: &Vocabulary, column: &EncodedColumn) -> FeatureSpec {
    FeatureSpec {
        name: vocabulary.name.clone(),
        side: vocabulary.side,
        kind: vocabulary.kind,
        vocab_size: vocabulary.size(),
        max_len: match column {
            EncodedColumn::Multi { width, .. } => Some(*width),
            _ => None,
        },
        dim: match column {
            EncodedColumn::Dense { dim, .. } => Some(*dim),
            _ => None,
        },
    }
}

fn build(
    spec: &DatasetSpec,
    inputs: Inputs,
    output: &Output<'_>,
    started: Instant,
    progress: &dyn Fn(PrepareStage),
) -> Result<PrepareSummary, DataError> {
    let rule = split_rule(spec);
    progress(PrepareStage::Splitting {
        protocol: rule.protocol(),
    });
    let splits = assign_splits(&inputs.log, inputs.users.keys.len(), rule);
    check_not_degenerate(spec, &inputs.log, &splits, rule)?;
    let train_rows = splits.iter().filter(|s| **s == Split::Train).count() as u64;
    progress(PrepareStage::Fitting { train_rows });
    let (encoded, item_stats) = encode_features(spec, &inputs, &splits)?;
    let schema = Schema {
        features: encoded
            .users
            .iter()
            .chain(&encoded.items)
            .map(|(v, c)| feature_spec(v, c))
            .collect(),
        label: spec.label.clone(),
        user_attributes: spec.users.display.clone(),
        item_attributes: spec.items.display.clone(),
    };
    let vocabularies = Vocabularies {
        min_frequency: spec.min_frequency(),
        train_rows: encoded.train_rows,
        features: encoded
            .users
            .iter()
            .chain(&encoded.items)
            .map(|(v, _)| v.clone())
            .collect(),
    };
    let user_attributes = attributes(&inputs.users.table, &spec.users.display)?;
    let item_attributes = attributes(&inputs.items.table, &spec.items.display)?;
    let train_count: Vec<u32> = item_stats.iter().map(|s| s.count).collect();

    let tmp = TempDir::create(output.out_dir)?;
    let side = |keys, attributes, features: Vec<(Vocabulary, EncodedColumn)>| SideOutput {
        keys,
        attributes,
        features: features.into_iter().map(|(v, c)| (v.name, c)).collect(),
    };
    let (rows, positives) = dataset::write_tables(
        tmp.path(),
        TablesInput {
            users: side(&inputs.users.keys, &user_attributes, encoded.users),
            items: side(&inputs.items.keys, &item_attributes, encoded.items),
            train_count: &train_count,
            log: &inputs.log,
            splits: &splits,
        },
        |file| {
            progress(PrepareStage::Writing {
                file: file.to_string(),
            })
        },
    )?;
    for (file, write) in [
        (files::SCHEMA, &|p: &Path| {
            dataset::write_json(p, &schema) as Result<(), DataError>
        }),
        (files::VOCABULARIES, &|p: &Path| vocabularies.save(p)),
    ] as [(&str, &dyn Fn(&Path) -> Result<(), DataError>); 2]
    {
        progress(PrepareStage::Writing {
            file: file.to_string(),
        });
        write(&tmp.path().join(file))?;
    }

    let mut rated = vec![false; inputs.items.keys.len()];
    for &item in &inputs.log.item_row {
        rated[item as usize] = true;
    }
    let rated_items = rated.iter().filter(|&&r| r).count() as u64;
    let train_items = item_stats.iter().filter(|s| s.count > 0).count() as u64;
    let positive_share = if rows.total() == 0 {
        0.0
    } else {
        positives.total() as f64 / rows.total() as f64
    };
    let files = files::CHECKED
        .iter()
        .map(|name| source::file_source(&tmp.path().join(name), name.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = Manifest {
        format_version: 2,
        files,
        dataset: spec.name.clone(),
        protocol: rule.protocol(),
        seed: match rule {
            SplitRule::Seed(seed) => seed,
            _ => 0,
        },
        label: spec.label.clone(),
        min_frequency: spec.min_frequency(),
        item_statistics: spec.item_statistics,
        spec: spec.clone(),
        source_files: inputs.sources.clone(),
        synthetic: output.synthetic.clone(),
        rows,
        positives,
        users: inputs.users.keys.len() as u64,
        items: inputs.items.keys.len() as u64,
        rated_items,
        train_items,
        positive_share,
        dropped_interactions: inputs.log.dropped,
        command: output.command.to_string(),
        created_at: rfc3339_utc(SystemTime::now()),
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    progress(PrepareStage::Writing {
        file: files::MANIFEST.to_string(),
    });
    dataset::write_json(&tmp.path().join(files::MANIFEST), &manifest)?;

    tmp.commit(output.out_dir, output.overwrite)?;
    progress(PrepareStage::Done);
    Ok(PrepareSummary {
        out_dir: output.out_dir.to_path_buf(),
        rows,
        users: manifest.users,
        items: manifest.items,
        rated_items,
        train_items,
        positive_share,
        dropped_interactions: inputs.log.dropped,
        elapsed: started.elapsed(),
    })
}

/// A temporary sibling folder, removed on drop unless committed.
struct TempDir {
    path: Option<PathBuf>,
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos}", std::process::id())
}

impl TempDir {
    /// A temporary sibling of `out_dir` (its parent is created when missing).
    fn create(out_dir: &Path) -> Result<Self, DataError> {
        let parent = match out_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
        let name = out_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = parent.join(format!(".{name}.tmp-{}", unique_suffix()));
        fs::create_dir(&path).map_err(|e| DataError::io(&path, e))?;
        Ok(Self { path: Some(path) })
    }

    fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("."))
    }

    fn commit(mut self, dest: &Path, overwrite: bool) -> Result<(), DataError> {
        let Some(tmp) = self.path.clone() else {
            return Ok(());
        };
        let mut old = None;
        if dest.exists() {
            if !overwrite {
                return Err(DataError::DatasetExists {
                    path: dest.to_path_buf(),
                });
            }
            let name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let aside = dest.with_file_name(format!(".{name}.old-{}", unique_suffix()));
            fs::rename(dest, &aside).map_err(|e| DataError::io(dest, e))?;
            old = Some(aside);
        }
        if let Err(e) = fs::rename(&tmp, dest) {
            if let Some(aside) = &old {
                let _ = fs::rename(aside, dest);
            }
            return Err(DataError::io(dest, e));
        }
        self.path = None;
        if let Some(aside) = old {
            let removed = if aside.is_dir() {
                fs::remove_dir_all(&aside)
            } else {
                fs::remove_file(&aside)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %aside.display(), error = %e, "could not remove the replaced dataset");
            }
        }
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_dir_all(path);
        }
    }
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Dataset, FeatureValues};
    use crate::spec::LabelRule;
    use std::cell::RefCell;

    fn small() -> SyntheticConfig {
        SyntheticConfig {
            users: 120,
            items: 90,
            ratings: 4_000,
            no_timestamp_share: 0.1,
            ..SyntheticConfig::default()
        }
    }

    #[test]
    fn dates_format() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(978_300_760)),
            "2000-12-31T22:12:40Z"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29T12:34:56Z"
        );
    }

    #[test]
    fn prepare_then_open_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        let mut request =
            PrepareRequest::new(Source::Synthetic(small()), DatasetKind::Synthetic, &out);
        request.command = "dssm prepare-data --dataset synthetic".into();
        let stages = RefCell::new(Vec::new());
        let summary = prepare(&request, &|s| stages.borrow_mut().push(s)).unwrap();
        assert_eq!(stages.borrow().last(), Some(&PrepareStage::Done));
        assert!(stages.borrow().contains(&PrepareStage::Writing {
            file: "train.parquet".into()
        }));

        let ds = Dataset::open(&out).unwrap();
        assert_eq!(ds.manifest.rows, summary.rows);
        assert_eq!(ds.manifest.command, request.command);
        assert_eq!(ds.manifest.source_files.len(), 3);
        assert_eq!(ds.users.user_id.len(), 120);
        assert_eq!(ds.items.movie_id.len(), 90);
        assert_eq!(ds.schema.features.len(), 10);
        assert_eq!(ds.schema.label, LabelRule::RatingAbove { threshold: 3.0 });
        let genres = ds
            .schema
            .features
            .iter()
            .find(|f| f.name == "genres")
            .unwrap();
        assert_eq!(genres.max_len, Some(3));
        assert_eq!(
            ds.users
                .features
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["user_id", "gender", "age", "occupation", "zip_prefix"]
        );
        match &ds.items.features.get("genres").unwrap().values {
            FeatureValues::Multi { max_len, values } => {
                assert_eq!(*max_len, 3);
                assert_eq!(values.len(), 90 * 3);
                assert!(values.chunks(3).all(|row| row[0] != 0));
            }
            other => panic!("genres should be multi-valued, got {other:?}"),
        }

        let mut total = 0;
        let mut positives = 0;
        let mut train_count = vec![0u32; 90];
        for split in Split::ALL {
            let rows = ds.interactions(split).unwrap();
            assert_eq!(rows.len() as u64, summary.rows.get(split));
            assert!(rows.line.windows(2).all(|w| w[0] < w[1]), "file order");
            for i in 0..rows.len() {
                assert_eq!(ds.users.user_id[rows.user_row[i] as usize], rows.user_id[i]);
                assert_eq!(
                    ds.items.movie_id[rows.item_row[i] as usize],
                    rows.movie_id[i]
                );
                assert_eq!(rows.label[i], u8::from(rows.rating[i].unwrap() > 3.0));
                if split == Split::Train {
                    train_count[rows.item_row[i] as usize] += 1;
                }
            }
            assert!(rows.timestamp.iter().any(Option::is_none));
            total += rows.len();
            positives += rows.label.iter().map(|&l| l as usize).sum::<usize>();
        }
        assert_eq!(train_count, ds.items.train_count);
        let share = positives as f64 / total as f64;
        assert!((share - summary.positive_share).abs() < 1e-12);
        assert!((0.55..=0.60).contains(&share), "{share}");
        // Train 72 / val 8 / test 20.
        let test_share = summary.rows.test as f64 / total as f64;
        assert!((test_share - 0.2).abs() < 0.001, "{test_share}");

        // A new user's attributes encode with the saved vocabularies.
        let gender = ds.vocabularies.encode("gender", "F").unwrap();
        assert!(gender > 0);
        assert_eq!(ds.vocabularies.encode("gender", "X").unwrap(), 0);
        assert_eq!(ds.vocabularies.encode("user_id", "999999").unwrap(), 0);
        // The encoded user table agrees with the vocabularies.
        let FeatureValues::Categorical(g) = &ds.users.features.get("gender").unwrap().values else {
            panic!("gender is categorical")
        };
        for (row, value) in ds
            .users
            .attributes
            .get("gender")
            .unwrap()
            .iter()
            .enumerate()
        {
            let value = value.as_deref().unwrap();
            assert_eq!(g[row], ds.vocabularies.encode("gender", value).unwrap());
        }
        // Nothing temporary is left next to the dataset.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ds"]);
    }

    #[test]
    fn leaky_item_statistics_count_every_row_and_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str, item_statistics: ItemStatistics| {
            let out = dir.path().join(name);
            let mut request =
                PrepareRequest::new(Source::Synthetic(small()), DatasetKind::Synthetic, &out);
            request.item_statistics = item_statistics;
            prepare(&request, &|_| {}).unwrap();
            Dataset::open(&out).unwrap()
        };
        let clean = open("clean", ItemStatistics::Train);
        let leaky = open("leaky", ItemStatistics::AllRows);
        assert_eq!(clean.manifest.item_statistics, ItemStatistics::Train);
        assert_eq!(leaky.manifest.item_statistics, ItemStatistics::AllRows);
        // The split, the train counts and the other vocabularies are the same ...
        assert_eq!(clean.manifest.rows, leaky.manifest.rows);
        assert_eq!(clean.items.train_count, leaky.items.train_count);
        let edges =
            |ds: &Dataset, feature: &str| ds.vocabularies.get(feature).unwrap().edges.clone();
        assert_eq!(edges(&clean, "movie_id"), edges(&leaky, "movie_id"));
        // ... but the count buckets are cut on counts over all rows (about 1 / 0.72 larger).
        let clean_edges = edges(&clean, "rating_count_bucket").unwrap();
        let leaky_edges = edges(&leaky, "rating_count_bucket").unwrap();
        assert!(
            leaky_edges.last() > clean_edges.last(),
            "{leaky_edges:?} vs {clean_edges:?}"
        );
    }

    #[test]
    fn leave_last_out_keeps_two_rows_per_user_out_of_train() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("llo");
        let mut request =
            PrepareRequest::new(Source::Synthetic(small()), DatasetKind::Synthetic, &out);
        request.protocol = Protocol::LeaveLastOut;
        let summary = prepare(&request, &|_| {}).unwrap();
        let ds = Dataset::open(&out).unwrap();
        let test = ds.interactions(Split::Test).unwrap();
        let train = ds.interactions(Split::Train).unwrap();
        let mut users: Vec<u32> = test.user_row.clone();
        users.sort_unstable();
        users.dedup();
        assert_eq!(users.len(), test.len(), "one test row per user");
        assert_eq!(summary.rows.val, summary.rows.test);
        // Every test row is at least as late as all of its user's train rows.
        let mut latest = vec![None; ds.users.user_id.len()];
        for i in 0..train.len() {
            let u = train.user_row[i] as usize;
            let key = (train.timestamp[i], train.line[i]);
            latest[u] = latest[u].max(Some(key));
        }
        for i in 0..test.len() {
            let key = Some((test.timestamp[i], test.line[i]));
            assert!(key > latest[test.user_row[i] as usize]);
        }
    }

    #[test]
    fn existing_datasets_are_not_overwritten_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("marker"), "old").unwrap();
        let mut request =
            PrepareRequest::new(Source::Synthetic(small()), DatasetKind::Synthetic, &out);
        let err = prepare(&request, &|_| {}).unwrap_err();
        assert!(matches!(err, DataError::DatasetExists { .. }));
        assert!(out.join("marker").exists());
        request.overwrite = true;
        prepare(&request, &|_| {}).unwrap();
        assert!(!out.join("marker").exists());
        assert!(out.join("manifest.json").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failing_source_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("users.dat"), "1::F::1::10::48067\n").unwrap();
        fs::write(src.join("movies.dat"), "1::A (1990)::Drama\n").unwrap();
        fs::write(src.join("ratings.dat"), "1::1::5::1\n1::2::5::2\n").unwrap();
        let out = dir.path().join("ds");
        let request = PrepareRequest::new(Source::Folder(src.clone()), DatasetKind::Ml1m, &out);
        let err = prepare(&request, &|_| {}).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("ratings.dat:2:"), "{message}");
        assert!(message.contains("movie id"), "{message}");
        assert!(!out.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_changed_after_preparing_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        let request = PrepareRequest::new(Source::Synthetic(small()), DatasetKind::Synthetic, &out);
        prepare(&request, &|_| {}).unwrap();
        let ds = Dataset::open(&out).unwrap();
        assert_eq!(ds.manifest.files.len(), files::CHECKED.len());
        // Same size, one byte different: only the md5 can tell.
        let path = out.join("val.parquet");
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert!(ds.interactions(Split::Train).is_ok());
        let err = ds.interactions(Split::Val).unwrap_err();
        assert!(matches!(err, DataError::ChangedFile { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("val.parquet: size or md5 differs from"),
            "{message}"
        );
        assert!(message.contains("manifest.json"), "{message}");
        // A table read by open() is checked by open().
        fs::write(out.join("vocabularies.json"), "{}").unwrap();
        let err = Dataset::open(&out).unwrap_err().to_string();
        assert!(
            err.contains("vocabularies.json: size or md5 differs"),
            "{err}"
        );
    }

    #[test]
    fn degenerate_data_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(
            src.join("users.dat"),
            "1::F::1::10::48067\n2::M::25::3::12345\n",
        )
        .unwrap();
        fs::write(
            src.join("movies.dat"),
            "1::A (1990)::Drama\n2::B (1991)::Comedy\n",
        )
        .unwrap();
        let out = dir.path().join("ds");
        let refused = |ratings: &str, threshold: u8| {
            fs::write(src.join("ratings.dat"), ratings).unwrap();
            let mut request =
                PrepareRequest::new(Source::Folder(src.clone()), DatasetKind::Ml1m, &out);
            request.label_threshold = threshold;
            let err = prepare(&request, &|_| {}).unwrap_err();
            assert!(!out.exists());
            match err {
                DataError::Degenerate { message } => message,
                other => panic!("expected a refusal, got {other}"),
            }
        };
        assert!(refused("", 3).contains("no interactions"));
        // Two ratings: one goes to test, one to validation, none to train.
        assert!(refused("1::1::5::1\n2::2::4::2\n", 3).contains("leaves train empty"));
        let many: String = (0..40)
            .map(|i| format!("{}::{}::{}::{i}\n", 1 + i % 2, 1 + i % 3 / 2, 1 + i % 5))
            .collect();
        // Every rating at or below the threshold: nothing to learn from.
        assert!(refused(&many, 5).contains("no positive interaction in train"));
    }

    #[test]
    fn inconsistent_requests_are_rejected() {
        let request = PrepareRequest::new(
            Source::Synthetic(small()),
            DatasetKind::Ml1m,
            "/tmp/never-written",
        );
        assert!(matches!(
            prepare(&request, &|_| {}),
            Err(DataError::InvalidConfig { .. })
        ));
        let request = PrepareRequest::new(
            Source::Download {
                zip_path: "x.zip".into(),
            },
            DatasetKind::Ml100k,
            "/tmp/never-written",
        );
        assert!(request.check().is_err());
    }

    #[test]
    fn folder_source_with_ml100k_layout() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("ml-100k");
        fs::create_dir(&src).unwrap();
        fs::write(
            src.join("u.user"),
            "1|24|M|technician|85711\n2|53|F|other|94043\n",
        )
        .unwrap();
        let flags = |on: usize| {
            (0..19)
                .map(|i| if i == on { "1" } else { "0" })
                .collect::<Vec<_>>()
                .join("|")
        };
        fs::write(
            src.join("u.item"),
            format!(
                "1|Toy Story (1995)|01-Jan-1995||u|{}\n2|GoldenEye (1995)|01-Jan-1995||u|{}\n",
                flags(3),
                flags(1)
            ),
        )
        .unwrap();
        let ratings: String = (0..10)
            .map(|i| {
                format!(
                    "{}\t{}\t{}\t{}\n",
                    1 + i % 2,
                    1 + i / 5,
                    1 + i % 5,
                    880_000_000 + i
                )
            })
            .collect();
        fs::write(src.join("u.data"), ratings).unwrap();
        let out = dir.path().join("ds");
        let mut request = PrepareRequest::new(Source::Folder(src), DatasetKind::Ml100k, &out);
        request.protocol = Protocol::LeaveLastOut;
        let summary = prepare(&request, &|_| {}).unwrap();
        assert_eq!(summary.rows.total(), 10);
        assert_eq!(summary.rows.test, 2);
        let ds = Dataset::open(&out).unwrap();
        assert_eq!(ds.manifest.dataset, "ml-100k");
        let text = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        assert_eq!(
            ds.items.attributes.get("genres").unwrap(),
            text(&["Animation", "Action"])
        );
        assert_eq!(
            ds.users.attributes.get("occupation").unwrap(),
            text(&["19", "13"])
        );
    }
}
