//! SENet field importance of a trained run (`dssm explain`): the excitation weight SENet gives
//! each field of each tower (a sigmoid, so in `(0, 1)`), over the validation rows, overall and
//! per segment (users by a categorical user feature such as `age`, items by a popularity bucket
//! such as `rating_count_bucket`). [`explain_run`] writes `senet-importance.json` and
//! `senet-importance.svg` into the run folder.

use std::path::{Path, PathBuf};

use dssm_data::{Dataset, FeatureValues, Split};
use dssm_model::Side;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::error::TrainError;
use crate::inputs::split_rows;
use crate::run::{LoadedRun, load_run};
use crate::run_folder::RunFolder;
use crate::tables::{GatherBuffers, SideTable};

/// File name of the importance report in the run folder.
pub const IMPORTANCE_JSON: &str = "senet-importance.json";
/// File name of its bar chart.
pub const IMPORTANCE_SVG: &str = "senet-importance.svg";

/// The user feature that segments the user tower by default, when the dataset has it.
pub const DEFAULT_USER_SEGMENT: &str = "age";
/// The item feature that segments the item tower by default, when the dataset has it.
pub const DEFAULT_ITEM_SEGMENT: &str = "rating_count_bucket";

/// What [`senet_importance`] segments by.
#[derive(Debug, Clone, Default)]
pub struct ExplainOptions {
    /// A categorical user feature of the dataset (it need not feed the model). `None`:
    /// [`DEFAULT_USER_SEGMENT`] when the dataset has it, else no user segments.
    pub segment_user: Option<String>,
    /// A categorical item feature of the dataset. `None`: [`DEFAULT_ITEM_SEGMENT`] when the
    /// dataset has it, else no item segments.
    pub segment_item: Option<String>,
}

/// SENet field weights of a run over its validation rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SenetImportance {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The split whose rows were read (`val`).
    pub split: String,
    /// Rows of that split.
    pub rows: usize,
    /// The user tower, then the item tower.
    pub towers: Vec<TowerImportance>,
}

/// One tower's field weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TowerImportance {
    /// `user` or `item`.
    pub side: String,
    /// Each field of the tower, in tower order, over all rows.
    pub fields: Vec<FieldWeights>,
    /// The feature whose values make the segments, when there is one.
    pub segment_feature: Option<String>,
    /// One segment per value of that feature present in the rows, in index order; together they
    /// hold every row once.
    pub segments: Vec<SegmentWeights>,
}

/// The field weights of the rows whose segment feature has one value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentWeights {
    /// The raw value (from the dataset's vocabulary; `<unk>` for index 0).
    pub value: String,
    /// Rows in the segment.
    pub rows: usize,
    /// Each field, in tower order.
    pub fields: Vec<FieldWeights>,
}

/// Summary of one field's SENet weight over some rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldWeights {
    /// The feature name.
    pub field: String,
    /// Mean weight.
    pub mean: f64,
    /// Standard deviation (population).
    pub std: f64,
    /// 10th percentile (linear interpolation between order statistics).
    pub p10: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
}

impl FieldWeights {
    /// The summary of `values` (not empty).
    fn of(field: &str, values: &mut [f64]) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        values.sort_by(f64::total_cmp);
        FieldWeights {
            field: field.to_string(),
            mean,
            std: var.sqrt(),
            p10: quantile(values, 0.1),
            p50: quantile(values, 0.5),
            p90: quantile(values, 0.9),
        }
    }
}

/// The `q` quantile of sorted values: linear between the order statistics at `q * (n - 1)`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let at = q * last as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

/// Reads the run, computes its SENet importance and writes [`IMPORTANCE_JSON`] and
/// [`IMPORTANCE_SVG`] into the run folder.
pub fn explain_run(
    run_dir: &Path,
    options: &ExplainOptions,
) -> Result<SenetImportance, TrainError> {
    let run = load_run(run_dir)?;
    let report = senet_importance(&run, options)?;
    let folder = RunFolder::new(run_dir.to_path_buf());
    folder.write_json(IMPORTANCE_JSON, &report)?;
    let svg = report.svg().map_err(|message| TrainError::Run {
        path: run_dir.join(IMPORTANCE_SVG),
        message,
    })?;
    folder.write(IMPORTANCE_SVG, svg.as_bytes())?;
    Ok(report)
}

