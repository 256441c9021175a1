//! Admission control: what a node holds for peers that have not proved who they are, and the
//! limits that keep any one of them from hurting everyone else (docs/SECURITY.md).
//!
//! The rules are pure (`ferry_admission`); this module owns their state on the node, wires
//! them to the clock, the metrics and the log, and carries the login limits to the leader:
//!
//! - **Login attempts** are reserved before a password is verified, on this node (a first
//!   filter) and then on the leader, whose limiter holds for the whole cluster (spreading
//!   guesses over brokers gains nothing). A leader that does not answer (one of an older
//!   version, during a rolling upgrade) leaves the local limits in force. Verification runs
//!   on a bounded pool ([`PasswordPool`]).
//! - **Failed anonymous attempts** (logins, enrollments, resumes) are counted in a ledger and
//!   audited as one summary per node and period (the "failure-audit" service), never one Raft
//!   entry each; enrollments and resumes that keep failing lock their source out for a while.
//! - **Counts per source, user and host** ([`Held`]) cap connections and sessions.
//! - **Refusals** are counted by reason in `ferry_admission_refused_total` and logged at most
//!   once per reason and period.

use crate::context::Ctx;
use ferry_admission::{
    Attempt, Backoff, BackoffPolicy, FailureLedger, FailureSummary, LoginLimiter, Quiet, SourceKey,
    Tally,
};
use ferry_proto::peer::{LoginReserve, LoginVerdict};
use ferry_proto::state::{self as cmd, command::Kind};
use ferry_proto::wire::{self, ErrorCode};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

// The ledger's summaries must fit what the state machine accepts.
const _: () = assert!(ferry_admission::SUMMARY_COUNTS_MAX <= ferry_state::AUTH_FAILURE_COUNTS_MAX);

/// How often the failure-audit service looks whether a period is over.
const FAILURE_AUDIT_TICK: Duration = Duration::from_secs(1);

/// A std mutex's guard; none of these locks is held across an await, and no code panics
/// while holding one.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("never poisoned: no code panics while holding an admission lock")
}

/// The node's admission state (see the module's documentation).
pub struct Admission {
    /// Login reservations: this node's own, and the cluster's when this node leads.
    login: Mutex<LoginLimiter>,
    /// Where passwords are verified, a bounded number at once.
    pub passwords: PasswordPool,
    /// Failed anonymous attempts of the current period.
    ledger: Mutex<FailureLedger>,
    /// Failed enrollments and resumes per source, which lock the source out of them.
    anonymous: Mutex<Backoff<SourceKey>>,
    /// QUIC connections open per source (`limits.connections_per_source_max`).
    pub connections: Counts<SourceKey>,
    /// Unauthenticated connections per source (`limits.unauthenticated_per_source_max`).
    pub unauthenticated: Counts<SourceKey>,
    /// Sessions relayed here per user and per host (`limits.sessions_per_{user,host}_max`).
    pub user_sessions: Counts<String>,
    pub host_sessions: Counts<String>,
    /// One log line per refusal reason and period.
    quiet: Mutex<Quiet>,
}

impl Admission {
    pub fn new(limits: &crate::config::Limits) -> Self {
        let now = Instant::now();
        Self {
            login: Mutex::new(LoginLimiter::new(limits.login())),
            passwords: PasswordPool::new(limits.password_workers(), limits.password_queue_max),
            ledger: Mutex::new(FailureLedger::new(
                Duration::from_secs(limits.failure_audit_period_secs),
                now,
            )),
            anonymous: Mutex::new(Backoff::new(BackoffPolicy {
                failures_max: limits.anonymous_failures_per_source_max,
                lockout: Duration::from_secs(limits.login_lockout_secs),
                lockout_max: Duration::from_secs(limits.login_lockout_max_secs),
            })),
            connections: Counts::new(limits.connections_per_source_max),
            unauthenticated: Counts::new(limits.unauthenticated_per_source_max),
            user_sessions: Counts::new(limits.sessions_per_user_max),
            host_sessions: Counts::new(limits.sessions_per_host_max),
            quiet: Mutex::new(Quiet::new(Duration::from_secs(
                limits.refusal_log_period_secs,
            ))),
        }
    }
}

/// Counts one refusal by `reason`, and logs it unless one of that reason was logged within
/// the period.
pub fn refused(ctx: &Ctx, reason: &'static str, detail: impl std::fmt::Display) {
    ctx.metrics.refuse_admission(reason);
    if let Some(unlogged) = lock(&ctx.admission.quiet).log(reason, Instant::now()) {
        tracing::warn!(
            reason,
            %detail,
            unlogged_since_last = unlogged,
            "refused (logged at most once per reason and period; every one is counted in \
             ferry_admission_refused_total)"
        );
    }
}

/// Counts one failed anonymous attempt from `source` naming `name` (validated by the caller,
/// or [`ferry_state::INVALID_NAME`]). A failed enrollment or resume also counts toward its
/// source's lockout.
pub fn failed(ctx: &Ctx, source: IpAddr, attempt: Attempt, name: &str) {
    let source = SourceKey::of(source);
    lock(&ctx.admission.ledger).record(source, attempt, name);
    if attempt != Attempt::Login {
        lock(&ctx.admission.anonymous).fail(&source, Instant::now());
    }
}

