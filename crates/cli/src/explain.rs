//! `dssm explain`: parses, calls [`dssm_trainer::explain_run`] and prints its tables.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dssm_trainer::{ExplainOptions, FieldWeights, SenetImportance};

/// Options of `dssm explain`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Each row of the validation split counts its user's and its item's SENet weights \
    (a sigmoid per field, in (0, 1)).\n\nExamples:\n  \
    dssm explain --run runs/senet\n  \
    dssm explain --run runs/senet --segment-user gender --segment-item rating_mean_bucket"
)]
pub struct ExplainArgs {
    /// A run folder written by `dssm train`, trained with `model.senet.enabled = true`.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// The categorical user feature of the dataset whose values segment the user tower's rows
    /// [default: age, when the dataset has it].
    #[arg(long, value_name = "FEATURE")]
    pub segment_user: Option<String>,
    /// The categorical item feature whose values segment the item tower's rows [default:
    /// rating_count_bucket, when the dataset has it].
    #[arg(long, value_name = "FEATURE")]
    pub segment_item: Option<String>,
}

/// Runs `explain` and prints one table per tower and per segment.
pub fn explain(args: &ExplainArgs) -> Result<()> {
    let options = ExplainOptions {
        segment_user: args.segment_user.clone(),
        segment_item: args.segment_item.clone(),
    };
    let report = dssm_trainer::explain_run(&args.run, &options)
        .with_context(|| format!("cannot explain the run in {}", args.run.display()))?;
    print!("{}", format_report(&report));
    for file in [dssm_trainer::IMPORTANCE_JSON, dssm_trainer::IMPORTANCE_SVG] {
        println!("saved        {}", args.run.join(file).display());
    }
    Ok(())
}

/// The report as text: per tower, every field's weight over all rows, then the mean of each
/// field per segment.
pub(crate) fn format_report(report: &SenetImportance) -> String {
    let mut out = format!(
        "run          {}\nrows         {} ({} split)\n",
        report.run_dir.display(),
        report.rows,
        report.split
    );
    for tower in &report.towers {
        out.push_str(&format!(
            "\n{} tower: SENet weight per field\n{:<24} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
            tower.side, "field", "mean", "std", "p10", "p50", "p90"
        ));
        for f in &tower.fields {
            out.push_str(&field_row(f));
        }
        let Some(feature) = &tower.segment_feature else {
            continue;
        };
        out.push_str(&format!(
            "\n{} tower: mean weight by {feature}\n",
            tower.side
        ));
        let w = feature.len().max(16);
        out.push_str(&format!("{:<w$} {:>8}", feature, "rows"));
        for f in &tower.fields {
            out.push_str(&format!(" {:>12}", short(&f.field)));
        }
        out.push('\n');
        for segment in &tower.segments {
            out.push_str(&format!(
                "{:<w$} {:>8}",
                short(&segment.value),
                segment.rows
            ));
            for f in &segment.fields {
                out.push_str(&format!(" {:>12.4}", f.mean));
            }
            out.push('\n');
        }
    }
    out
}

fn field_row(f: &FieldWeights) -> String {
    format!(
        "{:<24} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4}\n",
        f.field, f.mean, f.std, f.p10, f.p50, f.p90
    )
}

/// At most 12 characters, so the columns stay aligned.
fn short(name: &str) -> String {
    if name.chars().count() <= 12 {
        name.to_string()
    } else {
        name.chars().take(11).chain(['~']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dssm_trainer::{SegmentWeights, TowerImportance};

    fn weights(field: &str, mean: f64) -> FieldWeights {
        FieldWeights {
            field: field.into(),
            mean,
            std: 0.1,
            p10: mean - 0.1,
            p50: mean,
            p90: mean + 0.1,
        }
    }

    #[test]
    fn prints_every_field_and_segment() {
        let report = SenetImportance {
            run_dir: "runs/x".into(),
            split: "val".into(),
            rows: 3,
            towers: vec![TowerImportance {
                side: "user".into(),
                fields: vec![weights("user_id", 0.5), weights("occupation", 0.25)],
                segment_feature: Some("age".into()),
                segments: vec![
                    SegmentWeights {
                        value: "18".into(),
                        rows: 2,
                        fields: vec![weights("user_id", 0.75), weights("occupation", 0.125)],
                    },
                    SegmentWeights {
                        value: "a very long segment value".into(),
                        rows: 1,
                        fields: vec![weights("user_id", 0.0), weights("occupation", 0.5)],
                    },
                ],
            }],
        };
        let text = format_report(&report);
        assert!(
            text.contains("user tower: SENet weight per field"),
            "{text}"
        );
        assert!(
            text.contains("occupation                0.2500  0.1000  0.1500  0.2500  0.3500"),
            "{text}"
        );
        assert!(text.contains("user tower: mean weight by age"), "{text}");
        assert!(
            text.contains("18                      2       0.7500       0.1250"),
            "{text}"
        );
        assert!(text.contains("a very long~"), "{text}");
    }
}
