//! Issue 10/12, scope 6: no secret in any output. A whole scenario on three real brokers
//! (init, users, an admin token, enrollment, login, sessions, a resume on another broker,
//! wrong guesses, a password change, logout, admin calls), then every log line, every metric,
//! the audit log, the status page, every `--help` and every error text it produced is
//! searched for each password, token, enrollment token and resume secret it used. The only
//! outputs allowed to show a secret are the ones made to hand it over (`token create` and
//! `host enroll` print the new token alone on stdout).

mod common;
use common::*;
use ferry_proto::wire::{self, client_request, client_response};
use std::path::Path;

/// A secret of the scenario, and a name to report it by.
struct Secret {
    what: &'static str,
    value: String,
}

fn random_secret(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// Every file under `dir` whose name ends in `.log`.
fn logs_under(dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            logs_under(&path, out);
        } else if path.extension().is_some_and(|e| e == "log") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            out.push((path.display().to_string(), text));
        }
    }
}

/// `ferry ... --help` for `path` and every subcommand under it (clap's "Commands:" section),
/// at most `depth` levels down.
fn help_texts(w: &World, path: Vec<String>, depth: usize, out: &mut Vec<(String, String)>) {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let help = w.ferry(&args);
    let text = format!("{}{}", help.stdout, help.stderr);
    let subcommands: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    out.push((format!("ferry {} --help", path.join(" ")), text));
    if depth == 0 {
        return;
    }
    for sub in subcommands {
        let mut next = path.clone();
        next.push(sub);
        help_texts(w, next, depth - 1, out);
    }
}

/// Opens a session to `host`/`service` through broker `node` with a raw client, as `ferry
/// connect` does; returns its id and resume secret.
fn open_raw(w: &World, node: u8, token: &str, host: &str, service: &str) -> (u64, String) {
    let response = w.client_request(
        node,
        client_request::Request::OpenSession(wire::OpenSession {
            token: token.into(),
            host: host.into(),
            service: service.into(),
        }),
    );
    match response {
        client_response::Response::SessionOpened(opened) => {
            (opened.session_id, opened.resume_secret)
        }
        other => panic!("expected a session, got {other:?}"),
    }
}

