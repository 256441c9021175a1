use super::*;
use ferry_proto::state as pb;

const T0: u64 = 1_700_000_000_000;

fn cmd(now_ms: u64, kind: Kind) -> Command {
    Command {
        now_ms,
        actor: "test".into(),
        source: "127.0.0.1:1".into(),
        kind: Some(kind),
    }
}

fn add_user(name: &str, groups: &[&str]) -> Kind {
    Kind::AddUser(pb::AddUser {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        password_hash: "$argon2id$fake".into(),
    })
}

fn create_host(name: &str, groups: &[&str], token: &str) -> Kind {
    Kind::CreateHost(pb::CreateHost {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        enrollment_token_hash: hash_secret(token),
        enrollment_expires_at_ms: T0 + 1000,
    })
}

fn enroll(name: &str, token: &str, credential: &str) -> Kind {
    Kind::CompleteEnrollment(pb::CompleteEnrollment {
        name: name.into(),
        enrollment_token_hash: hash_secret(token),
        credential_hash: hash_secret(credential),
    })
}

fn grant(u: &str, h: &str) -> Kind {
    Kind::AddGrant(pb::AddGrant {
        user_group: u.into(),
        host_group: h.into(),
        services: vec![],
    })
}

fn open(user: &str, host: &str) -> Kind {
    Kind::OpenSession(pb::OpenSession {
        user: user.into(),
        host: host.into(),
        service: "ssh".into(),
        broker: "b1".into(),
        resume_secret_hash: hash_secret("resume"),
        token_hash: hash_secret("token"),
    })
}

/// Applies `steps` in order to a fresh state; each step says which outcome it expects
/// (`Ok(())` for applied, `Err(fragment)` for a refusal mentioning `fragment`).
fn check(steps: Vec<(u64, Kind, Result<(), &str>)>) -> StateMachine {
    let mut state = StateMachine::new();
    for (i, (now, kind, want)) in steps.into_iter().enumerate() {
        let outcome = state.apply(&cmd(now, kind.clone()));
        match (&outcome, want) {
            (Outcome::Refused(r), Err(fragment)) => assert!(
                r.message.contains(fragment),
                "step {i} {kind:?}: refusal {:?} should mention {fragment:?}",
                r.message
            ),
            (Outcome::Refused(r), Ok(())) => panic!("step {i} {kind:?}: refused: {}", r.message),
            (_, Err(fragment)) => panic!("step {i} {kind:?}: applied, wanted refusal {fragment:?}"),
            (_, Ok(())) => {}
        }
    }
    state
}

#[test]
fn enrollment_grants_and_sessions() {
    let state = check(vec![
        (T0, add_user("alice", &["staff"]), Ok(())),
        (T0, add_user("alice", &["staff"]), Err("already exists")),
        (
            T0,
            add_user("bad name", &["staff"]),
            Err("may contain only"),
        ),
        (T0, add_user("bob", &[]), Err("at least one group")),
        (T0, create_host("pc1", &["lab"], "tok"), Ok(())),
        (
            T0,
            enroll("pc1", "wrong", "cred"),
            Err("wrong enrollment token"),
        ),
        (T0, enroll("nope", "tok", "cred"), Err("unknown host")),
        (
            T0,
            open("alice", "pc1"),
            Err("has not completed enrollment"),
        ),
        (T0, enroll("pc1", "tok", "cred"), Ok(())),
        (T0, enroll("pc1", "tok", "cred"), Err("works once")),
        (T0, open("alice", "pc1"), Err("not granted")),
        (T0, grant("staff", "lab"), Ok(())),
        (T0, open("alice", "pc1"), Ok(())),
        (T0, open("mallory", "pc1"), Err("unknown user")),
        (T0, open("alice", "pc9"), Err("unknown host")),
        (T0, create_host("pc2", &["lab"], "t2"), Ok(())),
        (T0 + 5000, enroll("pc2", "t2", "c2"), Err("expired")),
    ]);
    assert_eq!(state.counts().sessions_open, 1);
    assert!(state
        .check_host_credential("pc1", &hash_secret("cred"))
        .is_ok());
    assert!(state
        .check_host_credential("pc1", &hash_secret("other"))
        .is_err());
    // Every command left an audit record, refusals included.
    assert_eq!(state.counts().audit_records, 17);
}

