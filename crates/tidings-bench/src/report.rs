//! Results: `results.json` (merged across invocations), `results.md` with
//! every target in its own column (and fan-out p99 as a multiple of the
//! floor's), and SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::client::Proto;

/// One step of a scenario (one N for idle, one rate for max).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Step {
    pub connections: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_conn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pongs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publishes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_max_lag_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_cpu_pct: Option<f64>,
    /// CPU used by other processes on the machine during the measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gaps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dups: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reordered: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sustained: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Step {
    pub fn summary(&self) -> String {
        format!(
            "{:.0} deliveries/s, p50 {} p90 {} p99 {} p99.9 {} max {} ms, lost {}, late {}, gaps {}, disconnects {}, server CPU {}, generator CPU {}, others {}",
            self.deliveries_per_s.unwrap_or(0.0),
            f2(self.p50_ms),
            f2(self.p90_ms),
            f2(self.p99_ms),
            f2(self.p999_ms),
            f2(self.max_ms),
            self.lost.unwrap_or(0),
            self.late.unwrap_or(0),
            self.gaps.unwrap_or(0),
            self.disconnects.unwrap_or(0),
            self.server_cpu_pct.map(|c| format!("{c:.0}%")).unwrap_or_else(|| "?".into()),
            self.generator_cpu_pct.map(|c| format!("{c:.0}%")).unwrap_or_else(|| "?".into()),
            self.other_cpu_pct.map(|c| format!("{c:.0}%")).unwrap_or_else(|| "?".into()),
        )
    }
}

/// The end of an idle hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Held {
    pub secs: f64,
    pub connections: u64,
    pub disconnects: u64,
    pub pongs: u64,
    pub rss: Option<u64>,
}

/// One scenario against one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Run {
    pub scenario: String,
    pub target: Proto,
    pub date: String,
    pub command: String,
    pub pinned: bool,
    pub fd_limit: u64,
    pub params: serde_json::Value,
    pub rss_idle_server: Option<u64>,
    pub generator_rss: Option<u64>,
    pub steps: Vec<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sustained: Option<f64>,
    /// The `history` scenario's measurements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::history::HistoryResult>,
}

impl Default for Run {
    fn default() -> Self {
        Run::new("", Proto::Tidings)
    }
}

impl Run {
    pub fn new(scenario: &str, target: Proto) -> Self {
        Self {
            scenario: scenario.to_owned(),
            target,
            date: now_utc(),
            command: String::new(),
            pinned: false,
            fd_limit: 0,
            params: serde_json::Value::Null,
            rss_idle_server: None,
            generator_rss: None,
            steps: Vec::new(),
            held: None,
            max_sustained: None,
            history: None,
        }
    }

    /// What makes a smoke run fail.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(step) = self.steps.last() else {
            return vec!["no result".into()];
        };
        if step.connect_errors.unwrap_or(0) > 0 {
            out.push(format!(
                "{} connections failed",
                step.connect_errors.unwrap_or(0)
            ));
        }
        if step.received.unwrap_or(0) == 0 {
            out.push("nothing delivered".into());
        }
        for (what, v) in [
            ("lost", step.lost),
            ("gaps", step.gaps),
            ("dups", step.dups),
            ("disconnects", step.disconnects),
            ("publish errors", step.publish_errors),
        ] {
            if v.unwrap_or(0) > 0 {
                out.push(format!("{what}: {}", v.unwrap_or(0)));
            }
        }
        if !out.is_empty() {
            out.extend(step.errors.iter().cloned());
        }
        out
    }

    pub fn ok(&self) -> bool {
        self.problems().is_empty()
    }
}

pub(crate) fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn f2(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into())
}

fn f0(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
}

fn u(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "–".into())
}

fn kib(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}", v / 1024.0))
        .unwrap_or_else(|| "–".into())
}

fn mib(v: Option<u64>) -> String {
    v.map(|v| format!("{:.1}", v as f64 / 1048576.0))
        .unwrap_or_else(|| "–".into())
}

pub fn load(out: &Path) -> Result<Vec<Run>> {
    let path = out.join("results.json");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path)?;
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    let runs = doc
        .get("runs")
        .cloned()
        .unwrap_or(serde_json::Value::Array(vec![]));
    serde_json::from_value(runs).context("reading runs from results.json")
}

pub(crate) fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "cpu": model,
        // Online cores of the machine (not this process's affinity mask).
        // SAFETY: sysconf has no preconditions.
        "cores": unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
        "memory_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": kernel.trim(),
    })
}

