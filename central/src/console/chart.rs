//! The console's one picture: counts per minute as stacked bars, drawn on the server as SVG.
//!
//! No script and no inline style: bars carry a class (`s0` … `s7`, by series, repeating) that the
//! console's stylesheet colours, so the Content-Security-Policy stays strict. The legend and a
//! text description go with it, so the numbers are readable without seeing the colours.
//!
//! What it does NOT do: count anything (see [`super::summary`]).

use maud::{html, Markup};

use super::summary::{PerMinute, CHART_MINUTES};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;
/// Colour classes in the stylesheet.
const COLOURS: usize = 8;
/// Minutes between two time labels (on the hour and the half hour).
const LABEL_EVERY: usize = 30;

/// The bars of `data`, titled `title` (also its accessible name), with a legend.
pub fn stacked_bars(title: &str, data: &PerMinute) -> Markup {
    let minutes = CHART_MINUTES;
    let totals: Vec<u64> = (0..minutes)
        .map(|minute| data.series.iter().map(|(_, counts)| counts[minute]).sum())
        .collect();
    let peak = totals.iter().copied().max().unwrap_or(0).max(1);
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let bar = plot_width / minutes.max(1) as f64;
    let y_of = |count: u64| TOP + plot_height - plot_height * count as f64 / peak as f64;
    let first_minute = (data.start_ms / 60_000) as usize;
    let description = format!(
        "{} in {} minutes from {} UTC; at most {} in one minute.",
        data.total(),
        minutes,
        clock(data.start_ms),
        peak
    );
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title) {
                title { (title) }
                desc { (description) }
                line.axis x1=(LEFT) y1=(TOP + plot_height) x2=(WIDTH - RIGHT) y2=(TOP + plot_height) {}
                @for (value, label) in [(0, "0".to_owned()), (peak, peak.to_string())] {
                    text.tick x=(LEFT - 4.0) y=(y_of(value) + 4.0) text-anchor="end" { (label) }
                }
                @for minute in (0..minutes).filter(|m| (first_minute + m) % LABEL_EVERY == 0) {
                    text.tick x=(LEFT + bar * minute as f64) y=(HEIGHT - 6.0) {
                        (clock(data.start_ms + minute as u64 * 60_000))
                    }
                }
                @for (index, (_, counts)) in data.series.iter().enumerate() {
                    @for (minute, count) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
                        @let below: u64 = data.series[..index].iter().map(|(_, c)| c[minute]).sum();
                        rect class=(format!("s{}", index % COLOURS))
                            x=(format!("{:.2}", LEFT + bar * minute as f64))
                            y=(format!("{:.2}", y_of(below + count)))
                            width=(format!("{:.2}", (bar - 0.5).max(0.5)))
                            height=(format!("{:.2}", y_of(below) - y_of(below + count))) {}
                    }
                }
            }
            figcaption {
                (description)
                @if !data.series.is_empty() {
                    ul.legend {
                        @for (index, (label, counts)) in data.series.iter().enumerate() {
                            li {
                                svg.swatch viewBox="0 0 10 10" aria-hidden="true" {
                                    rect class=(format!("s{}", index % COLOURS)) width="10" height="10" {}
                                }
                                " " (label) ": " (counts.iter().sum::<u64>())
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `HH:MM` (UTC) of a Unix time in milliseconds.
fn clock(ms: u64) -> String {
    let minutes_of_day = ms / 60_000 % (24 * 60);
    format!("{:02}:{:02}", minutes_of_day / 60, minutes_of_day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_stacked_classed_and_described() {
        let now = 1_700_000_000_000;
        let mut data = PerMinute::ending_at(now);
        data.add("alerts", now, 2);
        data.add("<b>odd</b>", now, 1);
        let svg = stacked_bars("Events per minute", &data).into_string();
        assert_eq!(
            svg.matches("<rect class=\"s").count(),
            2 + 2,
            "two bars, two swatches"
        );
        assert!(svg.contains("role=\"img\""));
        assert!(svg.contains("3 in 180 minutes"), "{svg}");
        assert!(
            svg.contains("&lt;b&gt;odd&lt;/b&gt;: 1"),
            "labels are escaped"
        );
        assert!(!svg.contains("style="), "no inline style under the CSP");

        let empty = stacked_bars("Nothing", &PerMinute::ending_at(now)).into_string();
        assert!(!empty.contains("<rect"));
        assert!(empty.contains("0 in 180 minutes"), "{empty}");
    }

    #[test]
    fn clock_is_utc_hours_and_minutes() {
        assert_eq!(clock(0), "00:00");
        assert_eq!(clock((13 * 60 + 7) * 60_000 + 59_999), "13:07");
    }
}
