//! The overview's activity chart: an inline SVG drawn on the server from
//! the admin API's buckets (no chart library, no script). Colours come from
//! CSS classes (the page's policy allows no inline styles); the numbers are
//! also in the SVG's accessible name and in a table beside it.

use crate::admin::console::Overview;
use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

/// The SVG for `o`'s buckets: per bucket an events bar and a runs bar, the
/// runs bar's failed part marked. Every value written is a number or fixed
/// text, so nothing needs escaping.
pub fn activity(o: &Overview, title: &str) -> String {
    let n = o.buckets.len().max(1) as f64;
    let peak = o
        .buckets
        .iter()
        .map(|b| b.events.max(b.runs))
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = nice_ceiling(peak);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let slot = plot_w / n;
    let bar = (slot * 0.4).max(0.5);
    let y = |v: usize| TOP + plot_h - plot_h * v as f64 / scale as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title"><title id="chart-title">{title}: {} events and {} runs, at most {peak} in one {}</title>"#,
        o.events,
        o.runs,
        bucket_name(o.bucket_ms),
    );
    // Grid lines at 0, half and full scale, labelled.
    for v in [0, scale / 2, scale] {
        let yy = y(v);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{v}</text>"#,
            WIDTH - 4.0,
            LEFT - 4.0,
            yy + 4.0
        );
    }
    for (i, b) in o.buckets.iter().enumerate() {
        let x = LEFT + i as f64 * slot + slot * 0.1;
        if b.events > 0 {
            let yy = y(b.events);
            let _ = write!(
                s,
                r#"<rect class="bar-events" x="{x:.1}" y="{yy:.1}" width="{bar:.1}" height="{:.1}"/>"#,
                TOP + plot_h - yy
            );
        }
        if b.runs > 0 {
            let (xr, yy) = (x + bar, y(b.runs));
            let _ = write!(
                s,
                r#"<rect class="bar-runs" x="{xr:.1}" y="{yy:.1}" width="{bar:.1}" height="{:.1}"/>"#,
                TOP + plot_h - yy
            );
            if b.failed > 0 {
                let yf = y(b.failed);
                let _ = write!(
                    s,
                    r#"<rect class="bar-failed" x="{xr:.1}" y="{yf:.1}" width="{bar:.1}" height="{:.1}"/>"#,
                    TOP + plot_h - yf
                );
            }
        }
    }
    let (first, last) = (
        o.buckets.first().map(|b| b.start).unwrap_or(o.now),
        o.buckets.last().map(|b| b.start).unwrap_or(o.now),
    );
    let _ = write!(
        s,
        r#"<text class="axis" x="{LEFT}" y="{}">{}</text><text class="axis" x="{}" y="{}" text-anchor="end">{} UTC</text></svg>"#,
        HEIGHT - 6.0,
        super::clock_time(first),
        WIDTH - 4.0,
        HEIGHT - 6.0,
        super::clock_time(last),
    );
    s
}

/// `minute`, `15 minutes`.
pub fn bucket_name(ms: i64) -> String {
    match ms / 60_000 {
        1 => "minute".into(),
        m => format!("{m} minutes"),
    }
}

/// The smallest of 1, 2, 5 × 10ⁿ at or above `v`, so the axis reads well.
fn nice_ceiling(v: usize) -> usize {
    let mut step = 1;
    loop {
        for m in [1, 2, 5] {
            if m * step >= v {
                return m * step;
            }
        }
        step *= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::console::{Bucket, Range};

    fn overview(counts: &[(usize, usize, usize)]) -> Overview {
        Overview {
            now: 600_000,
            range: Range::Hour,
            bucket_ms: 60_000,
            buckets: counts
                .iter()
                .enumerate()
                .map(|(i, &(events, runs, failed))| Bucket {
                    start: i as i64 * 60_000,
                    events,
                    runs,
                    failed,
                })
                .collect(),
            events: counts.iter().map(|c| c.0).sum(),
            runs: counts.iter().map(|c| c.1).sum(),
            runs_by_status: vec![],
            dead_letters: 0,
            dead_letters_more: false,
            queue_depth: 0,
            max_queue: 1,
            connectors: vec![],
            truncated: false,
        }
    }

    #[test]
    fn bars_scale_to_a_round_maximum_and_failures_are_marked() {
        let svg = activity(&overview(&[(0, 0, 0), (7, 4, 1), (3, 3, 0)]), "Activity");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(svg.contains("Activity: 10 events and 7 runs, at most 7 in one minute"));
        assert_eq!(svg.matches("bar-events").count(), 2, "no bar for zero");
        assert_eq!(svg.matches("bar-runs").count(), 2);
        assert_eq!(svg.matches("bar-failed").count(), 1);
        assert!(svg.contains(">10</text>"), "axis up to 10: {svg}");
        assert!(!svg.contains("style="), "no inline styles under the CSP");
    }

    #[test]
    fn axis_maxima_are_round() {
        let got: Vec<usize> = [1, 2, 3, 7, 10, 11, 40, 99, 101]
            .into_iter()
            .map(nice_ceiling)
            .collect();
        assert_eq!(got, [1, 2, 5, 10, 10, 20, 50, 100, 200]);
    }
}
