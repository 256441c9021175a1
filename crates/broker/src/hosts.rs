//! Host agents attached to this node: name -> live QUIC connection and exposed services.

use std::collections::HashMap;
use std::sync::Mutex;

/// One attached host agent.
#[derive(Clone)]
pub struct AttachedHost {
    pub conn: quinn::Connection,
    /// Services the agent exposes (names only; the agent alone knows their local addresses).
    pub services: Vec<String>,
    /// SHA-256 of the credential it attached with: when the state no longer accepts it (the
    /// host was removed or re-enrolled), the agent is disconnected.
    pub credential_hash: Vec<u8>,
    /// The agent process (`Attach.instance`), to tell its reconnection from a second agent.
    pub instance: u64,
}

/// The hosts attached to this node. At most one connection per host name: a host that
/// reconnects replaces its previous connection, which is closed.
#[derive(Default)]
pub struct HostRegistry {
    hosts: Mutex<HashMap<String, AttachedHost>>,
}

impl HostRegistry {
    /// Registers `host` under `name`, returning the connection it replaced, if any.
    pub fn attach(&self, name: &str, host: AttachedHost) -> Option<quinn::Connection> {
        self.lock()
            .insert(name.to_owned(), host)
            .map(|old| old.conn)
    }

    /// Removes `name` if it is still registered with connection `stable_id` (a newer connection
    /// of the same host must not be removed by the old one's cleanup).
    pub fn detach(&self, name: &str, stable_id: usize) {
        let mut hosts = self.lock();
        if hosts
            .get(name)
            .is_some_and(|h| h.conn.stable_id() == stable_id)
        {
            hosts.remove(name);
        }
    }

    pub fn get(&self, name: &str) -> Option<AttachedHost> {
        self.lock().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AttachedHost>> {
        self.hosts
            .lock()
            .expect("no code panics while holding the host registry lock")
    }
}
