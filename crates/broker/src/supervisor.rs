//! Supervision of a node's long-running parts (docs/DESIGN.md, lesson L2: the surviving node
//! silently lacked its service). Each service runs under a supervisor that restarts it with
//! backoff when it fails or panics and reports its state — running, restarting (with the last
//! error), or stopped — for `/readyz`, the health reports the restart gate reads, and metrics.
//!
//! Parts that cannot be restarted in place (the consensus driver thread: storage errors are
//! fatal to it by raft-rs's contract) are *watched*: their state is reported the same way.

use crate::metrics::{Metrics, Service as ServiceLabel};
use ferry_gate::{Service, ServiceState};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// First wait before restarting a failed service; doubled per consecutive failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between restarts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A service that ran this long before failing starts over from the shortest backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a service may take to end after shutdown before it is cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What a service attempt returns: `Err` (a sentence) when it failed and should be restarted.
pub type ServiceResult = Result<(), String>;

/// A queue's receiving end, shared by the attempts of the service that drains it (a restarted
/// service takes the same queue).
pub type SharedReceiver<T> = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>;

struct Entry {
    state: ServiceState,
    detail: String,
    restarts: u64,
    /// Held stopped by the test-only fault switch.
    held: bool,
    /// Run by a supervisor (else only watched, and the fault switch cannot stop it).
    supervised: bool,
}

/// Every service of a node and its state. Names are `&'static str` chosen in code.
pub struct Services {
    entries: Mutex<BTreeMap<&'static str, Entry>>,
    /// Wakes supervisors when a fault switch changes.
    changed: Notify,
    /// `ferry_service_up` and `ferry_service_restarts_total`, shared with the registry.
    up: Family<ServiceLabel, Gauge>,
    restarts: Family<ServiceLabel, Counter>,
}