#[test]
fn t35_no_password_token_or_secret_appears_in_any_output() {
    let w = World::init_brokers(3);
    let nodes: Vec<Proc> = (1..=3).map(|i| w.start_node(i)).collect();
    w.wait_healthy(3);
    let mut outputs: Vec<(String, String)> = Vec::new();
    fn record(outputs: &mut Vec<(String, String)>, label: &str, out: &Output) {
        outputs.push((label.to_owned(), format!("{}\n{}", out.stdout, out.stderr)));
    }

    let password = random_secret("pw");
    let wrong = random_secret("guess");
    let new_password = random_secret("newpw");
    w.add_user("alice", "staff", &password);
    w.admin(&["grant", "staff", "lab"]).ok();
    let admin_token = std::fs::read_to_string(w.cluster().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();

    // A named admin token, used once (its own stdout is where it is handed over).
    let created = w.admin(&["token", "create", "auditor", "--role", "read"]);
    let auditor = created.stdout.trim().to_owned();
    assert!(auditor.len() >= 32, "{}", created.stderr);
    outputs.push(("token create (stderr)".into(), created.stderr.clone()));
    let config = w.client_config();
    let status = w.ferry_with(
        &["admin", "--config", &config, "status"],
        None,
        &[("FERRY_ADMIN_TOKEN", &auditor)],
    );
    assert_eq!(status.code, 0, "{}", status.stderr);
    record(&mut outputs, "admin status with the auditor token", &status);
    // A call beyond its role: refused, audited.
    let refused = w.ferry_with(
        &["admin", "--config", &config, "user", "disable", "alice"],
        None,
        &[("FERRY_ADMIN_TOKEN", &auditor)],
    );
    assert_ne!(refused.code, 0);
    record(&mut outputs, "a refused admin call", &refused);

    // Enrollment (the token is handed over on stdout by `w.enroll`), a wrong one, attachment.
    let enrollment = w.enroll("lab-pc", "lab");
    let _host = w.start_host("lab-pc", Some(&enrollment), &[("echo", echo_server())]);

    // Logins: a wrong password, then the right one; the token is cached on disk.
    let bad = w.login("alice", &wrong);
    assert_ne!(bad.code, 0);
    record(&mut outputs, "a wrong password", &bad);
    record(&mut outputs, "login", &w.login("alice", &password));
    let cache_dir = w.path().join("config-home/ferry/tokens");
    let cached = std::fs::read_dir(&cache_dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("login caches its token");
    let login_token = cached
        .lines()
        .find_map(|l| l.strip_prefix("token = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("the cache names the token");

    // Sessions: through `ferry connect`, and a raw one whose resume secret is known, resumed
    // on another broker (and a wrong secret tried).
    let echoed = w.connect_stdio("lab-pc", "echo", "hello\n");
    assert_eq!(echoed.code, 0, "{}", echoed.stderr);
    record(&mut outputs, "connect", &echoed);
    let (session_id, resume_secret) = open_raw(&w, 1, &login_token, "lab-pc", "echo");
    for secret in [random_secret("resume-guess"), resume_secret.clone()] {
        let _ = w.client_request(
            2,
            client_request::Request::ResumeSession(wire::ResumeSession {
                session_id,
                resume_secret: secret,
                received: 0,
                written: 0,
            }),
        );
    }
    // A wrong enrollment token for the same host.
    let wrong_enrollment = random_secret("enroll-guess");
    let mut impostor = w.spawn(
        "host-impostor",
        &[
            "host",
            "--config",
            &config,
            "--name",
            "lab-pc",
            "--state-dir",
            w.path().join("impostor").to_str().unwrap(),
            "--enroll",
            &wrong_enrollment,
            "--expose",
            "echo=127.0.0.1:9",
        ],
    );
    wait_for(
        "the impostor to give up",
        std::time::Duration::from_secs(20),
        || impostor.child.try_wait().ok().flatten(),
    );

    // The user changes the password, lists, and logs out.
    let passwd = w.ferry_with(
        &["passwd", "--config", &config, "--password-stdin"],
        Some(&format!("{password}\n{new_password}\n")),
        &[],
    );
    record(&mut outputs, "passwd", &passwd);
    for args in [
        ["ls", "--config"],
        ["whoami", "--config"],
        ["logout", "--config"],
    ] {
        let out = w.ferry(&[args[0], args[1], &config]);
        record(&mut outputs, args[0], &out);
    }

    // Admin calls and everything a node serves.
    for args in [
        vec!["status", "--json"],
        vec!["user", "list", "--json"],
        vec!["host", "list", "--json"],
        vec!["sessions", "--json"],
        vec!["token", "list"],
        vec!["audit", "--json"],
    ] {
        let out = w.admin(&args);
        record(&mut outputs, &format!("admin {}", args.join(" ")), &out);
    }
    for i in 1..=3u8 {
        for path in ["/metrics", "/", "/status.json", "/readyz"] {
            let (_, body) = http_get(&format!("{}{path}", w.admin_url_of(i))).unwrap_or_default();
            outputs.push((format!("b{i} {path}"), body));
        }
    }
    help_texts(&w, Vec::new(), 2, &mut outputs);
    drop(nodes);
    logs_under(w.path(), &mut outputs);

    let secrets = [
        Secret {
            what: "alice's password",
            value: password,
        },
        Secret {
            what: "a wrong password",
            value: wrong,
        },
        Secret {
            what: "alice's new password",
            value: new_password,
        },
        Secret {
            what: "the init admin token",
            value: admin_token,
        },
        Secret {
            what: "a named admin token",
            value: auditor,
        },
        Secret {
            what: "the enrollment token",
            value: enrollment,
        },
        Secret {
            what: "a wrong enrollment token",
            value: wrong_enrollment,
        },
        Secret {
            what: "alice's login token",
            value: login_token,
        },
        Secret {
            what: "a resume secret",
            value: resume_secret,
        },
    ];
    let lines: usize = outputs.iter().map(|(_, t)| t.lines().count()).sum();
    println!(
        "searched {} outputs ({lines} lines, {} bytes) for {} secrets",
        outputs.len(),
        outputs.iter().map(|(_, t)| t.len()).sum::<usize>(),
        secrets.len()
    );
    let mut found = Vec::new();
    for (label, text) in &outputs {
        for secret in &secrets {
            if text.contains(&secret.value) {
                found.push(format!("{} in {label}", secret.what));
            }
        }
    }
    assert!(found.is_empty(), "secrets in outputs: {found:#?}");
}
