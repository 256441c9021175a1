//! Issue 6/12: real OpenSSH (Debian's `ssh`, `scp` and `sshd`) through Ferry, the way
//! technicians use it every day: through a local port (`ferry connect --listen`) and as
//! ssh's ProxyCommand (`ferry connect %h ssh --stdio`). Each test runs its own sshd on a free
//! loopback port with keys made in the test. Through both paths: a remote command's output,
//! 64 MiB streamed each way with SHA-256 checked, `scp` of a 16 MiB file each way, and an
//! interactive session (`ssh -tt`) typing lines and reading the answers. Then a pair with a
//! witness where the broker carrying two ssh transfers of 256 MiB (one on each path) is
//! SIGKILLed in the middle: ssh does not notice (no disconnect, identical SHA-256).

mod common;
use common::ssh::*;
use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOST: &str = "lab-pc";
/// Longest any one ssh or scp run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// How ssh reaches the host.
enum Path<'a> {
    /// A local port forwarded by `ferry connect --listen`.
    Listen(SocketAddr),
    /// `ferry connect %h ssh --stdio` as the ProxyCommand, with this client config.
    Proxy(&'a World, String),
}

impl Path<'_> {
    fn name(&self) -> &'static str {
        match self {
            Path::Listen(_) => "--listen",
            Path::Proxy(..) => "ProxyCommand",
        }
    }

    fn command(&self, sshd: &Sshd, program: &str) -> (Command, String) {
        match self {
            Path::Listen(addr) => sshd.via_port(program, *addr),
            Path::Proxy(world, config) => sshd.via_proxy(program, world, config, HOST),
        }
    }
}

/// One broker; host lab-pc exposing the test's sshd as `ssh`; alice logged in.
fn one_broker() -> (World, Proc, Proc, Sshd) {
    let w = World::init();
    let broker = w.start_broker();
    let sshd = Sshd::start(w.path(), HOST);
    let ssh_addr: SocketAddr = ([127, 0, 0, 1], sshd.port).into();
    let host = w.alice_reaching(&w.client_config(), HOST, &[("ssh", ssh_addr)]);
    (w, broker, host, sshd)
}

fn ssh_run(
    path: &Path,
    sshd: &Sshd,
    extra: &[&str],
    remote: &str,
    stdin: Option<Vec<u8>>,
) -> Vec<u8> {
    let (mut cmd, dest) = path.command(sshd, "ssh");
    cmd.args(extra).arg(dest).arg(remote);
    let (code, out, err) = run_with_deadline(cmd, stdin, RUN_DEADLINE);
    assert_eq!(code, 0, "ssh via {} `{remote}` failed: {err}", path.name());
    out
}

