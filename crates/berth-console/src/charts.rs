//! Line charts as inline SVG, drawn on the server from the stats history: one measure per
//! chart over a chosen range (15 min to 24 h), the time axis starting at the first sample so
//! the line fills the width, the value axis at a round top with labels that differ, points
//! marked with shapes that name their time and value on hover, so a chart reads without
//! colour; each carries a text summary (latest, highest) for screen readers.

use std::fmt::Write;

use berth_store::stats_history::StatsSample;

use super::human_bytes;
use super::text::Tr;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 26.0;
/// At most this many points are marked (evenly chosen), each naming its time and value.
const MARKED_POINTS: usize = 90;

/// The time ranges a chart can show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChartRange {
    /// The last 15 minutes.
    Quarter,
    /// The last hour.
    #[default]
    Hour,
    /// The last 6 hours.
    SixHours,
    /// The last 24 hours.
    Day,
}

impl ChartRange {
    /// Every range, shortest first.
    pub const ALL: [ChartRange; 4] = [Self::Quarter, Self::Hour, Self::SixHours, Self::Day];

    /// The range a query value names (`15m`, `1h`, `6h`, `24h`); the hour otherwise.
    pub fn parse(code: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|range| range.code() == code)
            .unwrap_or_default()
    }

    /// Its query value.
    pub fn code(self) -> &'static str {
        match self {
            Self::Quarter => "15m",
            Self::Hour => "1h",
            Self::SixHours => "6h",
            Self::Day => "24h",
        }
    }

    /// Its length, milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Self::Quarter => 15 * 60_000,
            Self::Hour => 3_600_000,
            Self::SixHours => 6 * 3_600_000,
            Self::Day => 24 * 3_600_000,
        }
    }
}

/// One drawn chart.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The measure's name.
    pub title: &'static str,
    /// `latest … · highest …`, or that there is no data.
    pub summary: String,
    /// The SVG element.
    pub svg: String,
}

/// How a measure's values read.
#[derive(Debug, Clone, Copy)]
enum Unit {
    Percent,
    Bytes,
    Count,
}

impl Unit {
    fn format(self, value: f64) -> String {
        match self {
            Unit::Percent => format!("{value:.1} %"),
            Unit::Bytes => human_bytes(value.round() as i64),
            Unit::Count => format!("{value:.0}"),
        }
    }

    /// `values` as axis labels that differ from each other: as many decimals as that takes.
    fn labels(self, values: &[f64]) -> Vec<String> {
        let largest = values.iter().copied().fold(0.0, f64::max);
        let (divisor, suffix) = match self {
            Unit::Percent => (1.0, " %"),
            Unit::Count => (1.0, ""),
            Unit::Bytes => {
                let units = [
                    (1u64 << 40, " TiB"),
                    (1 << 30, " GiB"),
                    (1 << 20, " MiB"),
                    (1 << 10, " KiB"),
                ];
                units
                    .iter()
                    .find(|(size, _)| largest >= *size as f64)
                    .map_or((1.0, " B"), |(size, suffix)| (*size as f64, *suffix))
            }
        };
        (0..=4)
            .map(|decimals| {
                values
                    .iter()
                    .map(|value| format!("{:.decimals$}{suffix}", value / divisor))
                    .collect::<Vec<_>>()
            })
            .find(|labels| {
                let mut distinct = labels.clone();
                distinct.dedup();
                distinct.len() == labels.len()
            })
            .unwrap_or_else(|| values.iter().map(|value| self.format(*value)).collect())
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Hours and minutes (UTC) of Unix milliseconds.
fn clock(ms: i64) -> String {
    let minutes = ms.div_euclid(60_000);
    format!(
        "{:02}:{:02}",
        minutes.div_euclid(60).rem_euclid(24),
        minutes.rem_euclid(60)
    )
}

/// A round top for the y axis at or above `max`.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|top| *top >= max)
        .unwrap_or(10.0 * magnitude)
}

fn draw(
    t: Tr,
    title: &'static str,
    unit: Unit,
    points: &[(i64, f64)],
    from_ms: i64,
    to_ms: i64,
) -> Chart {
    let mut svg = String::new();
    let label = match points.last() {
        Some((_, latest)) => {
            let highest = points.iter().map(|(_, value)| *value).fold(0.0, f64::max);
            format!(
                "{}: {} {} · {} {}",
                title,
                t.get("chart.latest"),
                unit.format(*latest),
                t.get("chart.highest"),
                unit.format(highest)
            )
        }
        None => format!("{title}: {}", t.get("chart.no_data")),
    };
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(&label)
    );
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let top = nice_ceiling(points.iter().map(|(_, value)| *value).fold(0.0, f64::max));
    // The line fills the width: the axis starts at the first sample within the range.
    let from_ms = points
        .first()
        .map_or(from_ms, |(first, _)| (*first).max(from_ms))
        .min(to_ms - 60_000);
    let span = (to_ms - from_ms).max(1) as f64;
    let x = |at: i64| LEFT + (at - from_ms).max(0) as f64 / span * plot_width;
    let y = |value: f64| TOP + plot_height - (value / top).clamp(0.0, 1.0) * plot_height;
    let steps: Vec<f64> = (0..=4).map(|step| top * f64::from(step) / 4.0).collect();
    for (value, text) in steps.iter().zip(unit.labels(&steps)) {
        let line_y = y(*value);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" y1="{line_y:.1}" x2="{:.1}" y2="{line_y:.1}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            line_y + 4.0,
            escape(&text)
        );
    }
    let _ = write!(
        svg,
        r#"<text class="axis" x="{LEFT}" y="{:.1}">{}</text><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{} UTC</text>"#,
        HEIGHT - 6.0,
        clock(from_ms),
        WIDTH - RIGHT,
        HEIGHT - 6.0,
        clock(to_ms)
    );
    if !points.is_empty() {
        let path: Vec<String> = points
            .iter()
            .map(|(at, value)| format!("{:.1},{:.1}", x(*at), y(*value)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="series" fill="none" points="{}"/>"#,
            path.join(" ")
        );
        let every = points.len().div_ceil(MARKED_POINTS).max(1);
        for (at, value) in points.iter().step_by(every) {
            let _ = write!(
                svg,
                r#"<rect class="point" x="{:.1}" y="{:.1}" width="5" height="5"><title>{} {}</title></rect>"#,
                x(*at) - 2.5,
                y(*value) - 2.5,
                clock(*at),
                escape(&unit.format(*value))
            );
        }
    } else {
        let _ = write!(
            svg,
            r#"<text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_width / 2.0,
            TOP + plot_height / 2.0,
            escape(t.get("chart.no_data"))
        );
    }
    svg.push_str("</svg>");
    Chart {
        title,
        summary: label,
        svg,
    }
}

