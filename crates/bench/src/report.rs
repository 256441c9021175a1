//! Benchmark reports: a human table on stdout and, on request, JSON in a file.

use serde::Serialize;
use std::path::Path;

/// One measured figure with its baseline from the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Target id in docs/DESIGN.md section 8 (P1, P2, ...).
    pub id: &'static str,
    pub metric: String,
    pub unit: &'static str,
    pub ferry: f64,
    pub baseline: f64,
    /// `ferry / baseline`.
    pub ratio: f64,
    /// The goal as written in docs/DESIGN.md section 8, e.g. "ratio <= 1.1".
    pub goal: &'static str,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub machine: String,
    pub parameters: serde_json::Value,
    pub figures: Vec<Figure>,
    /// Lines for the reader, printed under the table: what a baseline means, what went wrong.
    pub notes: Vec<String>,
    /// Every individual run, for readers who distrust medians.
    pub runs: serde_json::Value,
}

pub fn emit(report: &Report, json: Option<&Path>) -> anyhow::Result<()> {
    println!("scenario {}  ({})", report.scenario, report.machine);
    println!("parameters {}", report.parameters);
    let labels: Vec<String> = report
        .figures
        .iter()
        .map(|f| format!("{} ({})", f.metric, f.unit))
        .collect();
    let width = labels
        .iter()
        .map(String::len)
        .chain(["metric".len()])
        .max()
        .unwrap_or(0);
    let (id, metric, ferry, baseline, ratio, goal) =
        ("id", "metric", "ferry", "baseline", "ratio", "goal");
    println!("{id:<4} {metric:<width$} {ferry:>10} {baseline:>10} {ratio:>7}  {goal:<14} met");
    for (f, label) in report.figures.iter().zip(&labels) {
        // A count against a baseline of 0 has no ratio.
        let ratio = if f.ratio.is_finite() {
            format!("{:.3}", f.ratio)
        } else {
            "-".to_owned()
        };
        println!(
            "{:<4} {label:<width$} {:>10.3} {:>10.3} {ratio:>7}  {:<14} {}",
            f.id,
            f.ferry,
            f.baseline,
            f.goal,
            if f.met { "yes" } else { "NO" }
        );
    }
    let mut ids: Vec<&str> = report.figures.iter().map(|f| f.id).collect();
    ids.dedup();
    for id in ids {
        let of_id = || report.figures.iter().filter(|f| f.id == id);
        let met = of_id().all(|f| f.met);
        println!(
            "{id}: {} ({} of {} figures meet their goal)",
            if met { "met" } else { "NOT met" },
            of_id().filter(|f| f.met).count(),
            of_id().count()
        );
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

/// A one-line description of the machine: CPU model and count, memory.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    format!("{model}, {cores} cores, {} GiB", mem_kib / (1024 * 1024))
}

/// CPU seconds (user + system) a process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 12 and 13 after the name and state.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    /// Linux reports CPU time in USER_HZ ticks, 100 per second on every mainstream platform.
    const USER_HZ: f64 = 100.0;
    Ok(ticks as f64 / USER_HZ)
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
