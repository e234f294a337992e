//! `training.svg`: training loss and validation metrics by epoch (plotters, SVG backend).

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::report::EpochRecord;

/// A named, coloured line of (epoch, value) points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Renders the training curves as an SVG document: training loss on the left, the validation
/// metrics (AUC and GAUC, or HR@50) on the right. Returns a message on a drawing error.
pub fn training_svg(records: &[EpochRecord]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(480);
        let last_epoch = records.iter().map(|r| r.epoch).max().unwrap_or(1).max(1);

        let losses: Vec<(f64, f64)> = records
            .iter()
            .filter(|r| r.train_loss.is_finite())
            .map(|r| (r.epoch as f64, r.train_loss))
            .collect();
        let values = range(losses.iter().map(|p| p.1));
        let mut chart = epoch_chart(&left, "training loss", last_epoch, values)?;
        chart
            .draw_series(LineSeries::new(losses.iter().copied(), &BLUE))
            .map_err(|e| e.to_string())?;

        let mut series: Vec<Series> = Vec::new();
        let pick = |f: fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
            records
                .iter()
                .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.epoch as f64, v)))
                .collect()
        };
        series.push(("val AUC", RED, pick(|r| r.val.as_ref().map(|v| v.auc))));
        series.push(("val GAUC", GREEN, pick(|r| r.val.as_ref().map(|v| v.gauc))));
        series.push(("val HR@50", MAGENTA, pick(|r| r.val_hit_rate)));
        series.push(("val NDCG@50", CYAN, pick(|r| r.val_ndcg)));
        series.retain(|s| !s.2.is_empty());
        let values = range(series.iter().flat_map(|s| s.2.iter().map(|p| p.1)));
        let mut chart = epoch_chart(&right, "validation", last_epoch, values)?;
        for (name, color, points) in series {
            chart
                .draw_series(LineSeries::new(points, &color))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A captioned chart of epochs 1..=`last_epoch` against `(low, high)`, its mesh drawn.
fn epoch_chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    last_epoch: usize,
    (low, high): (f64, f64),
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.5f64..last_epoch as f64 + 0.5, low..high)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// A padded [low, high] range for the values, [0, 1] when there are none.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !low.is_finite() || !high.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((high - low) * 0.1).max(1e-3);
    (low - pad, high + pad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PointwiseMetrics;

    #[test]
    fn draws_loss_and_validation() {
        let records: Vec<EpochRecord> = (1..=3)
            .map(|epoch| EpochRecord {
                epoch,
                train_loss: 0.5 / epoch as f64,
                train_rows: 10,
                steps: 1,
                lr: 1e-3,
                samples_per_sec: 100.0,
                wall_s: 1.0,
                val: Some(PointwiseMetrics {
                    rows: 4,
                    auc: 0.6 + 0.01 * epoch as f64,
                    logloss: 0.6,
                    gauc: 0.55,
                    gauc_weighted: 0.55,
                    gauc_users: 2,
                }),
                val_hit_rate: None,
                val_ndcg: None,
            })
            .collect();
        let svg = training_svg(&records).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("val AUC"));
        assert!(svg.contains("training loss"));
        assert!(svg.contains("polyline") || svg.contains("path"));
        // No records still draws empty axes.
        assert!(training_svg(&[]).unwrap().contains("<svg"));
    }
}