/// The charts of a service over `from_ms..to_ms`: CPU, memory, GPU memory and GPU utilization
/// (the GPU ones say when the node reports no GPU figures), and the tokens its answers used
/// through the OpenAI-compatible front when it answered any.
pub fn service_charts(t: Tr, samples: &[StatsSample], from_ms: i64, to_ms: i64) -> Vec<Chart> {
    let series = |value: &dyn Fn(&StatsSample) -> Option<f64>| -> Vec<(i64, f64)> {
        samples
            .iter()
            .filter_map(|sample| value(sample).map(|value| (sample.at_ms, value)))
            .collect()
    };
    let mut charts = vec![
        draw(
            t,
            t.get("chart.cpu"),
            Unit::Percent,
            &series(&|sample| Some(sample.cpu_percent)),
            from_ms,
            to_ms,
        ),
        draw(
            t,
            t.get("chart.memory"),
            Unit::Bytes,
            &series(&|sample| Some(sample.memory_bytes as f64)),
            from_ms,
            to_ms,
        ),
        draw(
            t,
            t.get("chart.gpu_memory"),
            Unit::Bytes,
            &series(&|sample| sample.gpu_memory_bytes.map(|bytes| bytes as f64)),
            from_ms,
            to_ms,
        ),
        draw(
            t,
            t.get("chart.gpu_utilization"),
            Unit::Percent,
            &series(&|sample| sample.gpu_utilization_percent.map(|percent| percent as f64)),
            from_ms,
            to_ms,
        ),
    ];
    if samples
        .iter()
        .any(|sample| sample.prompt_tokens + sample.completion_tokens > 0)
    {
        charts.push(draw(
            t,
            t.get("chart.tokens"),
            Unit::Count,
            &series(&|sample| Some((sample.prompt_tokens + sample.completion_tokens) as f64)),
            from_ms,
            to_ms,
        ));
    }
    charts
}

/// The chart range a page's query asks for (`?range=15m|1h|6h|24h`; an hour otherwise).
pub fn chart_range(raw: Option<String>) -> ChartRange {
    let query = super::forms::FormData::parse(raw.unwrap_or_default().as_bytes());
    ChartRange::parse(&query.get("range"))
}