/// Refuses an enrollment or resume from a source locked out for failing too often.
pub fn check_anonymous(ctx: &Ctx, source: IpAddr) -> Result<(), wire::Error> {
    let key = SourceKey::of(source);
    let Some(left) = lock(&ctx.admission.anonymous).locked_for(&key, Instant::now()) else {
        return Ok(());
    };
    refused(ctx, "anonymous_failures_per_source", key);
    Err(wire::Error::new(
        ErrorCode::ResourceExhausted,
        format!(
            "too many failed enrollments or resumes from {key}; try again in {} s",
            left.as_secs() + 1
        ),
    ))
}

/// The name a failure is counted under: `name` when it is a valid name of `kind`, otherwise
/// a placeholder (an attacker's bytes never reach the replicated audit log).
pub fn counted_name(kind: ferry_state::NameKind, name: &str) -> &str {
    match ferry_state::validate_name(kind, name) {
        Ok(()) => name,
        Err(_) => ferry_state::INVALID_NAME,
    }
}

/// Reserves a login attempt of `user` from `source` (see the module's documentation): `Ok`
/// when its password may be verified.
pub async fn reserve_login(ctx: &Ctx, user: &str, source: IpAddr) -> Result<(), wire::Error> {
    let refuse = |scope: &'static str, message: String| {
        refused(ctx, scope, format_args!("login for {user:?} from {source}"));
        wire::Error::new(ErrorCode::ResourceExhausted, message)
    };
    let reserved = lock(&ctx.admission.login).reserve(user, SourceKey::of(source), Instant::now());
    if let Err(r) = reserved {
        return Err(refuse(login_reason(r.scope), r.message));
    }
    if crate::gate::is_leader(ctx) {
        return Ok(());
    }
    let request = LoginReserve {
        user: user.to_owned(),
        source: source.to_string(),
        succeeded: false,
    };
    match ask_leader(ctx, &request).await {
        // The local reservation stays counted: a refused attempt counts as a failure here too.
        Some(verdict) if !verdict.refusal.is_empty() => {
            Err(refuse("login_cluster", verdict.refusal))
        }
        Some(_) => Ok(()),
        None => {
            refused(
                ctx,
                "login_leader_unanswered",
                "the leader did not answer a login reservation; this node's limits apply",
            );
            Ok(())
        }
    }
}

/// A reserved attempt verified: forgiven here and at the leader (told without waiting).
pub fn login_succeeded(ctx: &Arc<Ctx>, user: &str, source: IpAddr) {
    lock(&ctx.admission.login).succeeded(user, SourceKey::of(source));
    if crate::gate::is_leader(ctx) {
        return;
    }
    let (ctx, request) = (
        ctx.clone(),
        LoginReserve {
            user: user.to_owned(),
            source: source.to_string(),
            succeeded: true,
        },
    );
    tokio::spawn(async move { ask_leader(&ctx, &request).await });
}

/// On the leader: answers a peer's login reservation from this node's limiter.
pub fn answer_login(ctx: &Ctx, request: LoginReserve) -> LoginVerdict {
    if !crate::gate::is_leader(ctx) {
        return LoginVerdict {
            not_leader: true,
            ..Default::default()
        };
    }
    let Ok(source) = request.source.parse::<IpAddr>() else {
        return LoginVerdict {
            refusal: format!("unreadable source address {:?}", request.source),
            scope: "invalid".into(),
            not_leader: false,
        };
    };
    let mut limiter = lock(&ctx.admission.login);
    if request.succeeded {
        limiter.succeeded(&request.user, SourceKey::of(source));
        return LoginVerdict::default();
    }
    match limiter.reserve(&request.user, SourceKey::of(source), Instant::now()) {
        Ok(()) => LoginVerdict::default(),
        Err(r) => LoginVerdict {
            refusal: r.message,
            scope: r.scope.label().into(),
            not_leader: false,
        },
    }
}

/// The leader's verdict on `request`; `None` when there is no leader, it cannot be reached,
/// or it does not answer.
async fn ask_leader(ctx: &Ctx, request: &LoginReserve) -> Option<LoginVerdict> {
    let leader = ctx
        .replica
        .status()
        .leader
        .load(std::sync::atomic::Ordering::Acquire);
    let peers = ctx.peers.as_ref()?;
    if leader == 0 {
        return None;
    }
    peers
        .reserve_login(leader, request)
        .await
        .filter(|v| !v.not_leader)
}

fn login_reason(scope: ferry_admission::Scope) -> &'static str {
    match scope {
        ferry_admission::Scope::Source => "login_per_source",
        ferry_admission::Scope::SourceAndUser => "login_per_source_user",
        ferry_admission::Scope::User => "login_per_user",
    }
}