/// Everything a technician does over ssh, through one path.
fn exercise(path: &Path, sshd: &Sshd, dir: &std::path::Path) {
    let via = path.name();

    // A remote command's output.
    let started = Instant::now();
    let out = ssh_run(
        path,
        sshd,
        &[],
        "echo hello from $(hostname); echo done",
        None,
    );
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("hello from ") && out.ends_with("done\n"),
        "{via}: {out:?}"
    );
    eprintln!("{via}: remote command answered in {:?}", started.elapsed());

    // 64 MiB streamed each way.
    let up = random_bytes(64 << 20, 1);
    let started = Instant::now();
    let out = ssh_run(path, sshd, &[], "sha256sum", Some(up.clone()));
    let remote_hash = String::from_utf8_lossy(&out);
    assert_eq!(
        remote_hash.split_whitespace().next(),
        Some(sha256_hex(&up).as_str()),
        "{via}: upload"
    );
    eprintln!(
        "{via}: 64 MiB up through ssh in {:?}, SHA-256 identical",
        started.elapsed()
    );
    let down_file = dir.join(format!("down-{}.bin", via.trim_start_matches('-')));
    let down = random_bytes(64 << 20, 2);
    std::fs::write(&down_file, &down).unwrap();
    let started = Instant::now();
    let out = ssh_run(
        path,
        sshd,
        &[],
        &format!("cat {}", down_file.display()),
        None,
    );
    assert_eq!(out.len(), down.len(), "{via}: download length");
    assert_eq!(sha256_hex(&out), sha256_hex(&down), "{via}: download");
    eprintln!(
        "{via}: 64 MiB down through ssh in {:?}, SHA-256 identical",
        started.elapsed()
    );

    // scp of 16 MiB each way.
    let local = dir.join(format!("scp-local-{}.bin", via.trim_start_matches('-')));
    let remote = dir.join(format!("scp-remote-{}.bin", via.trim_start_matches('-')));
    let back = dir.join(format!("scp-back-{}.bin", via.trim_start_matches('-')));
    let content = random_bytes(16 << 20, 3);
    std::fs::write(&local, &content).unwrap();
    let (mut cmd, dest) = path.command(sshd, "scp");
    cmd.arg(&local).arg(format!("{dest}:{}", remote.display()));
    let (code, _, err) = run_with_deadline(cmd, None, RUN_DEADLINE);
    assert_eq!(code, 0, "{via}: scp up: {err}");
    assert_eq!(
        sha256_hex(&std::fs::read(&remote).unwrap()),
        sha256_hex(&content),
        "{via}: scp up"
    );
    let (mut cmd, dest) = path.command(sshd, "scp");
    cmd.arg(format!("{dest}:{}", remote.display())).arg(&back);
    let (code, _, err) = run_with_deadline(cmd, None, RUN_DEADLINE);
    assert_eq!(code, 0, "{via}: scp down: {err}");
    assert_eq!(
        sha256_hex(&std::fs::read(&back).unwrap()),
        sha256_hex(&content),
        "{via}: scp down"
    );
    eprintln!("{via}: scp of 16 MiB up and down, SHA-256 identical");

    // An interactive session: a terminal, lines typed one by one, each answer read back.
    interactive(path, sshd);
}

/// `ssh -tt` to a shell: types a command, waits for its answer on the terminal, and so on;
/// the answers (`typed 7 -> 49`) appear only when the remote shell ran what was typed.
fn interactive(path: &Path, sshd: &Sshd) {
    let via = path.name();
    let (mut cmd, dest) = path.command(sshd, "ssh");
    cmd.args(["-tt"]).arg(dest).env("TERM", "dumb");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ssh -tt");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || lines.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut screen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..5u32 {
        stdin
            .write_all(format!("printf 'typed %d -> %d\\n' {i} $(({i} * {i}))\n").as_bytes())
            .unwrap();
        let answer = format!("typed {i} -> {}", i * i);
        while !String::from_utf8_lossy(&screen).contains(&answer) {
            let left = deadline.saturating_duration_since(Instant::now());
            match seen.recv_timeout(left) {
                Ok(bytes) => screen.extend(bytes),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "{via}: no answer {answer:?} on the terminal; it shows:\n{}",
                        String::from_utf8_lossy(&screen)
                    );
                }
            }
        }
    }
    stdin.write_all(b"exit\n").unwrap();
    drop(stdin);
    let status = wait_for("ssh -tt to exit", Duration::from_secs(30), || {
        child.try_wait().ok().flatten()
    });
    assert!(status.success(), "{via}: ssh -tt exited with {status}");
    eprintln!("{via}: interactive session: 5 lines typed, 5 answers read");
}

#[test]
fn t25_openssh_through_a_forwarded_port() {
    let (w, _broker, _host, sshd) = one_broker();
    let (_forward, addr) = w.forward(HOST, "ssh");
    exercise(&Path::Listen(addr), &sshd, w.path());
}

#[test]
fn t25_openssh_with_ferry_as_its_proxy_command() {
    let (w, _broker, _host, sshd) = one_broker();
    exercise(&Path::Proxy(&w, w.client_config()), &sshd, w.path());
}

