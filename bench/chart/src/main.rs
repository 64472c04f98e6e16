//! Draws the JSON lines of `bench/run.sh` (from `examples/etcd_bench.rs` and `bench/go`) as
//! SVG charts: for every etcd setup and client count of the contended runs, the cumulative
//! distribution of the handoff latency of each lock implementation, beside the setup's floor;
//! the same for the failover latency of the `failover` (leader election) runs.
//!
//! ```text
//! cargo run --release --manifest-path bench/chart/Cargo.toml -- --dir docs/bench RESULTS.jsonl…
//! ```
//!
//! Prints the path of every chart it wrote. Lines that are not contended runs with a
//! `handoff_us` distribution or failover runs with a `failover_us` one only contribute their
//! floor (mode `floor`) or are skipped.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use serde::Deserialize;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The part of a bench line the charts use.
#[derive(Deserialize)]
struct Run {
    #[serde(rename = "impl")]
    implementation: String,
    mode: String,
    clients: usize,
    p50_us: f64,
    #[serde(default)]
    setup: Option<String>,
    #[serde(default)]
    handoff_us: Option<Distribution>,
    /// `failover` runs: a leader's resign → the next campaign returning.
    #[serde(default)]
    failover_us: Option<Distribution>,
    /// `--probe-floor`: delete → event sampled while this run's clients contended.
    #[serde(default)]
    loaded_floor_p50_us: Option<f64>,
}

/// A latency distribution in µs, as the bench programs print it.
#[derive(Deserialize)]
struct Distribution {
    n: usize,
    min: f64,
    p1: f64,
    p5: f64,
    p10: f64,
    p20: f64,
    p30: f64,
    p40: f64,
    p50: f64,
    p60: f64,
    p70: f64,
    p80: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    #[serde(rename = "p99.9")]
    p99_9: f64,
    max: f64,
}

impl Distribution {
    /// The cumulative curve: (latency in ms, % of samples at or below it).
    fn curve(&self) -> Vec<(f64, f64)> {
        [
            (self.min, 0.0),
            (self.p1, 1.0),
            (self.p5, 5.0),
            (self.p10, 10.0),
            (self.p20, 20.0),
            (self.p30, 30.0),
            (self.p40, 40.0),
            (self.p50, 50.0),
            (self.p60, 60.0),
            (self.p70, 70.0),
            (self.p80, 80.0),
            (self.p90, 90.0),
            (self.p95, 95.0),
            (self.p99, 99.0),
            (self.p99_9, 99.9),
            (self.max, 100.0),
        ]
        .into_iter()
        .map(|(us, percent)| (us.max(1.0) / 1000.0, percent))
        .collect()
    }
}

/// The setup a line names; lines from before `--setup` existed share one.
fn setup_of(run: &Run) -> String {
    run.setup.clone().unwrap_or_else(|| "etcd".to_owned())
}

/// The implementations in the order they are drawn, with their colours.
const IMPLS: [(&str, RGBColor); 3] = [
    ("locksmith", RGBColor(0xd9, 0x4f, 0x00)),
    ("v3lock", RGBColor(0x1f, 0x77, 0xb4)),
    ("go-concurrency", RGBColor(0x2c, 0xa0, 0x2c)),
];

/// What a chart draws.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Contended lock runs: the handoff.
    Handoff,
    /// Leader-election runs: the failover.
    Failover,
}