pub fn write(out: &Path, runs: &[Run]) -> Result<()> {
    let doc = serde_json::json!({ "machine": machine(), "generated": now_utc(), "runs": runs });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(out.join("results.md"), markdown(runs, &doc["machine"]))?;
    for (name, svg) in charts(runs) {
        std::fs::write(out.join(name), svg)?;
    }
    Ok(())
}

fn find<'a>(runs: &'a [Run], scenario: &str, target: Proto) -> Option<&'a Run> {
    runs.iter()
        .find(|r| r.scenario == scenario && r.target == target)
}

/// Every target, in the order of the report's columns.
const ORDER: [Proto; 6] = [
    Proto::Tidings,
    Proto::TidingsSocketio,
    Proto::Centrifugo,
    Proto::Socketio,
    Proto::FloorWrite,
    Proto::FloorBatched,
];

fn markdown(runs: &[Run], machine: &serde_json::Value) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# tidings-bench results\n");
    let _ = writeln!(
        md,
        "Machine: {} ({} cores, {} GiB, Linux {}). One column per target; \
         floor-write and floor-batched are the kernel floor (one pre-built frame \
         written to every socket, no server logic), and `p99 × floor` divides a \
         server's p99 by the floor's in the same results.\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or("?")
    );
    for scenario in ["idle", "fanout", "channels", "max", "smoke", "history"] {
        let present: Vec<&Run> = ORDER
            .iter()
            .filter_map(|&p| find(runs, scenario, p))
            .collect();
        if present.is_empty() {
            continue;
        }
        let _ = writeln!(md, "## {scenario}\n");
        for r in &present {
            let _ = writeln!(md, "- {}: {} — `{}`", r.target.label(), r.date, r.command);
        }
        let _ = writeln!(md);
        match scenario {
            "idle" => idle_table(&mut md, &present),
            "max" => max_tables(&mut md, &present),
            "history" => {
                if let Some(h) =
                    find(runs, scenario, Proto::Tidings).and_then(|r| r.history.as_ref())
                {
                    crate::history::markdown(&mut md, h);
                }
            }
            _ => steady_table(&mut md, &present),
        }
    }
    md
}

/// `| a | b | c |` from cells.
fn table_row(md: &mut String, name: &str, cells: impl IntoIterator<Item = String>) {
    let cells: Vec<String> = cells.into_iter().collect();
    let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
}

fn table_head(md: &mut String, first: &str, runs: &[&Run]) {
    table_row(md, first, runs.iter().map(|r| r.target.label().to_owned()));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(runs.len()));
}

fn idle_table(md: &mut String, runs: &[&Run]) {
    let steps = runs.iter().map(|r| r.steps.len()).max().unwrap_or(0);
    for (title, f) in [
        (
            "server RSS per connection, KiB",
            (|x: &Step| kib(x.rss_per_conn)) as fn(&Step) -> String,
        ),
        ("server RSS, MiB", |x: &Step| mib(x.rss)),
        ("connections set up per second", |x: &Step| {
            f0(x.connect_rate)
        }),
        ("answered an application ping", |x: &Step| u(x.pongs)),
    ] {
        let _ = writeln!(md, "{title}:\n");
        table_head(md, "connections", runs);
        for i in 0..steps {
            let n = runs
                .iter()
                .find_map(|r| r.steps.get(i))
                .map(|x| x.connections)
                .unwrap_or(0);
            table_row(
                md,
                &n.to_string(),
                runs.iter().map(|r| match r.steps.get(i) {
                    Some(st) if st.connections == n => f(st),
                    Some(st) => format!("{} ({} conns)", f(st), st.connections),
                    None => "–".into(),
                }),
            );
        }
        let _ = writeln!(md);
    }
    for r in runs {
        if let Some(h) = &r.held {
            let _ = writeln!(
                md,
                "{} after holding {} connections for {:.0} s: {} answered a ping, {} disconnected, RSS {} MiB.\n",
                r.target.label(),
                h.connections,
                h.secs,
                h.pongs,
                h.disconnects,
                mib(h.rss)
            );
        }
    }
    let baselines: Vec<String> = runs
        .iter()
        .map(|r| format!("{} {} MiB", r.target.label(), mib(r.rss_idle_server)))
        .collect();
    let _ = writeln!(
        md,
        "Baseline RSS before connecting: {}.\n",
        baselines.join(", ")
    );
}

