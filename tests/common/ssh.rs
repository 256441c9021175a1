//! Real OpenSSH for the end-to-end tests: a throwaway `sshd` on a free loopback port, with a
//! host key and an authorized user key made for the test (never the machine's sshd or keys),
//! and `ssh`/`scp` commands that trust exactly that host key.
//!
//! The programs are Debian's `openssh-server` and `openssh-client`; `.ci/run` installs them
//! when missing. A missing program fails the test with that advice, it never skips it.

use super::*;
use std::process::Command;

/// Where Debian installs the daemon (sshd must be started by its absolute path).
const SSHD: &str = "/usr/sbin/sshd";
/// Debian's SFTP server: `scp` speaks SFTP by default since OpenSSH 9.0.
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// A running sshd, killed on drop, and the client side's key and known-hosts file.
pub struct Sshd {
    pub port: u16,
    /// The user ssh logs in as: the user running the tests (its authorized key is the test's).
    pub user: String,
    /// The name the host key is known under.
    host_alias: String,
    dir: PathBuf,
    _process: Proc,
}

impl Sshd {
    /// Makes keys and a config in `dir/ssh`, starts sshd on a free port of 127.0.0.1 and
    /// waits until it sends its banner. The known-hosts file holds the host key under
    /// `host_alias` alone, the name ssh uses through a ProxyCommand (and through a forwarded
    /// port with `HostKeyAlias`).
    pub fn start(dir: &Path, host_alias: &str) -> Self {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install Debian's openssh-server (bash .ci/run does)"
        );
        let dir = dir.join("ssh");
        std::fs::create_dir_all(&dir).unwrap();
        for key in ["host_key", "user_key"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "ferry-e2e", "-f"])
                .arg(dir.join(key))
                .output()
                .expect("ssh-keygen runs (install Debian's openssh-client; bash .ci/run does)");
            assert!(out.status.success(), "ssh-keygen: {out:?}");
        }
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
        // sshd binds a port picked free a moment before; another process may take it in
        // between, so a start that fails to bind is tried again on another port.
        let mut attempts = 0;
        let (port, process) = loop {
            attempts += 1;
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            match start_sshd(&dir, port) {
                Ok(process) => break (port, process),
                Err(log) if attempts < 3 && log.contains("Address already in use") => continue,
                Err(log) => panic!("sshd did not start on port {port}:\n{log}"),
            }
        };
        let host_key = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let host_key = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(
            dir.join("known_hosts"),
            format!("{host_alias} {host_key}\n"),
        )
        .unwrap();
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        Self {
            port,
            user,
            host_alias: host_alias.to_owned(),
            dir,
            _process: process,
        }
    }

    /// Options every `ssh` and `scp` here takes: no user config, the test's key only, the
    /// test's host key only (checked strictly), never a prompt.
    fn options(&self) -> Vec<String> {
        let dir = self.dir.display();
        [
            "-F".to_owned(),
            "/dev/null".to_owned(),
            "-i".to_owned(),
            format!("{dir}/user_key"),
            "-o".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
            "-o".to_owned(),
            format!("UserKnownHostsFile={dir}/known_hosts"),
            "-o".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            "-o".to_owned(),
            "BatchMode=yes".to_owned(),
            "-o".to_owned(),
            "LogLevel=ERROR".to_owned(),
        ]
        .into()
    }

    /// `ssh` (or `scp` with `program`) through a local port forwarded by `ferry connect
    /// --listen`: options for the port, and the host key looked up under the host's name
    /// (`HostKeyAlias`); the destination is `user@127.0.0.1`.
    pub fn via_port(&self, program: &str, forwarded: SocketAddr) -> (Command, String) {
        let mut cmd = Command::new(program);
        cmd.args(self.options());
        cmd.arg("-o")
            .arg(format!("HostKeyAlias={}", self.host_alias));
        let port_flag = if program == "scp" { "-P" } else { "-p" };
        cmd.args([port_flag, &forwarded.port().to_string()]);
        (cmd, format!("{}@127.0.0.1", self.user))
    }

    /// `ssh` (or `scp`) through `ferry connect %h ssh --stdio` as its ProxyCommand, the way
    /// technicians use a jump host; the destination is `user@host_alias`. `world` gives the
    /// ferry process its config home (where `ferry login` cached the token).
    pub fn via_proxy(
        &self,
        program: &str,
        world: &World,
        client_config: &str,
        host_alias: &str,
    ) -> (Command, String) {
        let mut cmd = Command::new(program);
        cmd.args(self.options());
        cmd.arg("-o").arg(format!(
            "ProxyCommand={FERRY} connect %h ssh --stdio --config {client_config}"
        ));
        cmd.env("XDG_CONFIG_HOME", world.path().join("config-home"))
            .env("FERRY_LOG", "warn");
        (cmd, format!("{}@{host_alias}", self.user))
    }
}

/// Writes the config for `port` and starts sshd; its log when it exits before answering.
fn start_sshd(dir: &Path, port: u16) -> Result<Proc, String> {
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\n\
         AuthorizedKeysFile {dir}/authorized_keys\nPidFile {dir}/sshd.pid\n\
         StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\nSubsystem sftp {SFTP_SERVER}\n\
         LogLevel VERBOSE\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    // sshd's privilege separation needs this directory (systemd makes it for the machine's
    // own sshd, which the tests never use).
    let _ = std::fs::create_dir_all("/run/sshd");
    let log = dir.join("sshd.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(SSHD)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("start sshd");
    let mut process = Proc {
        name: "sshd".into(),
        child,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = process.child.try_wait() {
            return Err(process.log_text());
        }
        if banner(port).is_some() {
            return Ok(process);
        }
        assert!(
            Instant::now() < deadline,
            "sshd did not answer on port {port} within 20 s:\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The sshd's banner, once it answers on `port`.
fn banner(port: u16) -> Option<()> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buf = [0u8; 8];
    stream.read_exact(&mut buf).ok()?;
    (&buf == b"SSH-2.0-").then_some(())
}

/// SHA-256 of `bytes`, in hex (as `sha256sum` prints it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// `len` seeded random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut bytes = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}
