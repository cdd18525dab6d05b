//! The fan-out bench's printed report: one line per connection count (Khala beside the raw
//! baseline), the replay line, and the `--plot` SVG.

use std::time::Duration;

use super::{load, FanoutArgs, LoadReport};

/// One connection count's results.
#[derive(Debug)]
pub(super) struct RunResult {
    pub(super) connections: usize,
    pub(super) rate: u64,
    pub(super) khala: LoadReport,
    pub(super) baseline: Option<LoadReport>,
    pub(super) idle_bytes_per_connection: f64,
}

impl RunResult {
    /// Khala's p99 over the raw broadcast's, when there is a baseline.
    pub(super) fn p99_ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .map(|b| self.khala.p99_ms / b.p99_ms.max(0.001))
    }
}

pub(super) fn fmt_rate(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

pub(super) fn print_replay(
    rows: u64,
    batch: u64,
    khala: &load::ReplayReport,
    baseline: Option<&load::ReplayReport>,
) {
    println!(
        "replay catch-up, one client, {rows} rows, batch {batch}: khala {}/s ({:.2} s){}",
        fmt_rate(khala.rate),
        khala.seconds,
        baseline
            .map(|b| format!(
                "; raw baseline {}/s ({:.2} s); ratio {:.2}",
                fmt_rate(b.rate),
                b.seconds,
                khala.rate / b.rate
            ))
            .unwrap_or_default()
    );
}

/// `--plot`: deliveries/s, p99 and memory per idle connection over the connection counts.
pub(super) fn write_plot(
    args: &FanoutArgs,
    source: &str,
    results: &[RunResult],
) -> anyhow::Result<()> {
    use crate::plot::{self, Panel, Series};
    let Some(path) = &args.plot else {
        return Ok(());
    };
    let series = |name: &str, f: &dyn Fn(&RunResult) -> Option<f64>| Series {
        name: name.into(),
        points: results
            .iter()
            .filter_map(|r| f(r).map(|y| (r.connections as f64, y)))
            .collect(),
    };
    let panel = |title: &str, y: &str, series: Vec<Series>| Panel {
        title: title.into(),
        x_label: "connections".into(),
        y_label: y.into(),
        log_x: false,
        series,
    };
    let rates: Vec<String> = results.iter().map(|r| r.rate.to_string()).collect();
    let counts: Vec<String> = results.iter().map(|r| r.connections.to_string()).collect();
    let svg = plot::render(
        &format!("bench fanout ({source}): Khala vs a bare WebSocket broadcast"),
        &format!(
            "openagents-bench fanout --connections {} --rate {} --duration {}",
            counts.join(","),
            rates.join(","),
            humantime(args.duration).replace(' ', "")
        ),
        &[
            panel(
                "deliveries/s",
                "updates delivered per second",
                vec![
                    series("Khala", &|r| Some(r.khala.deliveries_per_sec)),
                    series("raw broadcast", &|r| {
                        r.baseline.as_ref().map(|b| b.deliveries_per_sec)
                    }),
                ],
            ),
            panel(
                "p99 commit → client",
                "ms",
                vec![
                    series("Khala", &|r| Some(r.khala.p99_ms)),
                    series("raw broadcast", &|r| r.baseline.as_ref().map(|b| b.p99_ms)),
                ],
            ),
            panel(
                "memory per idle connection",
                "KiB (server RSS growth / connections)",
                vec![series("Khala", &|r| {
                    Some(r.idle_bytes_per_connection / 1024.0)
                })],
            ),
        ],
    );
    plot::write(path, &svg)
}

pub(super) fn humantime(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

pub(super) fn print_result(r: &RunResult) {
    let k = &r.khala;
    println!(
        "N={:>5} rate={:>4}/s | khala: {}/{} delivered, {}/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms | idle {:.1} KiB/conn",
        r.connections,
        r.rate,
        k.delivered,
        k.expected,
        fmt_rate(k.deliveries_per_sec),
        k.p50_ms,
        k.p99_ms,
        k.max_ms,
        r.idle_bytes_per_connection / 1024.0
    );
    if let Some(b) = &r.baseline {
        println!(
            "          baseline | raw:   {}/{} delivered, {}/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms | khala/raw throughput {:.2}, p99 {:.2}x",
            b.delivered,
            b.expected,
            fmt_rate(b.deliveries_per_sec),
            b.p50_ms,
            b.p99_ms,
            b.max_ms,
            k.deliveries_per_sec / b.deliveries_per_sec.max(1.0),
            r.p99_ratio().unwrap_or_default()
        );
    }
}