fn resume(id: u64, broker: &str, secret: &str) -> Kind {
    Kind::ResumeSession(pb::ResumeSession {
        session_id: id,
        broker: broker.into(),
        resume_secret_hash: hash_secret(secret),
    })
}

fn detach(id: u64, broker: &str, resumes: u32) -> Kind {
    Kind::DetachSession(pb::DetachSession {
        session_id: id,
        broker: broker.into(),
        reason: "path broke".into(),
        resumes,
    })
}

#[test]
fn sessions_detach_resume_and_expire() {
    let state = check(vec![
        (T0, add_user("alice", &["staff"]), Ok(())),
        (T0, create_host("pc1", &["lab"], "tok"), Ok(())),
        (T0, enroll("pc1", "tok", "cred"), Ok(())),
        (T0, grant("staff", "lab"), Ok(())),
        (T0, open("alice", "pc1"), Ok(())), // session 1, through b1
        (T0 + 10, detach(1, "b1", 0), Ok(())),
        (
            T0 + 20,
            resume(1, "b2", "wrong"),
            Err("wrong resume secret"),
        ),
        (T0 + 30, resume(1, "b2", "resume"), Ok(())),
        // b1's report that its path broke arrives after the resume through b2: ignored.
        (T0 + 40, detach(1, "b1", 0), Ok(())),
        (T0 + 41, resume(1, "b2", "resume"), Ok(())),
        // b2's report about its first path arrives after the second resume through b2.
        (T0 + 42, detach(1, "b2", 1), Ok(())),
        (
            T0 + 50,
            resume(9, "b2", "resume"),
            Err("has ended or expired"),
        ),
        (T0 + 60, open("alice", "pc1"), Ok(())), // session 2
        (T0 + 70, detach(2, "b1", 0), Ok(())),
    ]);
    let s1 = state.session(1).expect("open");
    assert_eq!(
        (s1.broker.as_str(), s1.detached_at_ms, s1.resumes),
        ("b2", 0, 2)
    );
    assert!(state.may_resume(1, &hash_secret("resume")).is_ok());
    assert!(state.may_resume(1, &hash_secret("nope")).is_err());
    let expired = |now| {
        state
            .sessions_expired(now, 1000)
            .map(|s| s.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(expired(T0 + 1069), Vec::<u64>::new());
    assert_eq!(expired(T0 + 1070), vec![2]);
    // The refused resume is in the audit log, with its reason.
    assert!(state
        .audit_after(0, 100)
        .any(|r| r.action == "session.resume" && r.outcome.contains("wrong resume secret")));
}

#[test]
fn tokens_expire_and_are_bounded_per_user() {
    let mut state = check(vec![(T0, add_user("alice", &["staff"]), Ok(()))]);
    for i in 0..(TOKENS_PER_USER_MAX as u64 + 10) {
        state.apply(&cmd(
            T0,
            Kind::IssueToken(pb::IssueToken {
                user: "alice".into(),
                token_hash: hash_secret(&format!("t{i}")),
                expires_at_ms: T0 + 1000 + i,
            }),
        ));
    }
    assert_eq!(state.counts().tokens, TOKENS_PER_USER_MAX);
    let newest = hash_secret(&format!("t{}", TOKENS_PER_USER_MAX + 9));
    assert!(matches!(state.check_token(&newest, T0), TokenCheck::Valid(u) if u.name == "alice"));
    assert_eq!(
        state.check_token(&hash_secret("t0"), T0),
        TokenCheck::Unknown
    );
    assert_eq!(
        state.check_token(&newest, T0 + 100_000),
        TokenCheck::Expired
    );
    state.apply(&cmd(T0 + 100_000, Kind::PurgeExpired(pb::PurgeExpired {})));
    assert_eq!(state.counts().tokens, 0);
}

#[test]
fn snapshot_restores_an_identical_state() {
    let state = check(vec![
        (T0, add_user("alice", &["staff"]), Ok(())),
        (T0, create_host("pc1", &["lab"], "tok"), Ok(())),
        (T0, enroll("pc1", "tok", "cred"), Ok(())),
        (T0, grant("staff", "lab"), Ok(())),
        (T0, open("alice", "pc1"), Ok(())),
    ]);
    let restored = StateMachine::restore(state.snapshot()).unwrap();
    assert_eq!(restored, state);
    let mut bad = state.snapshot();
    bad.format_version = 99;
    assert!(matches!(
        StateMachine::restore(bad),
        Err(RestoreError::Version { found: 99 })
    ));
    let mut bad = state.snapshot();
    bad.next_session_id = 1;
    assert!(matches!(
        StateMachine::restore(bad),
        Err(RestoreError::Inconsistent(_))
    ));
}

/// Random command sequences: applying them twice gives identical states (determinism), and a
/// snapshot taken midway plus the remaining commands gives the same final state.
#[test]
fn replay_is_deterministic_from_any_snapshot() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("seed {seed} (re-run with FERRY_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let names = ["a", "b", "c", "d"];
    let commands: Vec<Command> = (0..2000)
        .map(|i| {
            let n = names[rng.gen_range(0..names.len())];
            let g = names[rng.gen_range(0..names.len())];
            let now = T0 + i * 10;
            let kind = match rng.gen_range(0..8) {
                0 => add_user(n, &[g]),
                1 => create_host(n, &[g], n),
                2 => enroll(n, n, n),
                3 => grant(n, g),
                4 => open(n, g),
                5 => Kind::CloseSession(pb::CloseSession {
                    session_id: rng.gen_range(0..20),
                    ..Default::default()
                }),
                6 => Kind::IssueToken(pb::IssueToken {
                    user: n.into(),
                    token_hash: hash_secret(&i.to_string()),
                    expires_at_ms: now + rng.gen_range(0..500),
                }),
                _ => Kind::PurgeExpired(pb::PurgeExpired {}),
            };
            cmd(now, kind)
        })
        .collect();
    let run = |from: StateMachine, cmds: &[Command]| {
        let mut s = from;
        let outcomes: Vec<Outcome> = cmds.iter().map(|c| s.apply(c)).collect();
        (s, outcomes)
    };
    let (a, outcomes_a) = run(StateMachine::new(), &commands);
    let (b, outcomes_b) = run(StateMachine::new(), &commands);
    assert_eq!(a, b, "seed {seed}");
    assert_eq!(outcomes_a, outcomes_b, "seed {seed}");
    let cut = rng.gen_range(0..commands.len());
    let (mid, _) = run(StateMachine::new(), &commands[..cut]);
    let restored = StateMachine::restore(mid.snapshot()).expect("own snapshot restores");
    let (c, _) = run(restored, &commands[cut..]);
    assert_eq!(a, c, "seed {seed}, cut {cut}");
}

fn membership(action: MembershipAction, raft_id: u64, node_id: &str) -> Kind {
    let retire_node_id = action == MembershipAction::Remove;
    Kind::ChangeMembership(pb::ChangeMembership {
        action: action as i32,
        member: Some(Member {
            raft_id,
            node_id: node_id.into(),
            peer_addr: "127.0.0.1:7142".into(),
            role: MemberRole::Broker as i32,
            voter: false,
            relay_addr: String::new(),
        }),
        forced: false,
        reason: String::new(),
        retire_node_id,
    })
}

/// The directory changes only through `apply_membership` (called with a configuration change),
/// survives a snapshot, and remembers removed raft ids for good.
#[test]
fn member_directory_follows_configuration_changes_only() {
    let mut state = StateMachine::new();
    let add = cmd(T0, membership(MembershipAction::AddLearner, 4, "b4"));
    assert!(matches!(state.apply(&add), Outcome::Refused(_)));
    assert_eq!(
        state.members().count(),
        0,
        "a plain entry must not add a member"
    );

    assert_eq!(state.apply_membership(&add), Outcome::Applied);
    let promote = cmd(T0, membership(MembershipAction::Promote, 4, "b4"));
    assert_eq!(state.apply_membership(&promote), Outcome::Applied);
    assert!(state.member(4).unwrap().voter);
    let restored = StateMachine::restore(state.snapshot()).unwrap();
    assert_eq!(restored, state);

    let remove = cmd(T0, membership(MembershipAction::Remove, 4, "b4"));
    assert_eq!(state.apply_membership(&remove), Outcome::Applied);
    assert!(state.member(4).is_none());
    assert!(state.is_retired(4));
    assert!(
        state.is_node_retired("b4"),
        "no member carries its name: retired"
    );
    let restored = StateMachine::restore(state.snapshot()).unwrap();
    assert!(restored.is_retired(4));
    assert!(restored.is_node_retired("b4"));
    // A node replaced under a new raft id keeps its name: its old id is removed first, as
    // rejoin.rs does, by a removal that does not retire the name.
    let mut replaced = StateMachine::new();
    let mut keep_name = membership(MembershipAction::Remove, 5, "b5");
    if let Kind::ChangeMembership(c) = &mut keep_name {
        c.retire_node_id = false;
    }
    for change in [
        membership(MembershipAction::AddLearner, 5, "b5"),
        keep_name,
        membership(MembershipAction::AddLearner, 6, "b5"),
    ] {
        assert_eq!(
            replaced.apply_membership(&cmd(T0, change)),
            Outcome::Applied
        );
    }
    assert!(replaced.is_retired(5) && !replaced.is_node_retired("b5"));
    // Removed for good later (an operator's `member remove`): the name goes with it.
    let remove = cmd(T0, membership(MembershipAction::Remove, 6, "b5"));
    assert_eq!(replaced.apply_membership(&remove), Outcome::Applied);
    assert!(replaced.is_node_retired("b5"));
    let actions: Vec<_> = state
        .audit_after(0, 100)
        .map(|r| r.action.clone())
        .collect();
    assert_eq!(
        actions,
        [
            "member.refused",
            "member.add",
            "member.promote",
            "member.remove"
        ]
    );
}

fn acquire(node: &str, forced: bool, failed: &[&str]) -> Kind {
    acquire_on(node, 7, forced, failed)
}

fn acquire_on(node: &str, boot_id: u64, forced: bool, failed: &[&str]) -> Kind {
    Kind::AcquireLease(pb::AcquireLease {
        node: node.into(),
        forced,
        failed_checks: failed.iter().map(|f| f.to_string()).collect(),
        boot_id,
    })
}

fn release(node: &str) -> Kind {
    release_taken_at(node, 0)
}

fn release_taken_at(node: &str, since_ms: u64) -> Kind {
    Kind::ReleaseLease(pb::ReleaseLease {
        node: node.into(),
        reason: "undrained".into(),
        since_ms,
    })
}

#[test]
fn maintenance_leases_are_one_at_a_time_unless_forced() {
    let state = check(vec![
        (T0, acquire("b1", false, &[]), Ok(())),
        // The same node again is harmless (a retried drain).
        (T0 + 1, acquire("b1", false, &[]), Ok(())),
        // A second node while b1 is away: refused, naming the holder.
        (
            T0 + 2,
            acquire("b2", false, &[]),
            Err("node b1 is under maintenance (lease taken by test)"),
        ),
        (T0 + 3, acquire("bad name!", false, &[]), Err("node")),
        (T0 + 4, release("b2"), Err("b2 holds no maintenance lease")),
        (T0 + 5, release("b1"), Ok(())),
        (T0 + 6, acquire("b2", false, &[]), Ok(())),
        // Forced past the one-at-a-time rule: proceeds, and the audit says which checks failed.
        (T0 + 7, acquire("b3", true, &["quorum: w1 is down"]), Ok(())),
        // b3 restarted (another process) and is drained again: the lease is renewed...
        (T0 + 8, acquire_on("b3", 8, false, &[]), Ok(())),
        // ...so a release decided about the old lease leaves it held.
        (
            T0 + 9,
            release_taken_at("b3", T0 + 7),
            Err("was renewed since"),
        ),
    ]);
    let leases: Vec<_> = state
        .leases()
        .map(|l| (l.node.as_str(), l.since_ms, l.forced))
        .collect();
    assert_eq!(leases, vec![("b2", T0 + 6, false), ("b3", T0 + 8, true)]);
    assert_eq!(state.lease("b3").unwrap().boot_id, 8);
    let forced = state
        .audit_after(0, 100)
        .find(|r| r.action == "maintenance.acquire.forced")
        .expect("audited")
        .clone();
    assert_eq!(forced.action, "maintenance.acquire.forced");
    assert_eq!(forced.target, "b3");
    assert_eq!(
        forced.outcome,
        "ok, FORCED past failing checks: quorum: w1 is down"
    );
    // Leases survive a snapshot.
    let restored = StateMachine::restore(state.snapshot()).expect("restores");
    assert_eq!(restored, state);
}

fn issue(user: &str, token: &str) -> Kind {
    Kind::IssueToken(pb::IssueToken {
        user: user.into(),
        token_hash: hash_secret(token),
        expires_at_ms: T0 + 60_000,
    })
}

fn revoke(token: &str) -> Kind {
    Kind::RevokeToken(pb::RevokeToken {
        token_hash: hash_secret(token),
    })
}

#[test]
fn a_revoked_token_stops_working_and_is_audited_as_its_users_logout() {
    let state = check(vec![
        (T0, add_user("alice", &["staff"]), Ok(())),
        (T0, issue("alice", "t1"), Ok(())),
        (T0, issue("alice", "t2"), Ok(())),
        (T0, revoke("t1"), Ok(())),
        (T0, revoke("t1"), Err("not valid")),
        (T0, revoke("never"), Err("not valid")),
    ]);
    assert_eq!(
        state.check_token(&hash_secret("t1"), T0),
        TokenCheck::Unknown
    );
    assert!(matches!(
        state.check_token(&hash_secret("t2"), T0),
        TokenCheck::Valid(_)
    ));
    let audit: Vec<_> = state.audit_after(0, 100).collect();
    let logout = audit
        .iter()
        .find(|r| r.action == "logout" && r.outcome == "ok")
        .expect("the logout is audited");
    assert_eq!(logout.target, "alice");
}

fn attach(host: &str, broker: &str, services: &[&str]) -> Kind {
    Kind::AttachHost(pb::AttachHost {
        name: host.into(),
        broker: broker.into(),
        services: services.iter().map(|s| s.to_string()).collect(),
        instance: 1,
    })
}

#[test]
fn a_user_reaches_the_enrolled_hosts_of_granted_groups_with_their_services() {
    let state = check(vec![
        (T0, add_user("alice", &["staff"]), Ok(())),
        (T0, add_user("bob", &["guests"]), Ok(())),
        (T0, create_host("pc1", &["lab"], "a"), Ok(())),
        (T0, create_host("pc2", &["lab", "office"], "b"), Ok(())),
        (T0, create_host("pc3", &["office"], "c"), Ok(())),
        (T0, create_host("pc4", &["lab"], "d"), Ok(())),
        (T0, enroll("pc1", "a", "x"), Ok(())),
        (T0, enroll("pc2", "b", "y"), Ok(())),
        (T0, enroll("pc3", "c", "z"), Ok(())),
        (T0, grant("staff", "lab"), Ok(())),
        (T0, attach("pc1", "b1", &["ssh", "vnc"]), Ok(())),
        (T0, attach("pc2", "b2", &[]), Ok(())),
        (
            T0,
            attach("pc3", "b1", &["bad name"]),
            Err("may contain only"),
        ),
    ]);
    let names = |user: &str, after: &str| -> Vec<String> {
        let user = state.user(user).expect("user exists");
        state
            .reachable_hosts(user, after)
            .map(|h| h.name.clone())
            .collect()
    };
    // pc3 is not granted to staff; pc4 never completed enrollment.
    assert_eq!(names("alice", ""), ["pc1", "pc2"]);
    assert_eq!(names("alice", "pc1"), ["pc2"]);
    assert!(names("bob", "").is_empty());
    let pc1 = state.host("pc1").expect("host exists");
    assert_eq!(
        (pc1.services.as_slice(), pc1.attached_broker.as_str()),
        (&["ssh".to_owned(), "vnc".to_owned()][..], "b1")
    );
    // An Attach naming no services (an older node's) keeps none rather than failing.
    assert!(state.host("pc2").expect("host exists").services.is_empty());
}