/// A node's samples from its services' samples: each service's share of CPU, memory and GPU
/// memory (its replicas on the node over all its replicas) summed per `step_ms`; GPU
/// utilization is the highest (services on one GPU report the same device).
pub fn node_samples(services: &[(f64, Vec<StatsSample>)], step_ms: i64) -> Vec<StatsSample> {
    let step = step_ms.max(1);
    let mut buckets: std::collections::BTreeMap<i64, StatsSample> =
        std::collections::BTreeMap::new();
    for (share, samples) in services {
        for sample in samples {
            let at = sample.at_ms.div_euclid(step.max(sample.resolution_ms))
                * step.max(sample.resolution_ms);
            let total = buckets
                .entry(at)
                .or_insert_with(|| StatsSample::zero(at, sample.resolution_ms));
            let part = |value: i64| (value as f64 * share).round() as i64;
            total.cpu_percent += sample.cpu_percent * share;
            total.memory_bytes += part(sample.memory_bytes);
            total.memory_limit_bytes += part(sample.memory_limit_bytes);
            total.pids += part(sample.pids);
            if let Some(bytes) = sample.gpu_memory_bytes {
                *total.gpu_memory_bytes.get_or_insert(0) += part(bytes);
            }
            if let Some(percent) = sample.gpu_utilization_percent {
                let highest = total.gpu_utilization_percent.get_or_insert(0);
                *highest = (*highest).max(percent);
            }
        }
    }
    buckets.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64, cpu: f64) -> StatsSample {
        StatsSample {
            at_ms,
            resolution_ms: 0,
            cpu_percent: cpu,
            memory_bytes: 1 << 20,
            memory_limit_bytes: 1 << 30,
            pids: 1,
            gpu_memory_bytes: None,
            gpu_utilization_percent: None,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    #[test]
    fn charts_plot_every_point_inside_the_frame_and_say_what_they_show() {
        let samples = [sample(0, 10.0), sample(30_000, 80.0), sample(60_000, 40.0)];
        let charts = service_charts(Tr::default(), &samples, 0, 60_000);
        assert_eq!(charts.len(), 4);
        let cpu = &charts[0];
        assert_eq!(cpu.svg.matches("<rect class=\"point\"").count(), 3);
        assert!(
            cpu.summary.contains("40.0 %") && cpu.summary.contains("80.0 %"),
            "{}",
            cpu.summary
        );
        assert!(
            cpu.svg.contains(">100 %<"),
            "the axis tops at a round 100: {}",
            cpu.svg
        );
        let points = cpu
            .svg
            .split("points=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("polyline");
        for pair in points.split(' ') {
            let (x, y) = pair.split_once(',').expect("x,y");
            let (x, y): (f64, f64) = (x.parse().expect("x"), y.parse().expect("y"));
            assert!((LEFT..=WIDTH - RIGHT).contains(&x) && (TOP..=HEIGHT - BOTTOM).contains(&y));
        }
        assert!(charts[1].summary.contains("1.0 MiB"));
        let mut answered = samples.clone();
        answered[1].prompt_tokens = 1200;
        answered[1].completion_tokens = 34;
        let with_tokens = service_charts(Tr::default(), &answered, 0, 60_000);
        assert_eq!(
            with_tokens.len(),
            5,
            "a tokens chart once tokens were answered"
        );
        assert!(
            with_tokens[4].summary.contains("1234"),
            "{}",
            with_tokens[4].summary
        );
        assert!(
            !charts[2].svg.contains("polyline"),
            "no GPU figures, no line"
        );
        assert!(
            charts[2]
                .summary
                .contains(Tr::default().get("chart.no_data"))
        );
        // Small values: the axis labels differ from each other.
        let quiet = [sample(0, 0.1), sample(60_000, 0.2)];
        let small = &service_charts(Tr::default(), &quiet, 0, 60_000)[0];
        let labels: Vec<&str> = small
            .svg
            .split("text-anchor=\"end\">")
            .skip(1)
            .filter_map(|rest| rest.split('<').next())
            .filter(|label| label.ends_with('%'))
            .collect();
        let mut distinct = labels.clone();
        distinct.dedup();
        assert_eq!(labels.len(), 5, "{labels:?}");
        assert_eq!(distinct, labels, "{labels:?}");
        // A long series: at most MARKED_POINTS marked, each naming its value; a short history
        // on a long range fills the width from its first sample.
        let long: Vec<StatsSample> = (0..500).map(|i| sample(i * 10_000, 5.0)).collect();
        let busy = &service_charts(Tr::default(), &long, -86_400_000, 5_000_000)[0];
        let marked = busy.svg.matches("<rect class=\"point\"").count();
        assert!((1..=MARKED_POINTS).contains(&marked), "{marked}");
        assert!(busy.svg.contains("<title>00:00 5.0 %</title>"));
        let first_x: f64 = busy
            .svg
            .split("points=\"")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|x| x.parse().ok())
            .expect("first x");
        assert!(
            (first_x - LEFT).abs() < 0.5,
            "starts at the left edge: {first_x}"
        );
        // A node's samples: each service's share, summed per step; GPU use the highest.
        let mut gpu = sample(10_000, 50.0);
        gpu.gpu_memory_bytes = Some(4 << 30);
        gpu.gpu_utilization_percent = Some(70);
        let mut other = sample(10_004, 30.0);
        other.gpu_utilization_percent = Some(40);
        let node = node_samples(&[(1.0, vec![gpu]), (0.5, vec![other])], 10_000);
        assert_eq!(node.len(), 1, "{node:?}");
        assert_eq!(node[0].at_ms, 10_000);
        assert!((node[0].cpu_percent - 65.0).abs() < 1e-9, "{node:?}");
        assert_eq!(node[0].memory_bytes, (1 << 20) + (1 << 19));
        assert_eq!(node[0].gpu_memory_bytes, Some(4 << 30));
        assert_eq!(node[0].gpu_utilization_percent, Some(70));
        assert_eq!(ChartRange::parse("6h").millis(), 6 * 3_600_000);
        assert_eq!(ChartRange::parse("nonsense"), ChartRange::Hour);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2e9), 5e9);
        assert_eq!(escape("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
        assert_eq!(clock(3_600_000 * 25 + 60_000 * 7), "01:07");
    }
}