/// `p99 / floor p99`, e.g. `1.46×`.
fn times(p99: Option<f64>, floor: Option<f64>) -> String {
    match (p99, floor) {
        (Some(p), Some(f)) if f > 0.0 => format!("{:.2}×", p / f),
        _ => "–".into(),
    }
}

fn steady_table(md: &mut String, runs: &[&Run]) {
    let last: Vec<Option<&Step>> = runs.iter().map(|r| r.steps.last()).collect();
    table_head(md, "", runs);
    let row_f = |md: &mut String, name: &str, f: &dyn Fn(&Step) -> String| {
        table_row(
            md,
            name,
            last.iter()
                .map(|st| st.map(f).unwrap_or_else(|| "–".into())),
        );
    };
    row_f(md, "connections", &|x| x.connections.to_string());
    row_f(md, "offered deliveries/s", &|x| f0(x.offered_rate));
    row_f(md, "publishes/s (HTTP)", &|x| f2(x.publish_rate));
    row_f(md, "**deliveries/s**", &|x| f0(x.deliveries_per_s));
    row_f(md, "latency p50 ms", &|x| f2(x.p50_ms));
    row_f(md, "latency p90 ms", &|x| f2(x.p90_ms));
    row_f(md, "**latency p99 ms**", &|x| f2(x.p99_ms));
    for floor in [Proto::FloorWrite, Proto::FloorBatched] {
        let floor_p99 = runs
            .iter()
            .zip(&last)
            .find(|(r, _)| r.target == floor)
            .and_then(|(_, st)| st.and_then(|x| x.p99_ms));
        if floor_p99.is_some() {
            row_f(md, &format!("**p99 × {}**", floor.label()), &|x| {
                times(x.p99_ms, floor_p99)
            });
        }
    }
    row_f(md, "latency p99.9 ms", &|x| f2(x.p999_ms));
    row_f(md, "latency max ms", &|x| f2(x.max_ms));
    row_f(md, "server CPU %", &|x| f0(x.server_cpu_pct));
    row_f(md, "generator CPU %", &|x| f0(x.generator_cpu_pct));
    row_f(md, "other processes' CPU %", &|x| f0(x.other_cpu_pct));
    row_f(md, "server RSS MiB (connected)", &|x| mib(x.rss));
    row_f(md, "expected / received", &|x| {
        format!("{} / {}", u(x.expected), u(x.received))
    });
    row_f(md, "lost", &|x| u(x.lost));
    row_f(md, "late (> late-ms)", &|x| u(x.late));
    row_f(md, "sequence gaps", &|x| u(x.gaps));
    row_f(md, "reordered (publishes overtaking)", &|x| u(x.reordered));
    row_f(md, "disconnects", &|x| u(x.disconnects));
    row_f(md, "publish errors", &|x| u(x.publish_errors));
    let _ = writeln!(md);
}

