use super::*;

const MIB: u64 = 1024 * 1024;

fn policy() -> Policy {
    Policy {
        contact_max_ms: 2_000,
        applied_lag_max: 100,
        memory_headroom_floor_bytes: 64 * MIB,
        stabilization_ms: 10_000,
    }
}

fn report() -> Report {
    Report {
        started_at_ms: 1,
        boot_id: 1,
        services: ["relay", "peer-links", "raft", "storage"]
            .into_iter()
            .map(|name| Service {
                name: name.into(),
                state: ServiceState::Running,
                detail: String::new(),
                restarts: 0,
            })
            .collect(),
        term: 2,
        commit: 50,
        applied: 50,
        leader: false,
        leader_contact_ms: Some(100),
        storage_error: None,
        quarantine: None,
        memory_rss_bytes: 100 * MIB,
        memory_limit_bytes: 1024 * MIB,
        hosts: 1,
        connections: 3,
        sessions: 2,
        sessions_max: 100,
        connections_max: 100,
        draining: false,
    }
}

fn member(node_id: &str, raft_id: u64, role: Role) -> Member {
    Member {
        node_id: node_id.into(),
        raft_id,
        role,
        voter: true,
        report: Some(report()),
        report_age_ms: 300,
    }
}

/// A pair of brokers and a witness, all healthy.
fn pair() -> Cluster {
    Cluster {
        members: vec![
            member("b1", 1, Role::Broker),
            member("b2", 2, Role::Broker),
            member("w1", 3, Role::Witness),
        ],
        commit: 50,
        leases: vec![],
        change_pending: false,
    }
}

fn get<'a>(cluster: &'a mut Cluster, node: &str) -> &'a mut Member {
    cluster
        .members
        .iter_mut()
        .find(|m| m.node_id == node)
        .unwrap()
}

/// Evaluates `target` twice, `stabilization_ms` apart, and checks which checks fail and that
/// each failing reason mentions `fragment`.
fn check(name: &str, cluster: Cluster, target: &str, failing: &[(&str, &str)]) {
    let mut steady = Steadiness::default();
    evaluate(&cluster, target, &policy(), &mut steady, 1_000).unwrap();
    let verdict = evaluate(&cluster, target, &policy(), &mut steady, 11_000).unwrap();
    let failed: Vec<&Check> = verdict.checks.iter().filter(|c| !c.passed).collect();
    let mut want: Vec<&str> = failing.iter().map(|(n, _)| *n).collect();
    if !want.is_empty() {
        want.push("steady");
    }
    let got: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(got, want, "{name}: failing checks; verdict {verdict:#?}");
    for (check, fragment) in failing {
        let c = failed.iter().find(|c| c.name == *check).unwrap();
        assert!(
            c.reason.contains(fragment),
            "{name}: {check} reason {:?} should mention {fragment:?}",
            c.reason
        );
    }
    assert_eq!(verdict.allowed, failing.is_empty(), "{name}");
}

