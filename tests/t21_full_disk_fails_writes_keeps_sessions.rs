//! Issue 5/8, acceptance 4: the broker's data directory is a small tmpfs that fills up. Writes
//! then fail with a clear error and nothing claims they succeeded; the live session keeps
//! flowing; `/readyz` says the storage is not writable. Once space is freed the node takes
//! writes again by itself, and every write acknowledged before is still there.
//!
//! Mounting a tmpfs needs root (or passwordless sudo), as CI has.

mod common;

use common::*;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size of the data directory's file system: room for the store, not for the filler.
const TMPFS_SIZE: &str = "32m";

/// A tmpfs mounted on a directory for the test's duration.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let args = [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={TMPFS_SIZE}"),
            "tmpfs",
            dir.to_str().unwrap(),
        ];
        let as_root = std::process::Command::new(args[0])
            .args(&args[1..])
            .status();
        let mounted = as_root.is_ok_and(|s| s.success())
            || std::process::Command::new("sudo")
                .arg("-n")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            mounted,
            "cannot mount a tmpfs on {} (this test needs root or passwordless sudo)",
            dir.display()
        );
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for cmd in [&["umount", "-l"][..], &["sudo", "-n", "umount", "-l"][..]] {
            let ok = std::process::Command::new(cmd[0])
                .args(&cmd[1..])
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
        }
    }
}

/// Fills the file system holding `dir` with one file; returns its path and size.
fn fill(dir: &Path) -> (PathBuf, u64) {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
    (path, written)
}

#[test]
fn t21_a_full_disk_fails_writes_clearly_keeps_sessions_and_recovers() {
    let w = World::init();
    let data = w.data_dir("b1");
    let _tmpfs = Tmpfs::mount(&data);
    let _broker = w.start_broker();
    w.add_user("alice", "staff", "correct horse battery");
    let token = w.enroll("lab-pc-1", "lab");
    w.admin(&["grant", "staff", "lab"]).ok();
    let echo = echo_server();
    let _host = w.start_host("lab-pc-1", Some(&token), &[("echo", echo)]);
    w.login("alice", "correct horse battery").ok();
    let (_forward, addr) = w.forward("lab-pc-1", "echo");

    // A live session: 4 KiB round trips every 20 ms, each checked byte for byte.
    let stop = Arc::new(AtomicBool::new(false));
    let trips = Arc::new(AtomicU64::new(0));
    let session = {
        let (stop, trips) = (stop.clone(), trips.clone());
        std::thread::spawn(move || -> Result<Duration, String> {
            let mut conn = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut longest = Duration::ZERO;
            let mut n = 0u8;
            while !stop.load(Ordering::Acquire) {
                let started = Instant::now();
                let sent = vec![n; 4096];
                conn.write_all(&sent).map_err(|e| format!("write: {e}"))?;
                let mut back = vec![0u8; 4096];
                conn.read_exact(&mut back)
                    .map_err(|e| format!("read: {e}"))?;
                if back != sent {
                    return Err("the echo differs".into());
                }
                longest = longest.max(started.elapsed());
                trips.fetch_add(1, Ordering::AcqRel);
                n = n.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(longest)
        })
    };
    wait_for("the session to flow", Duration::from_secs(10), || {
        (trips.load(Ordering::Acquire) > 10).then_some(())
    });

    let mut acked: Vec<String> = Vec::new();
    for n in 0..10 {
        let group = format!("before-{n}");
        w.admin(&["grant", &group, "lab"]).ok();
        acked.push(group);
    }

    let (filler, filled) = fill(&data);
    println!("filled the data directory's tmpfs with {filled} bytes");
    let full_at = Instant::now();
    let trips_when_full = trips.load(Ordering::Acquire);
    let mut n = 0;
    let refusal = wait_for("a write to fail", Duration::from_secs(30), || {
        n += 1;
        let group = format!("during-{n}");
        let out = w.admin(&["grant", &group, "lab"]);
        if out.code == 0 {
            acked.push(group); // made durable after all (a buffer had room): it counts
            None
        } else {
            Some(out.stderr)
        }
    });
    println!("a write on the full disk: {}", refusal.trim());
    assert!(
        refusal.contains("No space left on device")
            || refusal.contains("could not be made durable"),
        "the refusal says why: {refusal}"
    );
    let (code, ready) = wait_for(
        "/readyz to report the storage",
        Duration::from_secs(15),
        || {
            http_get(&format!("{}/readyz", w.admin_url()))
                .filter(|(_, body)| body.contains("storage is not writable"))
        },
    );
    assert_eq!(code, 503);
    println!(
        "/readyz: {}",
        ready
            .lines()
            .filter(|l| l.contains("storage"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // Writes keep failing, quickly and clearly, while the disk is full.
    let out = w.admin(&["grant", "still-full", "lab"]);
    assert_ne!(
        out.code, 0,
        "a write succeeded on a full disk: {}",
        out.stdout
    );
    std::thread::sleep(Duration::from_secs(2));
    let trips_full = trips.load(Ordering::Acquire) - trips_when_full;
    println!(
        "the session made {trips_full} round trips in the {:.1} s the disk was full",
        full_at.elapsed().as_secs_f64()
    );
    assert!(trips_full > 20, "the live session stalled on the full disk");

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    wait_for(
        "a write after space returned",
        Duration::from_secs(60),
        || {
            let group = format!("after-{}", freed.elapsed().as_millis());
            (w.admin(&["grant", &group, "lab"]).code == 0).then(|| acked.push(group))
        },
    );
    println!(
        "writes succeed again {:.1} s after space was freed",
        freed.elapsed().as_secs_f64()
    );
    wait_for("/readyz to pass again", Duration::from_secs(30), || {
        http_get(&format!("{}/readyz", w.admin_url())).filter(|(code, _)| *code == 200)
    });
    let grants = w.grants_on(1);
    let missing: Vec<&String> = acked.iter().filter(|g| !grants.contains(*g)).collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    assert!(
        w.quarantined("b1").is_empty(),
        "a full disk is not damage: nothing may be quarantined"
    );

    stop.store(true, Ordering::Release);
    let longest = session.join().unwrap().expect("the session never broke");
    println!(
        "{} acknowledged writes all present; the session's longest round trip was {:.0} ms",
        acked.len(),
        longest.as_secs_f64() * 1000.0
    );
}
