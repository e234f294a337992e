//! Request counters and latency histograms, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket (not cumulative), then the +Inf overflow.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

/// What the server counts.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub(crate) reloads: AtomicU64,
    pub(crate) failed_reloads: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

impl Metrics {
    /// Counts one finished request.
    pub(crate) fn record(&self, route: &str, status: u16, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((route.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut latency) = self.latency.lock() {
            let histogram = latency.entry(route.to_string()).or_default();
            let bucket = BUCKETS
                .iter()
                .position(|&b| seconds <= b)
                .unwrap_or(BUCKETS.len());
            histogram.counts[bucket] += 1;
            histogram.sum += seconds;
        }
    }

    /// The Prometheus text exposition of everything counted, with the model's id.
    pub(crate) fn render(&self, model_id: &str, in_flight: usize, max_in_flight: usize) -> String {
        let mut out = String::new();
        let label = escape(model_id);
        let _ = writeln!(
            out,
            "# HELP dssm_model_info The model served (its checkpoint id).\n\
             # TYPE dssm_model_info gauge\ndssm_model_info{{model_id=\"{label}\"}} 1"
        );
        let _ = writeln!(
            out,
            "# HELP dssm_requests_total Requests answered, by route and status.\n\
             # TYPE dssm_requests_total counter"
        );
        if let Ok(requests) = self.requests.lock() {
            for ((route, status), n) in requests.iter() {
                let route = escape(route);
                let _ = writeln!(
                    out,
                    "dssm_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP dssm_request_duration_seconds Time from the request's arrival to its response.\n\
             # TYPE dssm_request_duration_seconds histogram"
        );
        if let Ok(latency) = self.latency.lock() {
            for (route, histogram) in latency.iter() {
                render_histogram(&mut out, &escape(route), histogram);
            }
        }
        let counters = [
            (
                "dssm_reloads_total",
                "Successful model reloads.",
                &self.reloads,
            ),
            (
                "dssm_reload_failures_total",
                "Refused reloads (the old model kept serving).",
                &self.failed_reloads,
            ),
            (
                "dssm_rejected_total",
                "Requests refused because too many were in flight.",
                &self.rejected,
            ),
        ];
        for (name, help, value) in counters {
            let value = value.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP dssm_in_flight Requests being answered now.\n# TYPE dssm_in_flight gauge\n\
             dssm_in_flight {in_flight}\n\
             # HELP dssm_max_in_flight The bound on requests in flight.\n\
             # TYPE dssm_max_in_flight gauge\ndssm_max_in_flight {max_in_flight}"
        );
        out
    }
}

fn render_histogram(out: &mut String, route: &str, histogram: &Histogram) {
    let mut cumulative = 0;
    for (bound, count) in BUCKETS.iter().zip(&histogram.counts) {
        cumulative += count;
        let _ = writeln!(
            out,
            "dssm_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += histogram.counts[BUCKETS.len()];
    let _ = writeln!(
        out,
        "dssm_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {cumulative}\n\
         dssm_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
         dssm_request_duration_seconds_count{{route=\"{route}\"}} {cumulative}",
        histogram.sum
    );
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_cumulative_buckets_render() {
        let metrics = Metrics::default();
        metrics.record("/v1/recommend", 200, Duration::from_micros(300));
        metrics.record("/v1/recommend", 200, Duration::from_millis(3));
        metrics.record("/v1/recommend", 400, Duration::from_secs(9));
        let text = metrics.render("best@epoch2:\"x\"", 1, 8);
        assert!(
            text.contains("dssm_model_info{model_id=\"best@epoch2:\\\"x\\\"\"} 1"),
            "{text}"
        );
        assert!(text.contains("dssm_requests_total{route=\"/v1/recommend\",status=\"200\"} 2"));
        assert!(text.contains("dssm_requests_total{route=\"/v1/recommend\",status=\"400\"} 1"));
        let bucket = |le: &str| format!("route=\"/v1/recommend\",le=\"{le}\"}} ");
        assert!(text.contains(&(bucket("0.0005") + "1")), "{text}");
        assert!(text.contains(&(bucket("0.005") + "2")), "{text}");
        assert!(text.contains(&(bucket("2.5") + "2")), "{text}");
        assert!(text.contains(&(bucket("+Inf") + "3")), "{text}");
        assert!(text.contains("dssm_request_duration_seconds_count{route=\"/v1/recommend\"} 3"));
        assert!(text.contains("dssm_in_flight 1") && text.contains("dssm_max_in_flight 8"));
    }
}
