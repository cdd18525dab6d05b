//! Where the milliseconds go: the `serve` child's stage histograms (its `GET /metrics`),
//! scraped before and after a measured run, differenced, and printed as one table beside the
//! bench's own end-to-end figures.
//!
//! The runtime's histograms are Prometheus histograms with fixed buckets (`src/telemetry.rs`:
//! 0.5 ms, 1, 2.5, 5, 10, 25, 50, 100, 250 ms, …), so count and mean are exact and p50/p99 are
//! interpolated linearly inside the bucket that holds them (an estimate no finer than the
//! bucket). The stages, in the order one commit travels (docs/operations.md names each metric):
//! command handling; event recorded → the projector's batch starts; the batch (journal read,
//! fold, store commit) and its store commit alone; the batch's commit → this node's tailer holds
//! the rows; the tailer's read; the row in the tailer → queued by a session; queued → written to
//! the socket; the socket write itself; and the row in the tailer → the socket.

use std::collections::HashMap;

use anyhow::Context as _;

use super::{load::LoadReport, FANOUT_TOPIC};

/// One histogram (one label set, or several summed): cumulative bucket counts by upper bound,
/// sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Histogram {
    /// `(upper bound, cumulative count)`, ascending; the last bound is `+Inf`.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    fn add(&mut self, other: &Histogram, sign: f64) {
        for &(le, n) in &other.buckets {
            match self.buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, m)) => *m += sign * n,
                None => self.buckets.push((le, sign * n)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.sum += sign * other.sum;
        self.count += sign * other.count;
    }

    /// The `q` quantile in seconds, interpolated inside its bucket; `None` when empty, and the
    /// last finite bound when it falls in the `+Inf` bucket.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let width = n - lower.1;
                let within = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * within);
            }
            lower = (le, n);
        }
        Some(lower.0)
    }

    pub(crate) fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// Every histogram of one scrape, by metric name and label set (without `le`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Scrape {
    histograms: HashMap<(String, Vec<(String, String)>), Histogram>,
}

/// `k="v",k2="v2"` → pairs (the runtime's label values hold no quotes or commas).
fn labels(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
}

impl Scrape {
    /// Parses the Prometheus text format's histogram lines (`_bucket`, `_sum`, `_count`).
    pub(crate) fn parse(text: &str) -> Self {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, mut pairs) = match series.split_once('{') {
                Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            let le = pairs
                .iter()
                .position(|(k, _)| k == "le")
                .map(|i| pairs.remove(i).1);
            pairs.sort();
            if let (Some(base), Some(le)) = (name.strip_suffix("_bucket"), le) {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                scrape
                    .histograms
                    .entry((base.to_owned(), pairs))
                    .or_default()
                    .buckets
                    .push((bound, value));
            } else if let Some(base) = name.strip_suffix("_sum") {
                scrape
                    .histograms
                    .entry((base.to_owned(), pairs))
                    .or_default()
                    .sum = value;
            } else if let Some(base) = name.strip_suffix("_count") {
                scrape
                    .histograms
                    .entry((base.to_owned(), pairs))
                    .or_default()
                    .count = value;
            }
        }
        for histogram in scrape.histograms.values_mut() {
            histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        scrape
    }

    /// Fetches `{base}/metrics`.
    pub(crate) async fn fetch(http: &reqwest::Client, base: &str) -> anyhow::Result<Self> {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("GET /metrics")?
            .text()
            .await
            .context("read /metrics")?;
        Ok(Self::parse(&text))
    }

