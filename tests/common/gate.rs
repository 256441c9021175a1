//! Helpers for the restart-gate tests: clusters with a short stabilization time, waiting for
//! health, and polling `ferry admin restart-check` until it gives the expected answer.

use super::*;

impl World {
    /// Appends `text` to node `name`'s config file (before it starts).
    pub fn append_config(&self, name: &str, text: &str) {
        let path = self.cluster().join(format!("{name}.toml"));
        let mut config = std::fs::read_to_string(&path).unwrap();
        config.push_str(text);
        std::fs::write(path, config).unwrap();
    }

    /// Replaces `from` with `to` in node `name`'s config file (a default `ferry init` wrote).
    pub fn edit_config(&self, name: &str, from: &str, to: &str) {
        let path = self.cluster().join(format!("{name}.toml"));
        let config = std::fs::read_to_string(&path).unwrap();
        assert!(config.contains(from), "{name}.toml has no {from:?}");
        std::fs::write(path, config.replacen(from, to, 1)).unwrap();
    }

    /// Sets `[limits] key = value` in node `name`'s config file (before it starts).
    pub fn set_limit(&self, name: &str, key: &str, value: &str) {
        self.edit_config(name, "[limits]\n", &format!("[limits]\n{key} = {value}\n"));
    }

    /// Waits for an audit record of `action` whose outcome contains every fragment, and
    /// returns it.
    pub fn wait_for_audit(&self, action: &str, fragments: &[&str]) -> serde_json::Value {
        wait_for(
            &format!("an audit record {action} with {fragments:?}"),
            Duration::from_secs(15),
            || {
                let out = self.admin(&["audit", "--json"]);
                let audit: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
                audit["records"].as_array()?.iter().find_map(|r| {
                    let outcome = r["outcome"].as_str()?;
                    (r["action"] == action && fragments.iter().all(|f| outcome.contains(f)))
                        .then(|| r.clone())
                })
            },
        )
    }

    /// `ferry admin status --json` (the cluster as the first answering broker sees it).
    pub fn cluster_status(&self) -> Option<serde_json::Value> {
        let out = self.admin(&["status", "--json"]);
        (out.code == 0)
            .then(|| serde_json::from_str(&out.stdout).ok())
            .flatten()
    }

    /// Waits until the cluster has a leader and every one of its `nodes` nodes is healthy.
    pub fn wait_healthy(&self, nodes: usize) -> serde_json::Value {
        wait_for("every node healthy", Duration::from_secs(30), || {
            let status = self.cluster_status()?;
            let list = status["nodes"].as_array()?;
            let healthy = list.len() == nodes
                && list.iter().all(|n| n["healthy"] == true)
                && status["leader"].is_string();
            healthy.then_some(status)
        })
    }

    /// Polls `ferry admin restart-check NODE` until it exits `code` with every fragment in its
    /// output; panics with the last answer at the deadline.
    pub fn restart_check_until(&self, node: &str, code: i32, fragments: &[&str]) -> Output {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.admin(&["restart-check", node]);
            if out.code == code && fragments.iter().all(|f| out.stdout.contains(f)) {
                eprintln!("restart-check {node} (exit {code}):\n{}", out.stdout);
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "restart-check {node} never exited {code} mentioning {fragments:?}; last: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Gate settings for tests: a short stabilization time, and the test-only fault switch.
pub const GATE_TEST_CONFIG: &str = "\n[gate]\nstabilization_secs = 1\n\n[faults]\nenabled = true\n";