impl Kind {
    /// The mode whose lines this kind draws.
    fn mode(self) -> &'static str {
        match self {
            Kind::Handoff => "contended",
            Kind::Failover => "failover",
        }
    }

    /// The distribution this kind draws from a line.
    fn of(self, run: &Run) -> Option<&Distribution> {
        match self {
            Kind::Handoff => run.handoff_us.as_ref(),
            Kind::Failover => run.failover_us.as_ref(),
        }
    }

    fn file_prefix(self) -> &'static str {
        match self {
            Kind::Handoff => "handoff",
            Kind::Failover => "failover",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::Handoff => "Contended handoff latency",
            Kind::Failover => "Leader failover latency",
        }
    }

    fn x_desc(self) -> &'static str {
        match self {
            Kind::Handoff => {
                "handoff: holder starts unlock → next holder's lock returns (ms, log scale)"
            }
            Kind::Failover => {
                "failover: leader starts resign → next campaign returns (ms, log scale)"
            }
        }
    }

    /// The samples (plural) and one cycle of a client, for the legend.
    fn nouns(self) -> (&'static str, &'static str) {
        match self {
            Kind::Handoff => ("handoffs", "lock+unlock"),
            Kind::Failover => ("failovers", "campaign+resign"),
        }
    }
}

/// One chart: the contended (or failover) runs of one setup at one client count.
struct Chart<'a> {
    kind: Kind,
    setup: &'a str,
    clients: usize,
    /// Floor p50 of the same setup, in µs, if the file has it.
    floor_us: Option<f64>,
    runs: Vec<&'a Run>,
}

impl Chart<'_> {
    fn file_name(&self) -> String {
        let slug: String = self
            .setup
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let slug = slug
            .split('-')
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        format!(
            "{}-{slug}-{}-clients.svg",
            self.kind.file_prefix(),
            self.clients
        )
    }

    fn draw(&self, path: &Path) -> Result<()> {
        let curves: Vec<(&Run, Vec<(f64, f64)>)> = self
            .runs
            .iter()
            .filter_map(|run| Some((*run, self.kind.of(run)?.curve())))
            .collect();
        let all = curves
            .iter()
            .flat_map(|(_, curve)| curve.iter().map(|p| p.0));
        let floor_ms = self.floor_us.map(|us| us / 1000.0);
        // The floor under locksmith's own load, sampled during its run.
        let loaded_ms = self
            .runs
            .iter()
            .find(|run| run.implementation == "locksmith")
            .and_then(|run| run.loaded_floor_p50_us)
            .map(|us| us / 1000.0);
        let (lo, hi) = all
            .chain(floor_ms)
            .chain(loaded_ms)
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
        // Whole decades, so that the log axis is labelled 0.1, 1, 10, 100 ms (the lower end a
        // hair below, or rounding in plotters' log axis leaves its label out).
        let (lo, hi) = (
            10f64.powf(lo.log10().floor()) * 0.999,
            10f64.powf(hi.log10().ceil()),
        );

        // (label, line style, dashed)
        let mut legend: Vec<(String, ShapeStyle, bool)> = Vec::new();
        let root = SVGBackend::new(path, (760, 562)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot_area, legend_area) = root.split_vertically(440);
        let title = format!(
            "{}, {} clients ({})",
            self.kind.title(),
            self.clients,
            self.setup
        );
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc(self.kind.x_desc())
            .y_desc(format!("% of {} at or below", self.kind.nouns().0))
            .x_label_formatter(&|ms| format_ms(*ms))
            .y_labels(11)
            .y_label_formatter(&|percent| format!("{percent:.0}"))
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .draw()?;

        // Vertical dashed markers: (at ms, style, dash and gap, label).
        let locksmith = IMPLS[0].1;
        let markers = [
            floor_ms.map(|floor| {
                let label = format!(
                    "floor p50 {} (delete → watch event, same setup)",
                    format_us(floor * 1000.0)
                );
                (floor, ShapeStyle::from(&BLACK.mix(0.6)), (6, 4), label)
            }),
            loaded_ms.map(|loaded| {
                let label = format!(
                    "floor p50 {} under locksmith's load (delete → event, sampled during its run)",
                    format_us(loaded * 1000.0)
                );
                (loaded, ShapeStyle::from(&locksmith.mix(0.8)), (3, 3), label)
            }),
        ];
        for (at, style, (dash, gap), label) in markers.into_iter().flatten() {
            let style = style.stroke_width(1);
            chart.draw_series(DashedLineSeries::new(
                [(at, 0.0), (at, 100.0)],
                dash,
                gap,
                style,
            ))?;
            legend.push((label, style, true));
        }
        for (name, colour) in IMPLS {
            for (run, curve) in curves.iter().filter(|(run, _)| run.implementation == name) {
                let Some(samples) = self.kind.of(run) else {
                    continue;
                };
                let style = colour.stroke_width(2);
                chart.draw_series(LineSeries::new(curve.iter().copied(), style))?;
                let (plural, cycle) = self.kind.nouns();
                let label = format!(
                    "{name}: p50 {}, p99 {}, {} {plural} ({:.0} ms p50 per {cycle})",
                    format_us(samples.p50),
                    format_us(samples.p99),
                    samples.n,
                    run.p50_us / 1000.0
                );
                legend.push((label, style, false));
            }
        }
        // The legend sits under the plot, where it hides no curve.
        for (row, (label, style, dashed)) in legend.into_iter().enumerate() {
            let y = 12 + 22 * row as i32;
            let segments: &[(i32, i32)] = if dashed {
                &[(70, 78), (82, 90), (94, 100)]
            } else {
                &[(70, 100)]
            };
            for &(from, to) in segments {
                legend_area.draw(&PathElement::new([(from, y), (to, y)], style))?;
            }
            legend_area.draw(&Text::new(
                label,
                (110, y - 7),
                ("sans-serif", 14).into_font(),
            ))?;
        }
        root.present()?;
        Ok(())
    }
}