/// Bytes each ssh transfer of the kill test moves, and how fast (paced, so that the kill
/// lands in the middle).
const KILL_TRANSFER_BYTES: usize = 256 << 20;
const KILL_TRANSFER_BYTES_PER_SEC: u64 = 48 << 20;

/// Child processes killed when the test ends, passed or failed, and when `deadline` passes
/// first: a transfer that hangs (the very fault under test) then fails the test, with its
/// pipes broken, instead of blocking it.
struct Watchdog {
    children: Vec<Arc<std::sync::Mutex<std::process::Child>>>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    fn new(children: Vec<std::process::Child>, deadline: Duration) -> Self {
        let children: Vec<_> = children
            .into_iter()
            .map(|c| Arc::new(std::sync::Mutex::new(c)))
            .collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (watched, finished) = (children.clone(), done.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + deadline;
            while Instant::now() < until {
                if finished.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("watchdog: the ssh transfers took over {deadline:?}; killing them");
            for child in &watched {
                // std never signals a child it has reaped, so this cannot hit another process.
                let _ = child.lock().unwrap().kill();
            }
        });
        Self { children, done }
    }

    fn child(&self, i: usize) -> std::sync::MutexGuard<'_, std::process::Child> {
        self.children[i].lock().unwrap()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        for child in &self.children {
            if let Ok(mut child) = child.lock() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Sends `bytes` into `writer` at `rate` bytes per second, counting progress.
fn paced_write(mut writer: impl Write, bytes: &[u8], rate: u64, progress: &AtomicU64) {
    let started = Instant::now();
    for chunk in bytes.chunks(256 * 1024) {
        let due = Duration::from_secs_f64(progress.load(Ordering::Relaxed) as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        if let Err(e) = writer.write_all(chunk) {
            eprintln!("writing into ssh failed: {e}");
            return;
        }
        progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

#[test]
fn t25_broker_carrying_ssh_sessions_killed_mid_transfer_ssh_does_not_notice() {
    let w = World::init_cluster(2, 1);
    let mut nodes = [
        Some(w.start_node(1)),
        Some(w.start_node(2)),
        Some(w.start_named("w1", 3)),
    ];
    let sshd = Sshd::start(w.path(), HOST);
    let config = w.client_config_for(1);
    let ssh_addr: SocketAddr = ([127, 0, 0, 1], sshd.port).into();
    let _host = w.alice_reaching(&config, HOST, &[("ssh", ssh_addr)]);
    let (_forward, forwarded) = w.forward_via(&config, HOST, "ssh");

    // Up through the ProxyCommand: paced writes into ssh's stdin, `sha256sum` remote.
    let up = Arc::new(random_bytes(KILL_TRANSFER_BYTES, 4));
    let up_progress = Arc::new(AtomicU64::new(0));
    let proxy = Path::Proxy(&w, config.clone());
    let (mut cmd, dest) = proxy.command(&sshd, "ssh");
    cmd.arg(dest).arg("sha256sum");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut up_ssh = cmd.spawn().expect("spawn ssh");
    let up_writer = {
        let (stdin, up, progress) = (
            up_ssh.stdin.take().unwrap(),
            up.clone(),
            up_progress.clone(),
        );
        std::thread::spawn(move || paced_write(stdin, &up, KILL_TRANSFER_BYTES_PER_SEC, &progress))
    };

    // Down through the forwarded port: `cat` of a file, read at a paced rate.
    let down = random_bytes(KILL_TRANSFER_BYTES, 5);
    let down_file = w.path().join("down-256.bin");
    std::fs::write(&down_file, &down).unwrap();
    let down_progress = Arc::new(AtomicU64::new(0));
    let (mut cmd, dest) = Path::Listen(forwarded).command(&sshd, "ssh");
    cmd.arg(dest).arg(format!("cat {}", down_file.display()));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut down_ssh = cmd.spawn().expect("spawn ssh");
    let down_reader = {
        let (mut stdout, progress) = (down_ssh.stdout.take().unwrap(), down_progress.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut got = Vec::with_capacity(KILL_TRANSFER_BYTES);
            let mut buf = vec![0u8; 256 * 1024];
            let mut longest_gap = Duration::ZERO;
            let mut last = Instant::now();
            loop {
                let Ok(n) = stdout.read(&mut buf) else {
                    return (got, longest_gap);
                };
                if n == 0 {
                    return (got, longest_gap);
                }
                longest_gap = longest_gap.max(last.elapsed());
                last = Instant::now();
                got.extend_from_slice(&buf[..n]);
                progress.fetch_add(n as u64, Ordering::Relaxed);
                let due =
                    Duration::from_secs_f64(got.len() as f64 / KILL_TRANSFER_BYTES_PER_SEC as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };

    // From here the two ssh processes are the watchdog's: killed at the end, or at its
    // deadline if a transfer hangs.
    let (mut up_stdout, mut up_stderr) =
        (up_ssh.stdout.take().unwrap(), up_ssh.stderr.take().unwrap());
    let mut down_stderr = down_ssh.stderr.take().unwrap();
    let ssh = Watchdog::new(vec![up_ssh, down_ssh], 2 * RUN_DEADLINE);
    let exited = |i: usize| ssh.child(i).try_wait().ok().flatten();

    // Both sessions flow through b1: kill it a quarter of the way.
    wait_for(
        "b1 to carry both ssh sessions",
        Duration::from_secs(30),
        || (w.metric(1, "ferry_sessions_open", "") == 2.0).then_some(()),
    );
    let quarter = KILL_TRANSFER_BYTES as u64 / 4;
    wait_for(
        "a quarter of both transfers",
        Duration::from_secs(60),
        || {
            for (i, name) in ["up", "down"].into_iter().enumerate() {
                if let Some(status) = exited(i) {
                    panic!("the {name} ssh exited early with {status}");
                }
            }
            (up_progress.load(Ordering::Relaxed) >= quarter
                && down_progress.load(Ordering::Relaxed) >= quarter)
                .then_some(())
        },
    );
    nodes[0].take().unwrap().kill();
    let killed_at = Instant::now();
    eprintln!("killed b1 (SIGKILL) with both ssh transfers a quarter through");

    // The threads end when their transfer does, or when the watchdog breaks the pipes.
    up_writer.join().expect("the writer thread never panics");
    let up_out = wait_for("the upload's ssh to exit", 2 * RUN_DEADLINE, || exited(0));
    let mut up_hash = String::new();
    let _ = up_stdout.read_to_string(&mut up_hash);
    let mut up_err = String::new();
    let _ = up_stderr.read_to_string(&mut up_err);
    assert!(
        up_out.success(),
        "ssh (ProxyCommand) noticed the kill: {up_out}: {up_err}"
    );
    assert_eq!(
        up_progress.load(Ordering::Relaxed),
        KILL_TRANSFER_BYTES as u64,
        "every byte went into ssh"
    );
    assert_eq!(
        up_hash.split_whitespace().next(),
        Some(sha256_hex(&up).as_str()),
        "256 MiB up through the ProxyCommand: identical SHA-256"
    );

    let (got, longest_gap) = down_reader.join().expect("the reader thread never panics");
    let down_out = wait_for("the download's ssh to exit", 2 * RUN_DEADLINE, || exited(1));
    let mut down_err = String::new();
    let _ = down_stderr.read_to_string(&mut down_err);
    assert!(
        down_out.success(),
        "ssh (--listen) noticed the kill: {down_out}: {down_err}"
    );
    assert_eq!(
        got.len(),
        down.len(),
        "256 MiB down through the forwarded port"
    );
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&down),
        "identical SHA-256 down"
    );
    eprintln!(
        "both ssh transfers of 256 MiB completed {:?} after the kill, SHA-256 identical; \
         longest read stall of the download {longest_gap:?}",
        killed_at.elapsed()
    );
    assert!(nodes[1].is_some() && nodes[2].is_some());
}
