//! Issue 8/12, acceptance 3: the admin API is HTTPS under the cluster CA (what `ferry admin`
//! speaks), with named tokens and roles. A `read` token gets 403 on `POST /v1/users`, audited
//! with its name and address; an `operator` token drains but adds no user; plain HTTP where
//! only HTTPS is served gets no answer; with 5,000 idle or slow-header connections open, an
//! admin request still answers within 1 s and storage stays writable.

mod common;
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn as_token(w: &World, token: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let config = w.client_config();
    let mut full = vec!["admin", "--config", config.as_str()];
    full.extend_from_slice(args);
    w.ferry_with(&full, stdin, &[("FERRY_ADMIN_TOKEN", token)])
}

#[test]
fn t28_roles_allow_what_they_name_and_refusals_are_audited() {
    let (w, _nodes) = World::pair_with_witness();
    let reader = w
        .admin(&["token", "create", "dashboards", "--role", "read"])
        .ok()
        .trim()
        .to_owned();
    let operator = w
        .admin(&["token", "create", "on-call", "--role", "operator"])
        .ok()
        .trim()
        .to_owned();
    let listed = w.admin(&["token", "list", "--json"]).ok();
    assert!(
        listed.contains("dashboards") && listed.contains("on-call") && !listed.contains(&reader),
        "the list names tokens, never shows them: {listed}"
    );

    // read: status and lists, nothing else.
    as_token(&w, &reader, &["status"], None).ok();
    as_token(&w, &reader, &["user", "list"], None).ok();
    as_token(
        &w,
        &reader,
        &[
            "user",
            "add",
            "mallory",
            "--group",
            "staff",
            "--password-stdin",
        ],
        Some("long enough password\n"),
    )
    .fails(4, "has role read; POST /v1/users needs role admin");
    as_token(&w, &reader, &["restart-check", "b2"], None).fails(4, "needs role operator");
    let audit = w.admin(&["audit", "--json"]).ok();
    let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let forbidden = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "admin.forbidden" && r["target"] == "POST /v1/users")
        .unwrap_or_else(|| panic!("the refusal is audited: {audit:#}"));
    assert!(
        forbidden["actor"]
            .as_str()
            .unwrap()
            .starts_with("token:dashboards"),
        "{forbidden}"
    );
    assert!(
        forbidden["source"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{forbidden}"
    );

    // operator: drains (past the gate's 30 s of steadiness: forced, and audited so) and
    // undrains, adds no user, creates no token.
    as_token(&w, &operator, &["drain", "b2", "--force"], None).ok();
    as_token(&w, &operator, &["undrain", "b2"], None).ok();
    as_token(
        &w,
        &operator,
        &[
            "user",
            "add",
            "mallory",
            "--group",
            "staff",
            "--password-stdin",
        ],
        Some("long enough password\n"),
    )
    .fails(4, "needs role admin");
    as_token(
        &w,
        &operator,
        &["token", "create", "x", "--role", "admin"],
        None,
    )
    .fails(4, "needs role admin");
    let audit = w.admin(&["audit", "--json"]).ok();
    assert!(
        audit.contains("token:on-call") && audit.contains("maintenance.acquire"),
        "the drain is audited under the operator's token: {audit}"
    );

    // Revoked: the token stops working at once.
    w.admin(&["token", "revoke", "dashboards"]).ok();
    as_token(&w, &reader, &["status"], None).fails(4, "unknown or revoked admin token");
    w.admin(&["token", "revoke", "init"])
        .fails(1, "lives in each node's configuration");
}

#[test]
fn t28_plain_http_gets_no_answer_where_only_https_is_served() {
    let w = World::init();
    // An admin API on every address (not loopback): HTTPS alone.
    let path = w.cluster().join("b1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let port = w.layout().admin_port(1);
    let edited = text
        .replace(
            &format!("admin_addr = \"127.0.0.1:{port}\""),
            &format!("admin_addr = \"0.0.0.0:{port}\""),
        )
        .replace("plain_http = true", "plain_http = false");
    assert_ne!(text, edited);
    std::fs::write(&path, &edited).unwrap();
    let mut broker = w.spawn("node-b1", &["broker", "--config", path.to_str().unwrap()]);
    // HTTPS answers (`ferry admin` through client.toml)...
    wait_for("the admin API over HTTPS", Duration::from_secs(20), || {
        if let Ok(Some(status)) = broker.child.try_wait() {
            panic!("b1 exited: {status}\n{}", broker.log_text());
        }
        (w.admin(&["node"]).code == 0).then_some(())
    });
    // ...plain HTTP gets nothing at all: the connection is closed without a byte.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "no answer to plain HTTP: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // And a node refuses to start with plain HTTP on a non-loopback address.
    broker.kill();
    std::fs::write(
        &path,
        edited.replace("plain_http = false", "plain_http = true"),
    )
    .unwrap();
    let out = w.ferry(&["broker", "--config", path.to_str().unwrap()]);
    out.fails(
        8,
        "admin_api.plain_http is allowed only on a loopback admin_addr",
    );
}

#[test]
fn t28_idle_and_slow_clients_cannot_hold_the_admin_api() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let w = World::init();
    let _broker = w.start_broker();
    wait_for("a leader", Duration::from_secs(20), || {
        (w.admin(&["node"]).code == 0).then_some(())
    });
    let admin = w.layout().admin_port(1);
    // 2,500 connections that say nothing, 2,500 that send half a request's headers.
    let mut held = Vec::new();
    for i in 0..5_000 {
        match std::net::TcpStream::connect(("127.0.0.1", admin)) {
            Ok(mut stream) => {
                if i % 2 == 1 {
                    let _ = stream.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n");
                }
                held.push(stream);
            }
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    let started = Instant::now();
    let out = w.admin(&["node", "--json"]);
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{out:?}");
    eprintln!("with 5,000 idle or slow connections opened, `ferry admin node` took {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "answered within 1 s: {took:?}"
    );
    assert_eq!(w.metric(1, "ferry_storage_writable", ""), 1.0);
    let displaced = w.metric(1, "ferry_admin_connections_displaced_total", "");
    eprintln!("idle connections displaced: {displaced}");
    assert!(displaced > 0.0, "idle connections made room: {displaced}");
    drop(held);
}
