//! Act 7's HTML report: one self-contained file (inline CSS and SVG, no
//! scripts, nothing fetched) a person can open: every act with what it saw,
//! and charts of per-node time to Active, convergence after the heal and
//! request latency during the v2 swap.

use std::fmt::Write as _;

use serde::Serialize;

use super::figures::{Figures, LoadFigures};

/// Most latency points drawn (evenly thinned beyond it).
pub const MAX_PLOTTED_POINTS: usize = 4000;
const WIDTH: f64 = 640.0;
const BAR_HEIGHT: f64 = 22.0;
const PLOT_HEIGHT: f64 = 240.0;
const MARGIN: f64 = 70.0;

/// One act as it ended.
#[derive(Debug, Clone, Serialize)]
pub struct ActRecord {
    /// Act number (1–7).
    pub act: u8,
    /// What it shows.
    pub title: String,
    /// Whether it did what it claims.
    pub ok: bool,
    /// What it saw (or why it failed).
    pub detail: String,
    /// How long it took, ms.
    pub millis: f64,
}

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart of `bars` (label, ms); a missing value is drawn
/// as "not reached".
pub fn bar_chart(title: &str, bars: &[(String, Option<f64>)]) -> String {
    let max = bars.iter().filter_map(|(_, v)| *v).fold(1.0_f64, f64::max);
    let height = BAR_HEIGHT * bars.len() as f64 + 40.0;
    let scale = (WIDTH - MARGIN - 90.0) / max;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img" aria-label="{t}"><text x="4" y="16" class="t">{t}</text>"#,
        t = escape(title)
    );
    for (k, (label, value)) in bars.iter().enumerate() {
        let y = 28.0 + BAR_HEIGHT * k as f64;
        let _ = write!(
            svg,
            r#"<text x="4" y="{}" class="l">{}</text>"#,
            y + 14.0,
            escape(label)
        );
        match value {
            Some(v) => {
                let w = (v * scale).max(1.0);
                let _ = write!(
                    svg,
                    r#"<rect x="{MARGIN}" y="{y}" width="{w:.1}" height="{}" class="b"/><text x="{:.1}" y="{}" class="l">{v:.0} ms</text>"#,
                    BAR_HEIGHT - 6.0,
                    MARGIN + w + 4.0,
                    y + 14.0
                );
            }
            None => {
                let _ = write!(
                    svg,
                    r#"<text x="{MARGIN}" y="{}" class="l">not reached</text>"#,
                    y + 14.0
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Request latency over time during the v2 release, with the release and
/// all-Active moments marked; failed requests in red.
pub fn latency_chart(load: &LoadFigures) -> String {
    let samples = &load.samples;
    let step = samples.len().div_ceil(MAX_PLOTTED_POINTS).max(1);
    let t_max = samples.iter().map(|s| s.at_ms).fold(1.0_f64, f64::max);
    let l_max = samples.iter().map(|s| s.latency_ms).fold(1.0_f64, f64::max);
    let (w, h) = (WIDTH - MARGIN - 10.0, PLOT_HEIGHT - 40.0);
    let x = |t: f64| MARGIN + t / t_max * w;
    let y = |l: f64| 20.0 + h - l / l_max * h;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{PLOT_HEIGHT}" role="img" aria-label="latency during the v2 release"><text x="4" y="14" class="t">request latency during the v2 release (max {l_max:.1} ms, {t_max:.0} ms of load)</text><line x1="{MARGIN}" y1="{}" x2="{}" y2="{}" class="a"/><line x1="{MARGIN}" y1="20" x2="{MARGIN}" y2="{}" class="a"/><text x="4" y="24" class="l">{l_max:.1} ms</text><text x="4" y="{}" class="l">0</text>"#,
        20.0 + h,
        MARGIN + w,
        20.0 + h,
        20.0 + h,
        20.0 + h
    );
    for (t, label) in [
        (Some(load.release_at_ms), "release"),
        (load.all_active_at_ms, "all Active"),
    ] {
        if let Some(t) = t {
            let at = x(t);
            let _ = write!(
                svg,
                r#"<line x1="{at:.1}" y1="20" x2="{at:.1}" y2="{}" class="m"/><text x="{:.1}" y="{}" class="l">{label}</text>"#,
                20.0 + h,
                at + 3.0,
                36.0 + h
            );
        }
    }
    for s in samples.iter().step_by(step) {
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" class="{}"/>"#,
            x(s.at_ms),
            y(s.latency_ms),
            if s.ok { "p" } else { "e" }
        );
    }
    svg.push_str("</svg>");
    svg
}

fn node_bars(values: &[Option<f64>]) -> Vec<(String, Option<f64>)> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("node {}", i + 1), *v))
        .collect()
}

