//! The alert rules of `deploy/prometheus/alerts.yml` judged by Prometheus's own `promtool`
//! against real scrapes: each node's `GET /metrics` text becomes `input_series` held constant
//! (as if every scrape for the last quarter hour had returned it), and the test states which
//! alerts fire, with which labels, at a given evaluation time.
//!
//! promtool compares annotations as strictly as labels, and the annotations are prose meant
//! for humans, so the rules are tested from a copy without them; `promtool check rules` (in
//! `.ci/run`) checks that their templates parse.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The alert rules under test.
pub const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");

/// Longest one `promtool test rules` run may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Scrape and evaluation interval of the generated test.
const INTERVAL: &str = "15s";

/// Samples of each input series after the first: 60 intervals of 15 s, a quarter hour, which
/// covers the longest `for:` of the rules (5 minutes) with room to spare.
const SAMPLES: u32 = 60;

/// What should fire for one alert at one time.
#[derive(Debug, Clone)]
pub struct Expect {
    pub alertname: String,
    /// As promtool writes durations: "2m", "10m".
    pub eval_time: String,
    /// The label set of each firing alert (`alertname` aside; include `severity`). Empty:
    /// the alert must not fire.
    pub alerts: Vec<BTreeMap<String, String>>,
}

/// `alertname` fires at `eval_time` exactly once per label set of `alerts` (none: silent).
pub fn expect(alertname: &str, eval_time: &str, alerts: &[&[(&str, &str)]]) -> Expect {
    Expect {
        alertname: alertname.to_owned(),
        eval_time: eval_time.to_owned(),
        alerts: alerts
            .iter()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            })
            .collect(),
    }
}

/// Expectations that no alert of the rules fires at `eval_time`.
pub fn expect_silence(eval_time: &str) -> Vec<Expect> {
    alert_names(&std::fs::read_to_string(RULES).expect("read the alert rules"))
        .iter()
        .map(|name| expect(name, eval_time, &[]))
        .collect()
}

/// Every alert name defined in a rules file (`- alert: NAME` lines).
pub fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().trim_matches(['"', '\'']).to_owned())
        .collect()
}

/// The samples of OpenMetrics/Prometheus text scrapes, as (series, value): comments (`# TYPE`,
/// `# HELP`, `# EOF`) and `_created` series dropped, timestamps and exemplars cut, non-finite
/// values dropped. A series seen twice keeps its last value.
pub fn samples(scrapes: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in scrapes.iter().flat_map(|s| s.lines()) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, rest)) = split_series(line) else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if name.ends_with("_created") {
            continue;
        }
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        match value.parse::<f64>() {
            Ok(v) if v.is_finite() => {
                out.insert(series.to_owned(), v);
            }
            _ => continue,
        }
    }
    out
}

/// Splits a sample line into its series (`name{labels}`) and the rest (value, timestamp,
/// exemplar), minding that quoted label values may hold spaces and braces.
fn split_series(line: &str) -> Option<(&str, &str)> {
    let open = line.find(['{', ' '])?;
    if line.as_bytes()[open] == b' ' {
        return Some((&line[..open], &line[open..]));
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line.char_indices().skip(open) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some((&line[..=i], &line[i + 1..])),
            _ => {}
        }
    }
    None
}

/// `rules` without the `annotations:` blocks (the key and every line indented under it).
pub fn without_annotations(rules: &str) -> String {
    let mut out = String::with_capacity(rules.len());
    let mut skipping_deeper_than: Option<usize> = None;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(depth) = skipping_deeper_than {
            if line.trim().is_empty() || indent > depth {
                continue;
            }
            skipping_deeper_than = None;
        }
        if line.trim() == "annotations:" {
            skipping_deeper_than = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A promtool unit-test file: `rule_file` evaluated over `samples` held constant, with
/// `expects` as its alert expectations. (Writing into a String cannot fail, hence the
/// ignored results.)
pub fn unit_test(rule_file: &Path, samples: &BTreeMap<String, f64>, expects: &[Expect]) -> String {
    let mut y = format!(
        "rule_files:\n  - {}\nevaluation_interval: {INTERVAL}\ntests:\n  - interval: {INTERVAL}\n    input_series:\n",
        quote(&rule_file.display().to_string())
    );
    for (series, value) in samples {
        let _ = writeln!(
            y,
            "      - series: {}\n        values: '{value}+0x{SAMPLES}'",
            quote(series)
        );
    }
    y.push_str("    alert_rule_test:\n");
    for e in expects {
        let _ = write!(
            y,
            "      - eval_time: {}\n        alertname: {}\n        exp_alerts:",
            e.eval_time,
            quote(&e.alertname)
        );
        if e.alerts.is_empty() {
            y.push_str(" []\n");
            continue;
        }
        y.push('\n');
        for labels in &e.alerts {
            y.push_str("          - exp_labels:\n");
            for (k, v) in labels {
                let _ = writeln!(y, "              {k}: {}", quote(v));
            }
        }
    }
    y
}

/// A YAML single-quoted scalar (no escapes but the doubled quote).
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs `promtool test rules` on [`RULES`] (without annotations) over `scrapes` with
/// `expects`, writing its files under `dir`. Ok(promtool's output) when every expectation
/// holds, Err(its output, or why it could not run) otherwise.
pub fn test_rules(scrapes: &[&str], expects: &[Expect], dir: &Path) -> Result<String, String> {
    let rules = std::fs::read_to_string(RULES).map_err(|e| format!("read {RULES}: {e}"))?;
    let rule_file = dir.join("alerts-under-test.yml");
    std::fs::write(&rule_file, without_annotations(&rules)).map_err(|e| e.to_string())?;
    let test_file = dir.join("alerts-test.yml");
    let samples = samples(scrapes);
    if samples.is_empty() {
        return Err("the scrapes hold no samples".to_owned());
    }
    std::fs::write(&test_file, unit_test(&rule_file, &samples, expects))
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new("promtool");
    cmd.args(["test", "rules"]).arg(&test_file);
    let run = super::chromium::run_bounded(cmd, DEADLINE, dir, "promtool")?;
    let output = format!("{}{}", run.stdout, run.stderr);
    if run.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "promtool test rules {} failed ({}):\n{output}",
            test_file.display(),
            run.status
        ))
    }
}