/// The SENet weight of every field of both towers over the run's validation rows (each row
/// counts its user's and its item's weights, as the towers see them in evaluation), overall
/// and per segment. An error naming the run when it has no SENet.
pub fn senet_importance(
    run: &LoadedRun,
    options: &ExplainOptions,
) -> Result<SenetImportance, TrainError> {
    if run.model.config().senet.is_none() {
        return Err(TrainError::Run {
            path: run.run_dir.clone(),
            message: "this run has no SENet (model.senet.enabled = false), so its towers have \
                      no field weights to explain"
                .to_string(),
        });
    }
    let dataset = &run.dataset;
    let users = run.user_side_table()?;
    let items = SideTable::new(dataset, run.model.config(), Side::Item)?;
    let rows = split_rows(dataset, Split::Val, users.rows(), items.rows())?;
    let batch = run.config.train.eval_batch_size;
    let mut towers = Vec::with_capacity(2);
    for (side, table, of_row, option, default) in [
        (
            Side::User,
            &users,
            &rows.users,
            &options.segment_user,
            DEFAULT_USER_SEGMENT,
        ),
        (
            Side::Item,
            &items,
            &rows.items,
            &options.segment_item,
            DEFAULT_ITEM_SEGMENT,
        ),
    ] {
        let segment = segment_column(dataset, side, option.as_deref(), default)?;
        let weights = table_weights(run, table, side, batch)?;
        towers.push(tower_importance(run, side, &weights, of_row, segment)?);
    }
    Ok(SenetImportance {
        run_dir: run.run_dir.clone(),
        split: Split::Val.name().to_string(),
        rows: rows.users.len(),
        towers,
    })
}

/// The segment feature's name, values per table row and raw labels.
struct SegmentColumn<'a> {
    name: String,
    values: &'a [u32],
    labels: Vec<String>,
}

/// The categorical column that segments `side`: the one asked for (an error when the dataset
/// lacks it), else `default` when present.
fn segment_column<'a>(
    dataset: &'a Dataset,
    side: Side,
    asked: Option<&str>,
    default: &str,
) -> Result<Option<SegmentColumn<'a>>, TrainError> {
    let (table, key) = match side {
        Side::User => (&dataset.users.features, "--segment-user"),
        Side::Item => (&dataset.items.features, "--segment-item"),
    };
    let categorical = |name: &str| {
        table.get(name).and_then(|c| match &c.values {
            FeatureValues::Categorical(v) => Some(v.as_slice()),
            _ => None,
        })
    };
    let (name, values) = match asked {
        Some(name) => match categorical(name) {
            Some(values) => (name, values),
            None => {
                let names: Vec<&str> = table
                    .columns
                    .iter()
                    .filter(|c| matches!(c.values, FeatureValues::Categorical(_)))
                    .map(|c| c.name.as_str())
                    .collect();
                return Err(ConfigError::Invalid {
                    key: key.to_string(),
                    value: format!("{name:?}"),
                    expected: format!(
                        "a categorical {side} feature of the dataset: {}",
                        names.join(", ")
                    ),
                }
                .into());
            }
        },
        None => match categorical(default) {
            Some(values) => (default, values),
            None => return Ok(None),
        },
    };
    let labels = dataset
        .vocabularies
        .get(name)
        .map(|v| v.values.clone())
        .unwrap_or_default();
    Ok(Some(SegmentColumn {
        name: name.to_string(),
        values,
        labels,
    }))
}

/// SENet weights of every row of `table`, `[rows * fields]` row-major.
fn table_weights(
    run: &LoadedRun,
    table: &SideTable,
    side: Side,
    batch: usize,
) -> Result<Vec<f32>, TrainError> {
    let (model, config) = (&run.model, run.model.config());
    let mut buffers = GatherBuffers::default();
    let all: Vec<u32> = (0..table.rows() as u32).collect();
    let mut out = Vec::new();
    for chunk in all.chunks(batch.max(1)) {
        let inputs = table.batch(config, chunk, &mut buffers, model.device())?;
        let weights = model
            .senet_weights(side, &inputs)
            .map_err(TrainError::model)?
            .ok_or_else(|| TrainError::Run {
                path: run.run_dir.clone(),
                message: "this run has no SENet".to_string(),
            })?;
        let weights = weights
            .to_dtype(candle_core::DType::F32)
            .and_then(|w| w.flatten_all())
            .and_then(|w| w.to_vec1::<f32>())
            .map_err(TrainError::tensor("reading SENet weights"))?;
        out.extend(weights);
    }
    Ok(out)
}

