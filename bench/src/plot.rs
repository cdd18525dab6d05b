//! Growth plots: the benchmarks write what they measured as a standalone SVG of line charts
//! (`--plot PATH`), so the pictures in `docs/` come from a run and are never drawn by hand. No
//! dependencies: axes, ticks, lines, markers and a legend, one panel per quantity.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

/// One line: a name and its `(x, y)` points in x order.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: a quantity over the same x for every series.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// A log2 x axis (client counts 1, 2, 4, … 256).
    pub log_x: bool,
    pub series: Vec<Series>,
}

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 300.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_R: f64 = 20.0;
const MARGIN_T: f64 = 40.0;
const MARGIN_B: f64 = 70.0;
const HEADER: f64 = 56.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Renders the panels side by side under a title and a subtitle (the command and machine).
pub fn render(title: &str, subtitle: &str, panels: &[Panel]) -> String {
    let width = PANEL_W * panels.len().max(1) as f64;
    let height = HEADER + PANEL_H;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r##"<rect width="100%" height="100%" fill="white"/><text x="12" y="22" font-size="16" font-weight="bold">{}</text><text x="12" y="42" fill="#555">{}</text>"##,
        escape(title),
        escape(subtitle)
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, panel, PANEL_W * i as f64, HEADER);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes `svg` to `path` and says so.
///
/// # Errors
/// When the file cannot be written.
pub fn write(path: &Path, svg: &str) -> anyhow::Result<()> {
    std::fs::write(path, svg).with_context(|| format!("write {}", path.display()))?;
    println!("plot written to {}", path.display());
    Ok(())
}

fn draw_panel(svg: &mut String, panel: &Panel, left: f64, top: f64) {
    let points = panel.series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY, 0.0_f64);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    if !x_min.is_finite() {
        return;
    }
    let fx = |x: f64| if panel.log_x { x.max(1e-9).log2() } else { x };
    let (a, b) = (fx(x_min), fx(x_max));
    let span = if b > a { b - a } else { 1.0 };
    let y_top = nice_ceiling(y_max * 1.05);
    let plot_w = PANEL_W - MARGIN_L - MARGIN_R;
    let plot_h = PANEL_H - MARGIN_T - MARGIN_B;
    let x0 = left + MARGIN_L;
    let y0 = top + MARGIN_T + plot_h;
    let sx = |x: f64| x0 + (fx(x) - a) / span * plot_w;
    let sy = |y: f64| y0 - y / y_top * plot_h;
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
        x0,
        top + 20.0,
        escape(&panel.title)
    );
    // Axes, y grid and ticks.
    for i in 0..=4 {
        let value = y_top * f64::from(i) / 4.0;
        let y = sy(value);
        let _ = write!(
            svg,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#e5e5e5"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 + plot_w,
            x0 - 6.0,
            y + 4.0,
            short(value)
        );
    }
    let mut xs: Vec<f64> = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let px = sx(x);
        let _ = write!(
            svg,
            r##"<line x1="{px}" y1="{y0}" x2="{px}" y2="{}" stroke="#333"/><text x="{px}" y="{}" text-anchor="middle">{}</text>"##,
            y0 + 5.0,
            y0 + 18.0,
            short(x)
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}" stroke="#333"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="#333"/>"##,
        x0 + plot_w,
        y0 - plot_h
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate({},{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        x0 + plot_w / 2.0,
        y0 + 36.0,
        escape(&panel.x_label),
        left + 16.0,
        y0 - plot_h / 2.0,
        escape(&panel.y_label)
    );
    // Lines, markers, legend.
    for (i, series) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = series
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in &series.points {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                sx(x),
                sy(y)
            );
        }
        let ly = y0 + 54.0;
        let lx = x0 + 130.0 * i as f64;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            lx + 18.0,
            lx + 22.0,
            ly + 4.0,
            escape(&series.name)
        );
    }
}

/// The smallest 1, 2 or 5 × 10^k at or above `value` (a readable axis top).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&top| top >= value)
        .unwrap_or(10.0 * magnitude)
}

/// `12.5k`, `3M`, `0.75`: short tick labels.
fn short(value: f64) -> String {
    let (scaled, suffix) = if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = if scaled.fract().abs() < 1e-9 {
        format!("{scaled:.0}")
    } else if scaled >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{suffix}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_and_labels_are_readable() {
        assert_eq!(nice_ceiling(7_300.0), 10_000.0);
        assert_eq!(nice_ceiling(1_900.0), 2_000.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(short(12_500.0), "12.5k");
        assert_eq!(short(2_000_000.0), "2M");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(256.0), "256");
        assert_eq!(short(20_000.0), "20k");
        assert_eq!(short(10.0), "10");
        assert_eq!(short(0.0), "0");
        assert_eq!(short(2.5), "2.5");
    }

    #[test]
    fn a_chart_has_one_line_and_one_marker_per_point_of_each_series() {
        let svg = render(
            "t & u",
            "cmd",
            &[Panel {
                title: "cmds/s".into(),
                x_label: "clients".into(),
                y_label: "per second".into(),
                log_x: true,
                series: vec![
                    Series {
                        name: "raw".into(),
                        points: vec![(1.0, 10.0), (2.0, 20.0), (4.0, 30.0)],
                    },
                    Series {
                        name: "engine".into(),
                        points: vec![(1.0, 8.0), (2.0, 15.0), (4.0, 20.0)],
                    },
                ],
            }],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 6);
        assert!(svg.contains("t &amp; u"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
