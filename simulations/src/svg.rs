//! The convergence plot: an SVG drawn by hand (no plotting dependency, and
//! the output is byte-identical for identical reports).
//!
//! Left axis: fraction of live nodes whose targets equal the final targets.
//! Right axis: distinct document head-sets among live nodes. A dashed line
//! marks the last timeline step.

use std::fmt::Write as _;

use crate::report::SimReport;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const AGREE_COLOUR: &str = "#1f77b4";
const HEADS_COLOUR: &str = "#d62728";

/// Renders `report`'s samples as an SVG document.
pub fn render_svg(report: &SimReport) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let duration = report.duration_ms.max(1) as f64;
    let max_heads = report
        .samples
        .iter()
        .map(|s| s.distinct_heads)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |ms: u64| LEFT + plot_w * (ms as f64 / duration);
    let y_fraction = |f: f64| TOP + plot_h * (1.0 - f.clamp(0.0, 1.0));
    let y_heads = |n: usize| TOP + plot_h * (1.0 - n as f64 / max_heads);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let convergence = match report.convergence_ms {
        Some(ms) => format!("converged {ms} ms after the last step"),
        None => "not converged".to_string(),
    };
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{} — {} nodes, seed {} — {}</text>"#,
        WIDTH / 2.0,
        escape(&report.scenario),
        report.nodes,
        report.seed,
        convergence
    );
    // Grid and left axis ticks (fraction).
    for tick in 0..=4 {
        let f = f64::from(tick) / 4.0;
        let y = y_fraction(f);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{AGREE_COLOUR}">{f:.2}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
    }
    // Right axis ticks (distinct head-sets).
    let head_ticks = (max_heads as usize).min(5);
    for tick in 0..=head_ticks {
        let n = ((tick as f64) * max_heads / head_ticks.max(1) as f64).round() as usize;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{HEADS_COLOUR}">{n}</text>"#,
            LEFT + plot_w + 6.0,
            y_heads(n) + 4.0
        );
    }
    // Time axis.
    for tick in 0..=10u64 {
        let ms = report.duration_ms * tick / 10;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.1}</text>"#,
            x(ms),
            TOP + plot_h + 18.0,
            ms as f64 / 1000.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">virtual time (s)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle" fill="{AGREE_COLOUR}">fraction agreeing with final targets</text>"#,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate({:.1} {:.1}) rotate(90)" text-anchor="middle" fill="{HEADS_COLOUR}">distinct head-sets</text>"#,
        WIDTH - 18.0,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    // Last timeline step.
    let last = x(report.last_disruption_ms);
    let _ = writeln!(
        svg,
        r##"<line x1="{last:.1}" y1="{TOP}" x2="{last:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="4 4"/>"##,
        TOP + plot_h
    );
    // Series, drawn as steps (a value holds until the next sample).
    let agree: Vec<(f64, f64)> = report
        .samples
        .iter()
        .map(|s| (x(s.at_ms), y_fraction(s.agreeing_fraction)))
        .collect();
    let heads: Vec<(f64, f64)> = report
        .samples
        .iter()
        .map(|s| (x(s.at_ms), y_heads(s.distinct_heads)))
        .collect();
    for (points, colour) in [(&agree, AGREE_COLOUR), (&heads, HEADS_COLOUR)] {
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            step_points(points)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" fill="{AGREE_COLOUR}">— agreeing fraction</text>"#,
        LEFT + 8.0,
        TOP + 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" fill="{HEADS_COLOUR}">— distinct head-sets</text>"#,
        LEFT + 8.0,
        TOP + 32.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn step_points(points: &[(f64, f64)]) -> String {
    let mut out = String::new();
    let mut previous_y: Option<f64> = None;
    for &(x, y) in points {
        if let Some(py) = previous_y {
            let _ = write!(out, "{x:.1},{py:.1} ");
        }
        let _ = write!(out, "{x:.1},{y:.1} ");
        previous_y = Some(y);
    }
    out.trim_end().to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Sample, Traffic};

    fn report() -> SimReport {
        SimReport {
            scenario: "a<b".into(),
            seed: 3,
            nodes: 4,
            duration_ms: 1000,
            last_disruption_ms: 400,
            converged: true,
            convergence_ms: Some(100),
            live_nodes: 4,
            events: 10,
            total: Traffic::default(),
            per_node: vec![],
            largest_message_bytes: 0,
            largest_document_bytes: 0,
            intents_submitted: 0,
            intents_lost_with_disk: 0,
            final_targets: vec![],
            invariants: vec![],
            violations: vec![],
            samples: vec![
                Sample {
                    at_ms: 0,
                    live: 4,
                    distinct_heads: 3,
                    distinct_targets: 2,
                    agreeing_fraction: 0.25,
                },
                Sample {
                    at_ms: 500,
                    live: 4,
                    distinct_heads: 1,
                    distinct_targets: 1,
                    agreeing_fraction: 1.0,
                },
            ],
        }
    }

    #[test]
    fn svg_has_both_series_escaped_title_and_is_deterministic() {
        let svg = render_svg(&report());
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("converged 100 ms"));
        assert_eq!(svg, render_svg(&report()));
    }

    #[test]
    fn steps_hold_the_previous_value_until_the_next_sample() {
        assert_eq!(
            step_points(&[(0.0, 1.0), (2.0, 3.0)]),
            "0.0,1.0 2.0,1.0 2.0,3.0"
        );
    }
}