#[test]
fn the_gate_names_what_is_wrong() {
    check("healthy pair, broker", pair(), "b1", &[]);
    check("healthy pair, witness", pair(), "w1", &[]);

    // The incident: the other broker silently lacks its relay service.
    let mut c = pair();
    let relay = &mut get(&mut c, "b2").report.as_mut().unwrap().services[0];
    relay.state = ServiceState::Stopped;
    relay.detail = "stopped by the test-only fault switch".into();
    check(
        "incident",
        c,
        "b1",
        &[
            (
                "quorum",
                "b2 (service relay is stopped (stopped by the test-only fault switch))",
            ),
            ("service coverage", "b2: service relay is stopped"),
            ("capacity", "no other healthy broker"),
        ],
    );

    let mut c = pair();
    get(&mut c, "w1").report = None;
    check(
        "witness down",
        c,
        "b1",
        &[("quorum", "w1 (no health report received")],
    );

    let mut c = pair();
    c.members.pop();
    check(
        "pair without witness",
        c,
        "b2",
        &[("quorum", "add a witness")],
    );

    let mut c = pair();
    get(&mut c, "b1").report.as_mut().unwrap().sessions = 3;
    let b2 = get(&mut c, "b2").report.as_mut().unwrap();
    (b2.sessions, b2.sessions_max) = (0, 2);
    check(
        "capacity",
        c,
        "b1",
        &[("capacity", "b1 carries 3 sessions and 3 connections (1 hosts), but the other healthy brokers have room for only 2 sessions")],
    );

    let mut c = pair();
    get(&mut c, "b2")
        .report
        .as_mut()
        .unwrap()
        .memory_limit_bytes = 120 * MIB;
    check(
        "low headroom",
        c,
        "b1",
        &[(
            "capacity",
            "b2 has 20 MiB of memory headroom, below the floor of 64 MiB",
        )],
    );

    let mut c = pair();
    get(&mut c, "b2")
        .report
        .as_mut()
        .unwrap()
        .memory_limit_bytes = 50 * MIB;
    check(
        "memory over limit",
        c,
        "b1",
        &[
            ("quorum", "memory 100 MiB is over its limit of 50 MiB"),
            ("service coverage", "b2: memory 100 MiB"),
            ("capacity", "no other healthy broker"),
        ],
    );

    let mut c = pair();
    c.leases.push(Lease {
        node: "b2".into(),
        holder: "admin:ann".into(),
        since_ms: 500,
        forced: false,
        boot_id: 1,
    });
    check(
        "someone else's lease",
        c,
        "b1",
        &[
            (
                "service coverage",
                "b2: under maintenance (lease taken by admin:ann)",
            ),
            ("capacity", "no other healthy broker"),
            (
                "one at a time",
                "node b2 is under maintenance (lease taken by admin:ann",
            ),
        ],
    );
    let mut c = pair();
    c.leases.push(Lease {
        node: "b1".into(),
        holder: "admin:ann".into(),
        since_ms: 500,
        forced: false,
        boot_id: 1,
    });
    check("own lease", c, "b1", &[]);

    let mut c = pair();
    get(&mut c, "b2").report.as_mut().unwrap().draining = true;
    check(
        "other broker handing off",
        c,
        "b1",
        &[
            (
                "service coverage",
                "b2: handing its endpoints off (draining)",
            ),
            ("capacity", "no other healthy broker"),
        ],
    );

    let mut c = pair();
    c.change_pending = true;
    check(
        "membership change",
        c,
        "w1",
        &[("one at a time", "membership change")],
    );

    let mut c = pair();
    c.commit = 150;
    for m in &mut c.members {
        m.report.as_mut().unwrap().applied = 150;
    }
    get(&mut c, "b2").report.as_mut().unwrap().applied = 10;
    check(
        "lagging",
        c,
        "b1",
        &[
            (
                "quorum",
                "applied index 10 is 140 entries behind the commit index 150",
            ),
            ("service coverage", "behind"),
            ("capacity", "no other"),
        ],
    );

    let mut c = pair();
    get(&mut c, "w1").report_age_ms = 5_000;
    check(
        "stale report",
        c,
        "b2",
        &[("quorum", "last health report 5.0 s ago")],
    );
}

#[test]
fn steady_requires_the_checks_to_hold_for_the_stabilization_time() {
    let mut steady = Steadiness::default();
    let mut c = pair();
    let at = |c: &Cluster, steady: &mut Steadiness, now| {
        evaluate(c, "b1", &policy(), steady, now).unwrap()
    };
    assert!(!at(&c, &mut steady, 0).allowed);
    let v = at(&c, &mut steady, 9_000);
    assert!(!v.allowed);
    assert_eq!(
        v.checks[4].reason,
        "the checks above have held for 9.0 s of the 10.0 s required; ask again in 1.0 s"
    );
    assert!(at(&c, &mut steady, 10_000).allowed);
    // One failing observation restarts the clock.
    get(&mut c, "w1").report = None;
    assert!(!at(&c, &mut steady, 10_500).allowed);
    get(&mut c, "w1").report = Some(report());
    assert!(!at(&c, &mut steady, 11_000).allowed);
    assert!(at(&c, &mut steady, 21_000).allowed);
    assert_eq!(at(&c, &mut steady, 21_000).failure_tolerance, 1);
}

#[test]
fn failure_tolerance_is_healthy_voters_minus_quorum() {
    let mut c = pair();
    assert_eq!(c.failure_tolerance(&policy()), 1);
    get(&mut c, "w1").report = None;
    assert_eq!(c.failure_tolerance(&policy()), 0);
    get(&mut c, "b2").report = None;
    assert_eq!(c.failure_tolerance(&policy()), -1);
    assert_eq!(
        evaluate(&c, "nope", &policy(), &mut Steadiness::default(), 0),
        None
    );
}