/// Service "failure-audit": proposes the ledger's summary once per period, when anything
/// failed (one Raft entry and one audit record per node and period, however many attempts).
pub async fn audit_failures(
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) -> crate::supervisor::ServiceResult {
    let mut tick = tokio::time::interval(FAILURE_AUDIT_TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        // A node of an older version would apply the summary as an unknown command (a no-op)
        // while the others record it: keep counting until every member knows it.
        if !every_member_knows_summaries(&ctx) {
            continue;
        }
        let due = lock(&ctx.admission.ledger).take_due(Instant::now());
        if let Some(summary) = due {
            let command = summary_command(&ctx.config.node_id, &summary);
            let actor = format!("node:{}", ctx.config.node_id);
            if let Err(e) = ctx.proposer.propose(actor, String::new(), command).await {
                tracing::warn!(error = %e, "could not audit the failed attempts of the last period");
            }
        }
    }
}

/// The first release whose state machine applies `AuthFailures`.
const SUMMARIES_SINCE: (u64, u64) = (0, 9);

/// Whether every other member's latest health report names a version that applies
/// `AuthFailures` (a member not heard from yet counts as not knowing it).
fn every_member_knows_summaries(ctx: &Ctx) -> bool {
    let mut others: std::collections::BTreeSet<String> =
        ctx.config.peers.iter().map(|p| p.node_id.clone()).collect();
    {
        let state = ctx.replica.read();
        others.extend(
            state
                .members()
                .filter(|m| !state.is_retired(m.raft_id))
                .map(|m| m.node_id.clone()),
        );
    }
    others.remove(&ctx.config.node_id);
    others.iter().all(|node| {
        ctx.health
            .reports
            .get(node)
            .is_some_and(|(report, _)| release_of(&report.version) >= Some(SUMMARIES_SINCE))
    })
}

/// (major, minor) of a reported version, "0.9.0 (commit)".
fn release_of(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split([' ', '.']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn summary_command(node: &str, summary: &FailureSummary) -> Kind {
    Kind::AuthFailures(cmd::AuthFailures {
        node: node.to_owned(),
        period_ms: summary.period.as_millis() as u64,
        counts: summary
            .counts
            .iter()
            .map(|c| cmd::AuthFailureCount {
                source: c.source.to_string(),
                attempt: c.attempt.as_str().into(),
                name: c.name.clone(),
                count: c.count,
            })
            .collect(),
        other_attempts: summary.other_attempts,
        other_sources: summary.other_sources,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn releases_are_read_from_reported_versions() {
        use super::release_of;
        assert_eq!(release_of("0.9.0 (9e21c33abcde)"), Some((0, 9)));
        assert_eq!(release_of("0.10.2 (unknown)"), Some((0, 10)));
        assert!(release_of("0.8.0 (c5adec0)") < Some(super::SUMMARIES_SINCE));
        assert_eq!(release_of(""), None);
    }
}

/// Counts per key under a cap, shared across tasks; [`Counts::hold`] counts one for as long
/// as the returned guard lives.
#[derive(Clone)]
pub struct Counts<K>(Arc<Mutex<Tally<K>>>);

impl<K: std::hash::Hash + Eq + Clone> Counts<K> {
    fn new(max_per_key: usize) -> Self {
        Self(Arc::new(Mutex::new(Tally::new(max_per_key))))
    }

    /// One more for `key`, released when the guard drops; `None` when `key` holds its
    /// maximum.
    pub fn hold(&self, key: K) -> Option<Held<K>> {
        lock(&self.0).try_add(&key).then(|| Held {
            counts: self.clone(),
            key,
        })
    }
}

/// One counted thing; dropping it releases the count.
pub struct Held<K: std::hash::Hash + Eq + Clone> {
    counts: Counts<K>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        lock(&self.counts.0).remove(&self.key);
    }
}

/// Runs password hashing and verification (argon2id: ~19 MiB and tens of milliseconds each)
/// on at most `workers` threads at once, with at most `queue_max` more waiting: memory and
/// CPU spent on passwords are bounded whatever arrives.
pub struct PasswordPool {
    workers: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue_max: usize,
}

impl PasswordPool {
    fn new(workers: usize, queue_max: usize) -> Self {
        Self {
            workers: Arc::new(Semaphore::new(workers.max(1))),
            waiting: AtomicUsize::new(0),
            queue_max,
        }
    }

    /// Runs `work` on a worker once one is free, or refuses at once when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        ctx: &Ctx,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, wire::Error> {
        let busy = || {
            refused(
                ctx,
                "password_queue",
                "every password worker busy, queue full",
            );
            wire::Error::new(
                ErrorCode::ResourceExhausted,
                "this broker is busy checking passwords; try again in a moment",
            )
        };
        // `waiting` counts every caller between here and its permit (a guard, so that a caller
        // dropped while it waits is counted out too).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let waiting = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_max {
            return Err(busy());
        }
        let permit = self.workers.clone().acquire_owned().await;
        drop(waiting);
        let permit = permit.expect("never closed: the pool owns its semaphore");
        ctx.metrics.password_checks.inc();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|_| busy())
    }
}