impl Services {
    pub fn new(metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            up: metrics.service_up.clone(),
            restarts: metrics.service_restarts.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Entry>> {
        self.entries
            .lock()
            .expect("never poisoned: no panics under the lock")
    }

    fn set(&self, name: &'static str, state: ServiceState, detail: String) {
        let mut entries = self.lock();
        let entry = entries.entry(name).or_insert(Entry {
            state,
            detail: String::new(),
            restarts: 0,
            held: false,
            supervised: false,
        });
        if state == ServiceState::Restarting {
            entry.restarts += 1;
            self.restarts
                .get_or_create(&ServiceLabel { service: name })
                .inc();
        }
        entry.state = state;
        entry.detail = detail;
        self.up
            .get_or_create(&ServiceLabel { service: name })
            .set(i64::from(state == ServiceState::Running));
    }

    /// Reports the state of a watched (not supervised) part.
    pub fn report(&self, name: &'static str, state: ServiceState, detail: String) {
        let unchanged = self
            .lock()
            .get(name)
            .is_some_and(|e| e.state == state && e.detail == detail);
        if !unchanged {
            self.set(name, state, detail);
        }
    }

    /// Every service and its state, by name.
    pub fn snapshot(&self) -> Vec<Service> {
        self.lock()
            .iter()
            .map(|(name, e)| Service {
                name: (*name).to_owned(),
                state: e.state,
                detail: e.detail.clone(),
                restarts: e.restarts,
            })
            .collect()
    }

    /// Test-only: holds service `name` stopped (its current attempt is cancelled) or lets
    /// its supervisor start it again. `false` when no such service is supervised.
    pub fn hold(&self, name: &str, stopped: bool) -> bool {
        let found = match self
            .lock()
            .iter_mut()
            .find(|(n, e)| **n == name && e.supervised)
        {
            Some((_, entry)) => {
                entry.held = stopped;
                true
            }
            None => false,
        };
        self.changed.notify_waiters();
        found
    }

    fn is_held(&self, name: &str) -> bool {
        self.lock().get(name).is_some_and(|e| e.held)
    }

    /// Runs service `name` until shutdown: each attempt is `start()` in its own task; when it
    /// fails, panics, or returns before shutdown, it is started again after a backoff.
    pub async fn supervise<F, Fut>(
        self: Arc<Self>,
        name: &'static str,
        mut shutdown: watch::Receiver<bool>,
        mut start: F,
    ) where
        F: FnMut() -> Fut,
        Fut: Future<Output = ServiceResult> + Send + 'static,
    {
        self.set(name, ServiceState::Running, String::new());
        if let Some(entry) = self.lock().get_mut(name) {
            entry.supervised = true;
        }
        let mut backoff = BACKOFF_MIN;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Listening before looking, so that a release between the two is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_held(name) {
                self.set(
                    name,
                    ServiceState::Stopped,
                    "stopped by the test-only fault switch".into(),
                );
                tracing::warn!(service = name, "service held stopped by the fault switch");
                tokio::select! {
                    _ = changed => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            self.set(name, ServiceState::Running, String::new());
            let started = Instant::now();
            let mut attempt = tokio::spawn(start());
            let outcome = loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.is_held(name) {
                    attempt.abort();
                    let _ = (&mut attempt).await;
                    break None;
                }
                tokio::select! {
                    joined = &mut attempt => break Some(joined),
                    _ = changed => {
                        if self.is_held(name) {
                            attempt.abort();
                            let _ = (&mut attempt).await;
                            break None;
                        }
                    }
                    _ = shutdown.changed() => {
                        // Attempts watch shutdown too and end on their own (the relay closes
                        // its connections); one that does not is cancelled.
                        if tokio::time::timeout(SHUTDOWN_GRACE, &mut attempt).await.is_err() {
                            attempt.abort();
                        }
                        break None;
                    }
                }
            };
            let error = match outcome {
                _ if *shutdown.borrow() => break,
                None => continue, // held: reported as stopped at the top
                Some(Ok(Ok(()))) => "it ended without being asked to".to_owned(),
                Some(Ok(Err(e))) => e,
                Some(Err(e)) if e.is_panic() => format!("it panicked: {}", panic_message(e)),
                Some(Err(e)) => format!("it was cancelled: {e}"),
            };
            if started.elapsed() >= STABLE_AFTER {
                backoff = BACKOFF_MIN;
            }
            tracing::error!(service = name, %error, retry_in = ?backoff, "service failed; restarting");
            self.set(name, ServiceState::Restarting, error);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.set(
            name,
            ServiceState::Stopped,
            "the node is shutting down".into(),
        );
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait_state(services: &Services, name: &str, want: ServiceState) -> Service {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = services.snapshot().into_iter().find(|s| s.name == name) {
                if s.state == want {
                    return s;
                }
            }
            assert!(Instant::now() < deadline, "{name} never became {want:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn failures_and_panics_are_restarted_and_reported() {
        let services = Services::new(&Metrics::new("t"));
        let (stop, shutdown) = watch::channel(false);
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = attempts.clone();
        let stopping = shutdown.clone();
        let task = tokio::spawn(services.clone().supervise("flaky", shutdown, move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut stopping = stopping.clone();
            async move {
                match n {
                    0 => Err("disk on fire".to_owned()),
                    1 => panic!("boom"),
                    _ => {
                        let _ = stopping.changed().await;
                        Ok(())
                    }
                }
            }
        }));
        let running = wait_state(&services, "flaky", ServiceState::Running).await;
        assert_eq!(running.detail, "");
        while attempts.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let s = wait_state(&services, "flaky", ServiceState::Running).await;
        assert_eq!(s.restarts, 2);
        // Held by the fault switch: stopped, then started again when released.
        assert!(services.hold("flaky", true));
        let s = wait_state(&services, "flaky", ServiceState::Stopped).await;
        assert!(s.detail.contains("fault switch"), "{s:?}");
        assert!(services.hold("flaky", false));
        wait_state(&services, "flaky", ServiceState::Running).await;
        assert!(!services.hold("nonexistent", true));
        stop.send(true).unwrap();
        task.await.unwrap();
        let s = wait_state(&services, "flaky", ServiceState::Stopped).await;
        assert_eq!(s.detail, "the node is shutting down");
    }
}