fn format_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms}")
    } else {
        format!("{ms:.0}")
    }
}

fn format_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.0} ms", us / 1000.0)
    }
}

fn read_runs(paths: &[PathBuf]) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let run: Run = serde_json::from_str(line).map_err(|err| {
                format!("{}:{}: not a bench line: {err}", path.display(), number + 1)
            })?;
            runs.push(run);
        }
    }
    Ok(runs)
}

fn charts(runs: &[Run]) -> Vec<Chart<'_>> {
    let floors: BTreeMap<String, f64> = runs
        .iter()
        .filter(|run| run.mode == "floor")
        .map(|run| (setup_of(run), run.p50_us))
        .collect();
    let mut charts: BTreeMap<(Kind, String, usize), Vec<&Run>> = BTreeMap::new();
    for run in runs {
        for kind in [Kind::Handoff, Kind::Failover] {
            if run.mode == kind.mode() && kind.of(run).is_some() {
                charts
                    .entry((kind, setup_of(run), run.clients))
                    .or_default()
                    .push(run);
            }
        }
    }
    charts
        .into_iter()
        .map(|((kind, setup, clients), runs)| {
            let setup_ref = runs.first().and_then(|run| run.setup.as_deref());
            Chart {
                kind,
                setup: setup_ref.unwrap_or("etcd"),
                clients,
                floor_us: floors.get(&setup).copied(),
                runs,
            }
        })
        .collect()
}

fn main() -> Result<()> {
    let mut dir = PathBuf::from("docs/bench");
    let mut inputs = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--dir" {
            dir = args.next().ok_or("--dir needs a directory")?.into();
        } else {
            inputs.push(PathBuf::from(arg));
        }
    }
    if inputs.is_empty() {
        return Err("usage: bench-chart [--dir DIR] RESULTS.jsonl…".into());
    }
    let runs = read_runs(&inputs)?;
    let charts = charts(&runs);
    if charts.is_empty() {
        return Err(
            "no contended run with a handoff_us distribution (or failover run with a \
             failover_us one) in the input"
                .into(),
        );
    }
    std::fs::create_dir_all(&dir)
        .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    for chart in charts {
        let path = dir.join(chart.file_name());
        chart
            .draw(&path)
            .map_err(|err| format!("cannot draw {}: {err}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