/// The whole report.
pub fn render_html(figures: &Figures, acts: &[ActRecord]) -> String {
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>clawmesh demo report</title><style>\
         body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
         pre{white-space:pre-wrap;background:#f6f6f6;padding:.5rem;font-size:.85rem}\
         .ok{color:#176f2c}.bad{color:#b00020}svg{display:block;margin:1rem 0}\
         .t{font-size:13px;font-weight:600}.l{font-size:11px}.b{fill:#3b7dd8}.a{stroke:#888}\
         .m{stroke:#d87a3b;stroke-dasharray:4 3}.p{fill:#3b7dd8;opacity:.5}.e{fill:#b00020}\
         </style></head><body><h1>clawmesh demo</h1>",
    );
    let passed = acts.iter().filter(|a| a.ok).count();
    let _ = write!(
        html,
        "<p>{passed} of {} acts did what they claim.</p>",
        acts.len()
    );
    for a in acts {
        let _ = write!(
            html,
            "<h2 class=\"{}\">{} Act {}: {} <small>({:.0} ms)</small></h2><pre>{}</pre>",
            if a.ok { "ok" } else { "bad" },
            if a.ok { "✓" } else { "✗" },
            a.act,
            escape(&a.title),
            a.millis,
            escape(&a.detail)
        );
    }
    html.push_str("<h2>Charts</h2>");
    if !figures.active_ms.is_empty() {
        html.push_str(&bar_chart(
            "act 3: release of v1 → Active, per node",
            &node_bars(&figures.active_ms),
        ));
        html.push_str(&bar_chart(
            "act 3: release of v1 → blob held, per node",
            &node_bars(&figures.blob_held_ms),
        ));
    }
    if let Some(load) = &figures.load {
        html.push_str(&latency_chart(load));
    }
    if !figures.heal_active_ms.is_empty() {
        let title = format!(
            "act 6: heal → Active on {}, per node",
            figures.converged_to.as_deref().unwrap_or("one target")
        );
        html.push_str(&bar_chart(&title, &node_bars(&figures.heal_active_ms)));
        html.push_str(&bar_chart(
            "act 6: heal → same target, per node",
            &node_bars(&figures.heal_target_ms),
        ));
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::load::Sample;

    #[test]
    fn the_report_escapes_text_and_draws_every_chart_it_has_figures_for() {
        let figures = Figures {
            active_ms: vec![Some(120.0), None],
            blob_held_ms: vec![Some(50.0), Some(70.0)],
            heal_active_ms: vec![Some(300.0), Some(310.0)],
            heal_target_ms: vec![Some(100.0), Some(110.0)],
            converged_to: Some("5.0.0".into()),
            load: Some(LoadFigures {
                release_at_ms: 100.0,
                all_active_at_ms: Some(900.0),
                samples: vec![
                    Sample {
                        node: 0,
                        at_ms: 10.0,
                        latency_ms: 1.0,
                        ok: true,
                    },
                    Sample {
                        node: 1,
                        at_ms: 500.0,
                        latency_ms: 9.0,
                        ok: false,
                    },
                ],
                ..LoadFigures::default()
            }),
            ..Figures::default()
        };
        let acts = vec![ActRecord {
            act: 2,
            title: "a <mesh>".into(),
            ok: false,
            detail: "x & y".into(),
            millis: 1.0,
        }];
        let html = render_html(&figures, &acts);
        assert!(
            html.contains("a &lt;mesh&gt;") && html.contains("x &amp; y"),
            "{html}"
        );
        assert!(!html.contains("<mesh>"));
        assert_eq!(html.matches("<svg").count(), 5, "{html}");
        assert!(html.contains("not reached"));
        assert!(
            html.contains("class=\"e\""),
            "a failed request is drawn as an error"
        );
        assert!(html.contains("0 of 1 acts"));
    }

    #[test]
    fn an_empty_run_has_no_charts() {
        let html = render_html(&Figures::default(), &[]);
        assert_eq!(html.matches("<svg").count(), 0);
    }
}