fn max_tables(md: &mut String, runs: &[&Run]) {
    table_head(md, "", runs);
    table_row(
        md,
        "**highest sustained deliveries/s**",
        runs.iter().map(|r| f0(r.max_sustained)),
    );
    let _ = writeln!(md);
    if let Some(first) = runs.first() {
        if let Some(bound) = first.params.get("p99_bound_ms").and_then(|v| v.as_f64()) {
            let _ = writeln!(
                md,
                "A step is sustained when p99 ≤ {bound} ms, nothing is lost, no connection drops and ≥ 95% of the offered rate is delivered. Subscribers: {}.\n",
                first.params.get("connections").map(|v| v.to_string()).unwrap_or_default()
            );
        }
    }
    for r in runs {
        let _ = writeln!(md, "{}:\n", r.target.label());
        let _ = writeln!(md, "| offered/s | delivered/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lost | server CPU % | generator CPU % | others CPU % | sustained |");
        let _ = writeln!(
            md,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"
        );
        for st in &r.steps {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f0(st.offered_rate),
                f0(st.deliveries_per_s),
                f2(st.p50_ms),
                f2(st.p90_ms),
                f2(st.p99_ms),
                f2(st.p999_ms),
                f2(st.max_ms),
                u(st.lost),
                f0(st.server_cpu_pct),
                f0(st.generator_cpu_pct),
                f0(st.other_cpu_pct),
                if st.sustained == Some(true) {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
        let _ = writeln!(md);
    }
}

// ---------------------------------------------------------------- charts

struct Series {
    name: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

const TIDINGS: &str = "#1f77b4";
const SOCKETIO: &str = "#d62728";
const TIDINGS_SOCKETIO: &str = "#2ca02c";
const CENTRIFUGO: &str = "#9467bd";
const FLOOR: &str = "#7f7f7f";

fn color(p: Proto) -> &'static str {
    match p {
        Proto::Tidings => TIDINGS,
        Proto::Socketio => SOCKETIO,
        Proto::TidingsSocketio => TIDINGS_SOCKETIO,
        Proto::Centrifugo => CENTRIFUGO,
        Proto::FloorWrite | Proto::FloorBatched => FLOOR,
    }
}

fn charts(runs: &[Run]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    // Latency percentiles against offered rate (max scenario).
    let mut lat = Vec::new();
    for p in ORDER {
        if let Some(r) = find(runs, "max", p) {
            for (q, dashed, f) in [
                (
                    "p50",
                    true,
                    (|s: &Step| s.p50_ms) as fn(&Step) -> Option<f64>,
                ),
                ("p99", false, |s: &Step| s.p99_ms),
            ] {
                lat.push(Series {
                    name: format!("{} {q}", p.label()),
                    color: color(p),
                    dashed,
                    points: r
                        .steps
                        .iter()
                        .filter_map(|s| Some((s.offered_rate?, f(s)?)))
                        .collect(),
                });
            }
        }
    }
    if !lat.is_empty() {
        out.push((
            "latency-vs-rate.svg",
            line_chart(
                "Delivery latency against offered rate (max scenario)",
                "offered deliveries/s",
                "latency ms (log)",
                &lat,
                true,
            ),
        ));
    }
    // RSS against connections (idle scenario).
    let mut rss = Vec::new();
    for p in ORDER {
        if let Some(r) = find(runs, "idle", p) {
            let mut points = vec![(0.0, r.rss_idle_server.unwrap_or(0) as f64 / 1048576.0)];
            points.extend(
                r.steps
                    .iter()
                    .filter_map(|s| Some((s.connections as f64, s.rss? as f64 / 1048576.0))),
            );
            rss.push(Series {
                name: format!("{} RSS", p.label()),
                color: color(p),
                dashed: false,
                points,
            });
        }
    }
    if !rss.is_empty() {
        out.push((
            "rss-vs-connections.svg",
            line_chart(
                "Server RSS against idle connections",
                "connections",
                "RSS MiB",
                &rss,
                false,
            ),
        ));
    }
    out
}

fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + 1e-9 && out.len() < 50 {
        out.push(v);
        v += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], log_y: bool) -> String {
    let (w, h) = (720.0, 420.0);
    let (ml, mr, mt, mb) = (70.0, 180.0, 40.0, 50.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let xmax = all.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let xmin = 0.0;
    let (ymin, ymax) = if log_y {
        let lo = all
            .iter()
            .map(|p| p.1)
            .filter(|v| *v > 0.0)
            .fold(f64::MAX, f64::min);
        let hi = all.iter().map(|p| p.1).fold(0.0, f64::max);
        let lo = if lo == f64::MAX { 0.1 } else { lo };
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.max(lo * 10.0).log10().ceil()),
        )
    } else {
        (
            0.0,
            all.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1,
        )
    };
    let sx = |x: f64| ml + (x - xmin) / (xmax - xmin) * pw;
    let sy = |y: f64| {
        if log_y {
            let y = y.max(ymin);
            mt + ph - (y.log10() - ymin.log10()) / (ymax.log10() - ymin.log10()) * ph
        } else {
            mt + ph - (y - ymin) / (ymax - ymin) * ph
        }
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        ml + pw / 2.0,
        esc(title)
    );
    // Grid and ticks.
    for x in nice_ticks(xmin, xmax, 6) {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{mt}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/>"##,
            mt + ph
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            mt + ph + 16.0,
            fmt_tick(x)
        );
    }
    let yticks: Vec<f64> = if log_y {
        let mut v = ymin;
        let mut out = Vec::new();
        while v <= ymax * 1.001 && out.len() < 12 {
            out.push(v);
            v *= 10.0;
        }
        out
    } else {
        nice_ticks(ymin, ymax, 6)
    };
    for y in yticks {
        let py = sy(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{ml}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/>"##,
            ml + pw
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            ml - 6.0,
            py + 4.0,
            fmt_tick(y)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        ml + pw / 2.0,
        h - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            pts.join(" "),
            s.color
        );
        for (x, y) in &s.points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                sx(*x),
                sy(*y),
                s.color
            );
        }
        let ly = mt + 10.0 + i as f64 * 20.0;
        let lx = ml + pw + 15.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 25.0,
            s.color,
            lx + 30.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
