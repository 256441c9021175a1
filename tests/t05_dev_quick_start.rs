//! Acceptance 1/8 item 1: `ferry dev` starts, and following the instructions it prints, a
//! second "terminal" reaches the demo service through the broker (both the --listen and the
//! --stdio instructions are executed exactly as printed).

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Splits a printed shell command line into words (handles the single quotes `dev` prints).
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Runs a printed command line `VAR='x' prog args...` with the given stdin.
fn run_printed(line: &str, home: &std::path::Path, stdin: &str) -> std::process::Output {
    let mut words = words(line);
    let mut cmd_env = Vec::new();
    while words[0].contains('=') && !words[0].starts_with('/') {
        let w = words.remove(0);
        let (k, v) = w.split_once('=').unwrap();
        cmd_env.push((k.to_owned(), v.to_owned()));
    }
    let mut child = Command::new(&words[0])
        .args(&words[1..])
        .envs(cmd_env)
        .env("XDG_CONFIG_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{line} did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn t05_dev_prints_instructions_that_reach_the_demo_service() {
    let work = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let dev_dir = work.path().join("dev");
    let log = work.path().join("dev.log");
    let mut dev = Proc {
        name: "ferry dev".into(),
        child: Command::new(FERRY)
            .args([
                "dev",
                "--dir",
                dev_dir.to_str().unwrap(),
                "--base-port",
                &base.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    };
    let stdout = BufReader::new(dev.child.stdout.take().unwrap());
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("Press Ctrl-C")) {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("ferry dev prints its instructions");
        printed.push(line);
    }
    let find = |needle: &str| -> String {
        printed
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in {printed:#?}"))
            .trim()
            .to_owned()
    };
    let home = work.path().join("home");

    let login = run_printed(&find(" login "), &home, "");
    assert!(login.status.success(), "login: {login:?}");

    let stdio_line = find("--stdio");
    let (echo_part, command) = stdio_line.split_once(" | ").unwrap();
    assert_eq!(echo_part, "echo hello");
    let out = run_printed(command, &home, "hello\n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdio connect: {out:?}");
    assert!(
        text.contains("Ferry demo service") && text.contains("HELLO"),
        "{text}"
    );

    // The --listen instruction, then what `nc` would do.
    let listen_line = find("--listen");
    let port: u16 = listen_line
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let words = words(&listen_line);
    let mut forward = Proc {
        name: "connect --listen".into(),
        child: Command::new(&words[0])
            .args(&words[1..])
            .env("XDG_CONFIG_HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("fwd.log")).unwrap())
            .spawn()
            .unwrap(),
        log: work.path().join("fwd.log"),
    };
    let mut stream = wait_for("the forwarded port", Duration::from_secs(20), || {
        if let Ok(Some(s)) = forward.child.try_wait() {
            panic!("connect exited with {s}: {}", forward.log_text());
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    stream.write_all(b"through the port\n").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("THROUGH THE PORT"), "{answer}");
    forward.kill();
    assert_eq!(
        dev.terminate().code(),
        Some(0),
        "ferry dev stops cleanly on SIGTERM"
    );
}
