//! Issue 4/8, lesson L5 ("no monitoring caught any of this"): when a service stops on one
//! node of a pair with a witness, the node says so (`/readyz`), every node's status page shows
//! it in red in a real browser, and Prometheus's own rule engine fires the right alerts on the
//! nodes' real `/metrics`, while a healthy cluster fires none and shows no red.
//!
//! The helpers the test relies on (red pixel counting, scrape parsing, each alert rule on its
//! own condition) are checked first, here rather than in `tests/common`, which every test
//! binary compiles and would run them again.

mod common;
use common::promtool::{expect, expect_silence, Expect};
use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Positions in port order: b1, b2, then w1.
const NODES: [(&str, u8); 3] = [("b1", 1), ("b2", 2), ("w1", 3)];

/// When the alert expectations are evaluated: past the longest `for:` of the rules (5 m).
const EVAL_TIME: &str = "10m";

/// A stopped service covers at least this many pixels of the phone-sized screenshot in red
/// (its badge alone is about 110 x 20; the node's badge and the failure tolerance add more).
const RED_PIXELS_FAILING_MIN: usize = 1_000;
/// A healthy page uses no red at all; this leaves room for stray anti-aliasing only.
const RED_PIXELS_HEALTHY_MAX: usize = 50;

#[test]
fn t17_a_stopped_service_shows_red_on_the_status_page_and_fires_its_alerts() {
    let w = World::init_cluster(2, 1);
    for (name, _) in NODES {
        configure(&w, name, &[("gate", "stabilization_secs", 1.into())]);
    }
    configure(&w, "b2", &[("faults", "enabled", true.into())]);
    let nodes: Vec<Proc> = NODES
        .iter()
        .map(|(name, pos)| w.start_named(name, *pos))
        .collect();

    // Healthy: every node sees a leader and every node healthy.
    wait_for(
        "every node to see a leader and all three nodes healthy",
        Duration::from_secs(60),
        || {
            NODES
                .iter()
                .all(|(_, pos)| {
                    cluster_status(&w, *pos).is_some_and(|s| {
                        !s["leader"].is_null()
                            && s["nodes"].as_array().is_some_and(|n| {
                                n.len() == 3 && n.iter().all(|n| n["healthy"] == true)
                            })
                    })
                })
                .then_some(())
        },
    );
    alerts_hold(
        &w,
        &expect_silence(EVAL_TIME),
        "a healthy cluster fires no alert",
    );
    // The gate's verdict for b2, as the leader evaluates it, reaches b1's status: allowed once
    // the cluster has been steady for the (here 1 s) stabilization time.
    wait_for(
        "b1's status to say b2 may restart",
        Duration::from_secs(30),
        || {
            let s = cluster_status(&w, 1)?;
            let b2 = s["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["node_id"] == "b2")?;
            (b2["restart"]["allowed"] == true).then_some(())
        },
    );
    let healthy = render_page(&w, 1);
    for fragment in [
        "data-node=\"b2\" data-healthy=\"true\"",
        "data-node=\"b2\" data-restart=\"allowed\"",
    ] {
        assert!(
            healthy.dom.contains(fragment),
            "the healthy page lacks {fragment:?}:\n{}",
            healthy.dom
        );
    }
    let healthy_red = chromium::red_pixels(&healthy.png).unwrap();

    // Stop b2's relay listener through the test-only fault switch.
    let (code, body) = w
        .admin_post(
            2,
            "/v1/faults/services",
            r#"{"service":"relay","stopped":true}"#,
        )
        .expect("b2 answers the fault switch");
    assert!(
        (200..300).contains(&code),
        "fault switch refused: {code} {body}"
    );

    let url = format!("{}/readyz", w.admin_url_of(2));
    let (_, readyz) = wait_for("b2 to be not ready", Duration::from_secs(20), || {
        http_get(&url).filter(|(code, _)| *code == 503)
    });
    assert!(
        readyz.contains("service relay is stopped"),
        "b2's /readyz names the stopped relay: {readyz}"
    );

    wait_for(
        "b1 to see b2's relay stopped, b2 unhealthy and no failure tolerance left",
        Duration::from_secs(30),
        || {
            let s = cluster_status(&w, 1)?;
            let b2 = s["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["node_id"] == "b2")?;
            let relay = b2["services"]
                .as_array()?
                .iter()
                .find(|svc| svc["name"] == "relay")?;
            let b1 = s["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["node_id"] == "b1")?;
            (relay["state"] == "stopped"
                && b2["healthy"] == false
                && s["failure_tolerance"] == 0
                && b1["restart"]["allowed"] == false)
                .then_some(())
        },
    );

    let failing = render_page(&w, 1);
    for fragment in [
        "data-node=\"b2\" data-service=\"relay\" data-state=\"stopped\">relay: stopped</span>",
        "data-node=\"b2\" data-healthy=\"false\"",
        "data-failure-tolerance=\"0\"",
        // With b2 unable to serve, b1 may not go: nothing would cover its hosts.
        "data-node=\"b1\" data-restart=\"refused\"",
    ] {
        assert!(
            failing.dom.contains(fragment),
            "b1's page lacks {fragment:?}:\n{}",
            failing.dom
        );
    }
    let failing_red = chromium::red_pixels(&failing.png).unwrap();
    println!("red pixels: healthy page {healthy_red}, b2's relay stopped {failing_red}");
    assert!(
        healthy_red <= RED_PIXELS_HEALTHY_MAX,
        "the healthy page shows red: {healthy_red} pixels"
    );
    assert!(
        failing_red >= RED_PIXELS_FAILING_MIN && failing_red > 10 * healthy_red,
        "a stopped service must show clearly red: {failing_red} red pixels \
         (healthy page: {healthy_red})"
    );

    let firing = [
        expect(
            "FerryServiceDown",
            EVAL_TIME,
            &[&[
                ("node", "b2"),
                ("service", "relay"),
                ("severity", "critical"),
            ]],
        ),
        expect(
            "FerryNodeUnhealthy",
            EVAL_TIME,
            &[&[("node", "b2"), ("severity", "warning")]],
        ),
        expect(
            "FerryFailureToleranceZero",
            EVAL_TIME,
            &[&[("severity", "critical")]],
        ),
        expect(
            "FerryMemberUnhealthy",
            EVAL_TIME,
            &[&[("member", "b2"), ("severity", "warning")]],
        ),
    ];
    let mut expects: Vec<Expect> = expect_silence(EVAL_TIME)
        .into_iter()
        .filter(|e| !firing.iter().any(|f| f.alertname == e.alertname))
        .collect();
    expects.extend(firing);
    alerts_hold(&w, &expects, "b2's stopped relay fires exactly its alerts");

    drop(nodes);
}

/// Sets `table.key = value` in node `name`'s config, adding the table if it is missing.
fn configure(w: &World, name: &str, settings: &[(&str, &str, toml::Value)]) {
    let path = w.cluster().join(format!("{name}.toml"));
    let mut config: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    for (table, key, value) in settings {
        config
            .entry(table.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("{table} is a table in {name}.toml"))
            .insert(key.to_string(), value.clone());
    }
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
}

/// `GET /status.json` of the node at `pos`: the cluster as it sees it.
fn cluster_status(w: &World, pos: u8) -> Option<serde_json::Value> {
    let (code, body) = http_get(&format!("{}/status.json", w.admin_url_of(pos)))?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// The status page of the node at `pos` as headless Chromium shows it on a phone.
fn render_page(w: &World, pos: u8) -> chromium::Page {
    let url = format!("{}/", w.admin_url_of(pos));
    chromium::render(&url, w.path()).unwrap_or_else(|e| panic!("rendering {url}: {e}"))
}

/// Scrapes every node until promtool agrees with `expects` (the nodes' views converge within
/// a report interval or two), or panics after 30 s with promtool's last complaint.
fn alerts_hold(w: &World, expects: &[Expect], what: &str) {
    let deadline = Duration::from_secs(30);
    let start = Instant::now();
    loop {
        let scrapes: Vec<String> = NODES
            .iter()
            .map(|(name, pos)| {
                let (code, text) = http_get(&format!("{}/metrics", w.admin_url_of(*pos)))
                    .unwrap_or_else(|| panic!("{name} serves /metrics"));
                assert_eq!(code, 200, "{name} /metrics: {text}");
                text
            })
            .collect();
        let scrapes: Vec<&str> = scrapes.iter().map(String::as_str).collect();
        match common::promtool::test_rules(&scrapes, expects, w.path()) {
            Ok(_) => return,
            Err(e) if start.elapsed() >= deadline => {
                panic!("{what}: not so after {deadline:?}:\n{e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Checks that the screenshot decoder counts exactly the clearly red pixels of one row.
fn check_red(name: &str, pixels: &[[u8; 3]], red: usize) {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, pixels.len() as u32, 1);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&pixels.concat()).unwrap();
    }
    assert_eq!(chromium::red_pixels(&bytes).unwrap(), red, "{name}");
}

#[test]
fn t17_red_pixels_are_only_the_clearly_red_ones() {
    const STOPPED: [u8; 3] = [0xc6, 0x28, 0x28];
    const AMBER: [u8; 3] = [0xef, 0x6c, 0x00];
    const GREEN: [u8; 3] = [0x2e, 0x7d, 0x32];
    const WHITE: [u8; 3] = [0xff, 0xff, 0xff];
    const PINK_TINT: [u8; 3] = [0xff, 0xeb, 0xee];
    check_red("healthy colours", &[AMBER, GREEN, WHITE, PINK_TINT], 0);
    check_red("stopped red", &[STOPPED, WHITE, STOPPED], 2);
    check_red("pure red", &[[255, 0, 0]], 1);
}

#[test]
fn t17_a_bounded_run_is_killed_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30");
    let start = Instant::now();
    let err =
        chromium::run_bounded(cmd, Duration::from_millis(200), dir.path(), "sleep").unwrap_err();
    assert!(err.contains("did not finish"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn t17_scrapes_become_series() {
    let scrape = "# HELP ferry_service_up 1 when the named service of this node is running\n\
        # TYPE ferry_service_up gauge\n\
        ferry_service_up{service=\"relay\",node=\"b2\"} 0\n\
        ferry_service_restarts_total{service=\"relay\",node=\"b2\"} 3 1700000000.5\n\
        ferry_service_restarts_created{service=\"relay\",node=\"b2\"} 1700000000.0\n\
        ferry_odd{why=\"a } and \\\" in a value\",node=\"b2\"} 1.5 # {trace_id=\"x\"} 1\n\
        ferry_session_resume_seconds_bucket{le=\"+Inf\",node=\"b2\"} 4\n\
        ferry_weird{node=\"b2\"} NaN\n\
        ferry_applied_index 42\n\
        # EOF\n";
    let got = common::promtool::samples(&[scrape]);
    let want: BTreeMap<String, f64> = [
        ("ferry_service_up{service=\"relay\",node=\"b2\"}", 0.0),
        (
            "ferry_service_restarts_total{service=\"relay\",node=\"b2\"}",
            3.0,
        ),
        (
            "ferry_odd{why=\"a } and \\\" in a value\",node=\"b2\"}",
            1.5,
        ),
        (
            "ferry_session_resume_seconds_bucket{le=\"+Inf\",node=\"b2\"}",
            4.0,
        ),
        ("ferry_applied_index", 42.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(got, want);

    let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: x == 0\n        \
        labels:\n          severity: warning\n        annotations:\n          summary: \"s\"\n          \
        description: >-\n            two\n\n            lines\n      - alert: B\n        expr: y\n";
    assert_eq!(
        common::promtool::without_annotations(rules),
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: x == 0\n        \
         labels:\n          severity: warning\n      - alert: B\n        expr: y\n"
    );
    assert_eq!(common::promtool::alert_names(rules), ["A", "B"]);
}

/// Feeds `scrape` (with the series a healthy node exports) to the rules and checks that
/// `alertname` fires exactly with `alerts`, and every other alert stays silent.
fn check_rule(alertname: &str, scrape: &str, alerts: &[&[(&str, &str)]]) {
    let dir = tempfile::tempdir().unwrap();
    let mut expects: Vec<Expect> = expect_silence(EVAL_TIME)
        .into_iter()
        .filter(|e| e.alertname != alertname)
        .collect();
    expects.push(expect(alertname, EVAL_TIME, alerts));
    let mut series = common::promtool::samples(&[HEALTHY_NODE]);
    series.extend(common::promtool::samples(&[scrape]));
    let text: String = series.iter().map(|(s, v)| format!("{s} {v}\n")).collect();
    if let Err(e) = common::promtool::test_rules(&[&text], &expects, dir.path()) {
        panic!("{alertname}: {e}");
    }
}

/// What a healthy node b1 exports of the series the rules read.
const HEALTHY_NODE: &str = "\
ferry_service_up{node=\"b1\",service=\"relay\"} 1
ferry_service_up{node=\"b1\",service=\"replication\"} 1
ferry_node_healthy{node=\"b1\"} 1
ferry_cluster_failure_tolerance{node=\"b1\"} 1
ferry_cluster_member_healthy{node=\"b1\",member=\"b1\"} 1
ferry_cluster_member_healthy{node=\"b1\",member=\"b2\"} 1
ferry_memory_rss_bytes{node=\"b1\"} 52428800
ferry_memory_limit_bytes{node=\"b1\"} 1073741824
ferry_memory_headroom_floor_bytes{node=\"b1\"} 268435456
ferry_storage_writable{node=\"b1\"} 1
ferry_quarantined{node=\"b1\"} 0
ferry_store_quarantined_dirs{node=\"b1\"} 0
ferry_leader_contact_seconds{node=\"b1\"} 0.2
ferry_draining{node=\"b1\"} 0
ferry_host_duplicate_attach_last_timestamp_seconds{node=\"b1\"} 0
ferry_certificate_expiry_timestamp_seconds{node=\"b1\",certificate=\"node\"} 31536000
ferry_certificate_expiry_timestamp_seconds{node=\"b1\",certificate=\"ca\"} 315360000
";

#[test]
fn t17_each_alert_fires_on_its_condition_alone() {
    check_rule("FerryServiceDown", "", &[]);
    check_rule(
        "FerryServiceDown",
        "ferry_service_up{node=\"b1\",service=\"relay\"} 0",
        &[&[
            ("node", "b1"),
            ("service", "relay"),
            ("severity", "critical"),
        ]],
    );
    check_rule(
        "FerryMemberUnhealthy",
        "ferry_cluster_member_healthy{node=\"b1\",member=\"b2\"} 0\n\
         ferry_cluster_member_healthy{node=\"w1\",member=\"b2\"} 1",
        &[&[("member", "b2"), ("severity", "warning")]],
    );
    check_rule(
        "FerryFailureToleranceZero",
        "ferry_cluster_failure_tolerance{node=\"w1\"} 0",
        &[&[("severity", "critical")]],
    );
    check_rule(
        "FerryMemoryHeadroomLow",
        "ferry_memory_rss_bytes{node=\"b1\"} 900000000",
        &[&[("node", "b1"), ("severity", "warning")]],
    );
    check_rule(
        "FerryQuarantined",
        "ferry_quarantined{node=\"b1\"} 1",
        &[&[("node", "b1"), ("severity", "warning")]],
    );
    check_rule(
        "FerryQuarantinedStoreKept",
        "ferry_store_quarantined_dirs{node=\"b1\"} 2",
        &[&[("node", "b1"), ("severity", "info")]],
    );
    check_rule(
        "FerryStorageNotWritable",
        "ferry_storage_writable{node=\"b1\"} 0",
        &[&[("node", "b1"), ("severity", "critical")]],
    );
    check_rule(
        "FerryNoLeaderContact",
        "ferry_leader_contact_seconds{node=\"b1\"} 12.5",
        &[&[("node", "b1"), ("severity", "critical")]],
    );
    check_rule(
        "FerryMaintenanceLeaseHeldTooLong",
        "ferry_maintenance_lease_seconds{node=\"b1\",lease_node=\"b2\"} 3700\n\
         ferry_maintenance_lease_seconds{node=\"w1\",lease_node=\"b2\"} 3650\n\
         ferry_maintenance_lease_seconds{node=\"b1\",lease_node=\"b3\"} 60",
        &[&[("lease_node", "b2"), ("severity", "warning")]],
    );
    check_rule(
        "FerryNodeUnhealthy",
        "ferry_node_healthy{node=\"b1\"} 0",
        &[&[("node", "b1"), ("severity", "warning")]],
    );
    // Evaluated at 600 s (EVAL_TIME): a node certificate valid until 10 days later.
    check_rule(
        "FerryCertificateExpiresSoon",
        "ferry_certificate_expiry_timestamp_seconds{node=\"b1\",certificate=\"node\"} 864600",
        &[&[
            ("node", "b1"),
            ("certificate", "node"),
            ("severity", "warning"),
        ]],
    );
    // Evaluated at 600 s (EVAL_TIME): a refusal at 300 s is recent.
    check_rule(
        "FerryHostDuplicateAttach",
        "ferry_host_duplicate_attach_last_timestamp_seconds{node=\"b1\"} 300",
        &[&[("node", "b1"), ("severity", "warning")]],
    );
}