    /// `name`'s histograms whose labels include `filter` (all of them when `None`), summed,
    /// minus the same in `before`.
    pub(crate) fn delta(
        &self,
        before: &Scrape,
        name: &str,
        filter: Option<(&str, &str)>,
    ) -> Histogram {
        let mut total = Histogram::default();
        let matches = |(n, labels): &(String, Vec<(String, String)>)| {
            n == name
                && filter.is_none_or(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        };
        for (key, histogram) in &self.histograms {
            if matches(key) {
                total.add(histogram, 1.0);
            }
        }
        for (key, histogram) in &before.histograms {
            if matches(key) {
                total.add(histogram, -1.0);
            }
        }
        total
    }
}

/// A label a stage's histograms must carry: `(name, value)`.
type LabelFilter = Option<(&'static str, &'static str)>;

/// The stages, in the order one commit travels: `(what, metric, label filter)`.
const STAGES: &[(&str, &str, LabelFilter)] = &[
    (
        "command handled (engine, incl. journal commit)",
        "runtime_command_duration_seconds",
        None,
    ),
    (
        "event recorded -> projector batch starts",
        "runtime_projector_pickup_seconds",
        Some(("projector", "run_summaries")),
    ),
    (
        "projector batch (read + fold + commit)",
        "runtime_projector_batch_seconds",
        Some(("projector", "run_summaries")),
    ),
    (
        "  of which the store commit",
        "runtime_projector_commit_seconds",
        Some(("projector", "run_summaries")),
    ),
    (
        "event recorded -> projection committed",
        "runtime_projection_lag_seconds",
        Some(("projector", "run_summaries")),
    ),
    (
        "store commit -> tailer holds the rows",
        "runtime_sync_commit_to_tail_seconds",
        Some(("topic", FANOUT_TOPIC)),
    ),
    (
        "  of which the tailer's read",
        "runtime_sync_tail_read_seconds",
        Some(("topic", FANOUT_TOPIC)),
    ),
    (
        "tailer -> session queued the frame*",
        "runtime_sync_tail_to_queue_seconds",
        None,
    ),
    (
        "  of which the session's pull + frame build*",
        "runtime_sync_deliver_seconds",
        None,
    ),
    (
        "queued -> flushed to the socket*",
        "runtime_sync_queue_to_socket_seconds",
        None,
    ),
    (
        "  of which the socket write (burst)*",
        "runtime_sync_socket_write_seconds",
        None,
    ),
    (
        "tailer -> flushed to the socket*",
        "runtime_sync_tail_to_socket_seconds",
        None,
    ),
];

/// The stage table of one run, printed after the run's result lines.
pub(crate) fn print(
    before: &Scrape,
    after: &Scrape,
    khala: &LoadReport,
    baseline: Option<&LoadReport>,
) {
    let ms = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{:.3}", s * 1000.0));
    println!(
        "          stages (serve child's /metrics over the measured run; p50/p99 interpolated in \
         the buckets; * = sampled sessions):"
    );
    println!(
        "          {:<48} {:>9} {:>9} {:>9} {:>9}",
        "stage", "count", "mean ms", "p50 ms", "p99 ms"
    );
    for (what, name, filter) in STAGES {
        let h = after.delta(before, name, *filter);
        println!(
            "          {:<48} {:>9.0} {:>9} {:>9} {:>9}",
            what,
            h.count,
            ms(h.mean()),
            ms(h.quantile(0.5)),
            ms(h.quantile(0.99))
        );
    }
    println!(
        "          {:<48} {:>9} {:>9} {:>9.2} {:>9.2}",
        "end to end: command 2xx -> client (bench)",
        khala.delivered,
        "",
        khala.p50_ms,
        khala.p99_ms
    );
    if let Some(raw) = baseline {
        println!(
            "          {:<48} {:>9} {:>9} {:>9.2} {:>9.2}",
            "raw broadcast: send -> client (bench)", raw.delivered, "", raw.p50_ms, raw.p99_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE runtime_projector_batch_seconds histogram
runtime_projector_batch_seconds_bucket{projector="run_summaries",le="0.001"} 1
runtime_projector_batch_seconds_bucket{projector="run_summaries",le="0.01"} 2
runtime_projector_batch_seconds_bucket{projector="run_summaries",le="+Inf"} 2
runtime_projector_batch_seconds_sum{projector="run_summaries"} 0.006
runtime_projector_batch_seconds_count{projector="run_summaries"} 2
runtime_projector_batch_seconds_bucket{projector="other",le="0.001"} 5
runtime_projector_batch_seconds_bucket{projector="other",le="0.01"} 5
runtime_projector_batch_seconds_bucket{projector="other",le="+Inf"} 5
runtime_projector_batch_seconds_sum{projector="other"} 0.001
runtime_projector_batch_seconds_count{projector="other"} 5
runtime_commands_total{aggregate="run"} 7
"#;

    const AFTER: &str = r#"runtime_projector_batch_seconds_bucket{projector="run_summaries",le="0.001"} 1
runtime_projector_batch_seconds_bucket{projector="run_summaries",le="0.01"} 102
runtime_projector_batch_seconds_bucket{projector="run_summaries",le="+Inf"} 102
runtime_projector_batch_seconds_sum{projector="run_summaries"} 0.506
runtime_projector_batch_seconds_count{projector="run_summaries"} 102
runtime_projector_batch_seconds_bucket{projector="other",le="0.001"} 9
runtime_projector_batch_seconds_bucket{projector="other",le="0.01"} 9
runtime_projector_batch_seconds_bucket{projector="other",le="+Inf"} 9
runtime_projector_batch_seconds_sum{projector="other"} 0.002
runtime_projector_batch_seconds_count{projector="other"} 9
"#;

    #[test]
    fn a_runs_histogram_is_the_difference_of_two_scrapes_for_the_chosen_labels() {
        let before = Scrape::parse(BEFORE);
        let after = Scrape::parse(AFTER);
        let h = after.delta(
            &before,
            "runtime_projector_batch_seconds",
            Some(("projector", "run_summaries")),
        );
        assert_eq!(h.count, 100.0);
        assert!((h.mean().unwrap() - 0.005).abs() < 1e-9);
        // All 100 fell in (1 ms, 10 ms]: the median is interpolated half way.
        assert!((h.quantile(0.5).unwrap() - 0.0055).abs() < 1e-9);
        assert!((h.quantile(0.99).unwrap() - 0.00991).abs() < 1e-9);
        let all = after.delta(&before, "runtime_projector_batch_seconds", None);
        assert_eq!(all.count, 104.0);
        let none = after.delta(&before, "runtime_missing_seconds", None);
        assert_eq!(none.quantile(0.5), None);
        assert_eq!(none.mean(), None);
    }

    #[test]
    fn a_quantile_in_the_overflow_bucket_reports_the_last_bound() {
        let h = Scrape::parse(
            "x_bucket{le=\"0.1\"} 1\nx_bucket{le=\"+Inf\"} 10\nx_sum 20\nx_count 10\n",
        )
        .delta(&Scrape::default(), "x", None);
        assert_eq!(h.quantile(0.99), Some(0.1));
        assert_eq!(h.quantile(0.05), Some(0.05));
    }
}