/// One tower's summary over the rows whose table row is `of_row[r]`.
fn tower_importance(
    run: &LoadedRun,
    side: Side,
    weights: &[f32],
    of_row: &[u32],
    segment: Option<SegmentColumn<'_>>,
) -> Result<TowerImportance, TrainError> {
    let names: Vec<&str> = run
        .model
        .config()
        .side_features(side)
        .map(|f| f.name.as_str())
        .collect();
    let f = names.len();
    let summarize = |rows: &[u32]| -> Vec<FieldWeights> {
        names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let mut values: Vec<f64> = rows
                    .iter()
                    .map(|&r| weights[r as usize * f + k] as f64)
                    .collect();
                FieldWeights::of(name, &mut values)
            })
            .collect()
    };
    let mut segments = Vec::new();
    if let Some(column) = &segment {
        let n_values = of_row
            .iter()
            .map(|&r| column.values[r as usize] as usize + 1)
            .max()
            .unwrap_or(0);
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); n_values];
        for &r in of_row {
            members[column.values[r as usize] as usize].push(r);
        }
        for (value, rows) in members.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            segments.push(SegmentWeights {
                value: column
                    .labels
                    .get(value)
                    .cloned()
                    .unwrap_or_else(|| value.to_string()),
                rows: rows.len(),
                fields: summarize(rows),
            });
        }
    }
    Ok(TowerImportance {
        side: side.as_str().to_string(),
        fields: summarize(of_row),
        segment_feature: segment.map(|s| s.name),
        segments,
    })
}

impl SenetImportance {
    /// A bar chart per tower: each field's mean weight, with a line from p10 to p90.
    pub fn svg(&self) -> Result<String, String> {
        let mut svg = String::new();
        {
            let width = 480 * self.towers.len().max(1) as u32;
            let root = SVGBackend::with_string(&mut svg, (width, 400)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let areas = root.split_evenly((1, self.towers.len().max(1)));
            for (tower, area) in self.towers.iter().zip(&areas) {
                let n = tower.fields.len();
                let names: Vec<String> = tower.fields.iter().map(|f| f.field.clone()).collect();
                let mut chart = ChartBuilder::on(area)
                    .caption(
                        format!(
                            "{} tower: SENet weight ({} val rows)",
                            tower.side, self.rows
                        ),
                        ("sans-serif", 16),
                    )
                    .margin(12)
                    .x_label_area_size(40)
                    .y_label_area_size(40)
                    .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..1f64)
                    .map_err(|e| e.to_string())?;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(n.max(1))
                    .x_label_formatter(&|x| {
                        let i = x.round();
                        if (x - i).abs() < 1e-6 && i >= 0.0 {
                            names.get(i as usize).cloned().unwrap_or_default()
                        } else {
                            String::new()
                        }
                    })
                    .y_desc("weight (mean, p10-p90)")
                    .draw()
                    .map_err(|e| e.to_string())?;
                chart
                    .draw_series(tower.fields.iter().enumerate().map(|(i, f)| {
                        let x = i as f64;
                        Rectangle::new([(x - 0.3, 0.0), (x + 0.3, f.mean)], BLUE.mix(0.6).filled())
                    }))
                    .map_err(|e| e.to_string())?;
                chart
                    .draw_series(tower.fields.iter().enumerate().map(|(i, f)| {
                        let x = i as f64;
                        PathElement::new(vec![(x, f.p10), (x, f.p90)], BLACK.stroke_width(2))
                    }))
                    .map_err(|e| e.to_string())?;
            }
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(svg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_summary_by_hand() {
        // Values 0.1, 0.2, 0.3, 0.4, 1.0: mean 2.0 / 5 = 0.4; deviations -0.3, -0.2, -0.1, 0,
        // 0.6, squares 0.09 + 0.04 + 0.01 + 0 + 0.36 = 0.5, variance 0.1. p10 at 0.4 between
        // 0.1 and 0.2: 0.14; p50 the middle 0.3; p90 at 3.6 between 0.4 and 1.0: 0.76.
        let mut values = vec![0.4, 1.0, 0.1, 0.3, 0.2];
        let f = FieldWeights::of("age", &mut values);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(f.mean, 0.4) && close(f.std, 0.1f64.sqrt()), "{f:?}");
        assert!(
            close(f.p10, 0.14) && close(f.p50, 0.3) && close(f.p90, 0.76),
            "{f:?}"
        );
        let one = FieldWeights::of("x", &mut [0.5]);
        assert_eq!((one.p10, one.p90, one.std), (0.5, 0.5, 0.0));
    }
}
