//! Maintenance leases: which node an operator has taken out of service (docs/DESIGN.md
//! section 6.4).
//!
//! The restart gate itself needs facts no state machine may read (health, memory, clocks), so
//! the leader evaluates it just before proposing `AcquireLease`. The one part of the gate that
//! depends only on replicated state, "one at a time", is checked again here when the command
//! is applied: two leases proposed at once are ordered by the log and the second is refused,
//! naming the holder of the first.

use crate::{Outcome, Refusal, RefusalKind, StateMachine};
use ferry_proto::state::{self as pb, MaintenanceLease};

impl StateMachine {
    pub(crate) fn acquire_lease(
        &mut self,
        c: &pb::AcquireLease,
        holder: &str,
        now: u64,
    ) -> Result<Outcome, Refusal> {
        crate::validate_name(crate::NameKind::Node, &c.node)?;
        if let Some(lease) = self.leases.get_mut(&c.node) {
            // Draining the same node again: a retried command changes nothing, but a node
            // restarted since the lease was taken (another process) must drain again, so the
            // lease is renewed for its new process.
            if c.boot_id != lease.boot_id {
                lease.boot_id = c.boot_id;
                lease.since_ms = now;
                holder.clone_into(&mut lease.holder);
            }
            if c.forced && !lease.forced {
                lease.forced = true;
                lease.failed_checks.clone_from(&c.failed_checks);
            }
            return Ok(Outcome::Applied);
        }
        let other = self.leases.values().find(|l| l.node != c.node);
        if let (Some(other), false) = (other, c.forced) {
            return Err(Refusal::new(
                RefusalKind::AlreadyUsed,
                format!(
                    "one at a time: node {} is under maintenance (lease taken by {}); \
                     wait until it is back, or `ferry admin undrain {}`",
                    other.node, other.holder, other.node
                ),
            ));
        }
        self.leases.insert(
            c.node.clone(),
            MaintenanceLease {
                node: c.node.clone(),
                holder: holder.to_owned(),
                since_ms: now,
                forced: c.forced,
                failed_checks: c.failed_checks.clone(),
                boot_id: c.boot_id,
            },
        );
        Ok(Outcome::Applied)
    }

    pub(crate) fn release_lease(&mut self, c: &pb::ReleaseLease) -> Result<Outcome, Refusal> {
        let lease = self.leases.get(&c.node).ok_or_else(|| {
            Refusal::new(
                RefusalKind::NotFound,
                format!("node {} holds no maintenance lease", c.node),
            )
        })?;
        if c.since_ms != 0 && c.since_ms != lease.since_ms {
            return Err(Refusal::new(
                RefusalKind::AlreadyUsed,
                format!(
                    "node {}'s maintenance lease was renewed since; it stays held",
                    c.node
                ),
            ));
        }
        self.leases.remove(&c.node);
        Ok(Outcome::Applied)
    }

    /// Nodes under maintenance, by node id.
    pub fn leases(&self) -> impl Iterator<Item = &MaintenanceLease> {
        self.leases.values()
    }

    pub fn lease(&self, node: &str) -> Option<&MaintenanceLease> {
        self.leases.get(node)
    }
}
