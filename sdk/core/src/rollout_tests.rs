use super::*;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).expect("a valid time")
}

fn v(version: &str) -> PlatformRef {
    PlatformRef::embedded(version)
}

/// `n` instances on channel `stable`, on `module`, Ready.
fn fleet(n: usize, module: &PlatformRef) -> Vec<Member> {
    (0..n)
        .map(|i| {
            let name = format!("svc-{i:02}");
            Member {
                instance: format!("shop/{name}"),
                bucket: bucket("stable", "shop", &name),
                module: module.to_string(),
                ready: true,
                failing: None,
            }
        })
        .collect()
}

/// Every member renders with what the channel's status gives it; `healthy` says whether it
/// becomes Ready on the target.
fn converge(status: &ChannelStatus, members: &mut [Member], healthy: impl Fn(&Member) -> bool) {
    for m in members.iter_mut() {
        let module = module_for(status, m.bucket).expect("a module").to_string();
        let on_target = status
            .rollout
            .as_ref()
            .is_some_and(|r| r.target.to_string() == module);
        m.module = module;
        m.ready = !on_target || healthy(m);
    }
}

fn moved(status: &ChannelStatus, members: &[Member], target: &PlatformRef) -> usize {
    members
        .iter()
        .filter(|m| module_for(status, m.bucket) == Some(target))
        .count()
}

/// A channel on 1.0.0 with `n` Ready instances, told to move to 1.1.0 (preview not yet run).
fn rollout_started(
    n: usize,
    strategy: RolloutStrategy,
) -> (ChannelSpec, ChannelStatus, Vec<Member>) {
    let mut spec = ChannelSpec::for_module(v("1.0.0"));
    spec.strategy = strategy;
    let members = fleet(n, &v("1.0.0"));
    let adopted = drive(&spec, &ChannelStatus::default(), &members, None, at(0)).expect("valid");
    spec.module = v("1.1.0");
    let started = drive(&spec, &adopted.status, &members, None, at(1)).expect("valid");
    assert!(started.needs_preview);
    (spec, started.status, members)
}

fn clean_preview(n: usize) -> Preview {
    Preview {
        instances: n as u32,
        changed: n as u32,
        ..Preview::default()
    }
}

#[test]
fn steps_parse_or_name_the_field_and_rule() {
    type Case<'a> = (&'a [&'a str], Result<Vec<Step>, &'a str>);
    let table: &[Case] = &[
        (
            &["1", "10%", "50%"],
            Ok(vec![
                Step::Instances(1),
                Step::Percent(10),
                Step::Percent(50),
                Step::Percent(100),
            ]),
        ),
        (&["100%"], Ok(vec![Step::Percent(100)])),
        (&[], Ok(vec![Step::Percent(100)])),
        (
            &["1", "3"],
            Ok(vec![
                Step::Instances(1),
                Step::Instances(3),
                Step::Percent(100),
            ]),
        ),
        (
            &["0"],
            Err("spec.strategy.steps[0]: \"0\": a step moves at least one instance"),
        ),
        (
            &["1", "101%"],
            Err("spec.strategy.steps[1]: \"101%\": a percentage runs from 1% to 100%"),
        ),
        (
            &["ten"],
            Err("spec.strategy.steps[0]: \"ten\" is neither a count"),
        ),
        (
            &["10%", "5%"],
            Err("spec.strategy.steps[1]: \"5%\" does not move more instances"),
        ),
        (
            &["10%", "3"],
            Err("spec.strategy.steps[1]: \"3\" does not move more instances"),
        ),
        (
            &["2", "2"],
            Err("spec.strategy.steps[1]: \"2\" does not move more instances"),
        ),
    ];
    for (steps, want) in table {
        let strategy = RolloutStrategy {
            steps: steps.iter().map(|s| s.to_string()).collect(),
            ..RolloutStrategy::default()
        };
        match (strategy.parse(), want) {
            (Ok(parsed), Ok(want)) => assert_eq!(&parsed.steps, want, "{steps:?}"),
            (Err(e), Err(want)) => assert!(e.to_string().starts_with(want), "{steps:?}: {e}"),
            (got, want) => panic!("{steps:?}: got {got:?}, want {want:?}"),
        }
    }
    let bad_deadline = RolloutStrategy {
        health_deadline: "soon".into(),
        ..RolloutStrategy::default()
    };
    let e = bad_deadline.parse().expect_err("an invalid duration");
    assert_eq!(e.field, "spec.strategy.healthDeadline");
}

#[test]
fn a_step_counts_instances_rounding_percentages_up() {
    let table = [
        (Step::Instances(1), 20, 1),
        (Step::Instances(3), 2, 2),
        (Step::Percent(10), 20, 2),
        (Step::Percent(10), 5, 1),
        (Step::Percent(50), 5, 3),
        (Step::Percent(100), 7, 7),
        (Step::Percent(10), 0, 0),
    ];
    for (step, total, want) in table {
        assert_eq!(step.count(total), want, "{step:?} of {total}");
    }
}

#[test]
fn a_threshold_reaches_exactly_the_first_buckets() {
    let sorted = [5, 9, 40, 41];
    assert_eq!(threshold_for(0, &sorted), 0);
    assert_eq!(threshold_for(1, &sorted), 6);
    assert_eq!(threshold_for(3, &sorted), 41);
    assert_eq!(threshold_for(4, &sorted), ALL);
    assert_eq!(threshold_for(9, &sorted), ALL);
}

#[test]
fn a_new_channel_starts_on_its_module_and_an_unchanged_one_does_nothing() {
    let spec = ChannelSpec::for_module(v("1.0.0"));
    let members = fleet(3, &v("1.0.0"));
    let first = drive(&spec, &ChannelStatus::default(), &members, None, at(0)).expect("valid");
    assert_eq!(first.status.current, Some(v("1.0.0")));
    assert_eq!(first.status.rollout, None);
    assert_eq!(first.status.updated, "3/3");
    assert_eq!(first.status.phase, "Complete");
    let again = drive(&spec, &first.status, &members, None, at(60)).expect("valid");
    assert_eq!(again.status, first.status);
    assert!(again.events.is_empty() && !again.needs_preview);
}

#[test]
fn a_good_module_advances_step_by_step_only_after_the_moved_instances_are_ready() {
    let strategy = RolloutStrategy {
        pause: "30s".into(),
        ..RolloutStrategy::default()
    };
    let (spec, mut status, mut members) = rollout_started(20, strategy);
    // Before the preview, nobody renders with the new module.
    assert_eq!(moved(&status, &members, &v("1.1.0")), 0);
    let d = drive(&spec, &status, &members, Some(clean_preview(20)), at(2)).expect("valid");
    status = d.status;
    let mut seen_steps = vec![];
    let mut t = 2;
    let expected_counts = [1, 2, 10, 20];
    for (step, want) in expected_counts.iter().enumerate() {
        let r = status.rollout.clone().expect("a rollout");
        assert_eq!(r.phase, Phase::Progressing, "step {step}: {}", r.message);
        assert_eq!(r.step as usize, step);
        assert_eq!(moved(&status, &members, &v("1.1.0")), *want, "step {step}");
        seen_steps.push(moved(&status, &members, &v("1.1.0")));
        // Not Ready yet on the new module: the step waits, however often it is asked.
        for m in members.iter_mut().filter(|m| m.bucket < r.threshold) {
            m.module = v("1.1.0").to_string();
            m.ready = false;
        }
        t += 10;
        let waiting = drive(&spec, &status, &members, None, at(t)).expect("valid");
        assert_eq!(
            waiting.status.rollout.as_ref().map(|r| r.step),
            Some(step as u32)
        );
        assert!(
            waiting
                .status
                .rollout
                .as_ref()
                .is_some_and(|r| r.message.contains("waiting"))
        );
        status = waiting.status;
        // Ready: the pause runs from now, then the next step starts.
        converge(&status, &mut members, |_| true);
        t += 1;
        status = drive(&spec, &status, &members, None, at(t))
            .expect("valid")
            .status;
        if step + 1 < expected_counts.len() {
            assert_eq!(
                status.rollout.as_ref().map(|r| r.step),
                Some(step as u32),
                "the pause"
            );
            t += 31;
            status = drive(&spec, &status, &members, None, at(t))
                .expect("valid")
                .status;
        }
    }
    let r = status.rollout.clone().expect("a rollout");
    assert_eq!(r.phase, Phase::Complete);
    assert_eq!(status.current, Some(v("1.1.0")));
    assert_eq!(status.updated, "20/20");
    assert_eq!(status.history[0].outcome, "Complete");
    assert_eq!(seen_steps, vec![1, 2, 10, 20]);
    // Instances created later are on the new module too.
    assert_eq!(module_for(&status, ALL - 1), Some(&v("1.1.0")));
}

#[test]
fn a_preview_with_failures_halts_before_anything_moves() {
    let (spec, status, members) = rollout_started(20, RolloutStrategy::default());
    let failures: Vec<InstanceProblem> = (0..25)
        .map(|i| InstanceProblem {
            instance: format!("shop/svc-{i:02}"),
            reason: "PolicyViolation".into(),
            message: "replicas: must be at least 2".into(),
        })
        .collect();
    let preview = Preview {
        instances: 20,
        changed: 20,
        failed: 3,
        failures: failures[..3].to_vec(),
    };
    let d = drive(&spec, &status, &members, Some(preview), at(2)).expect("valid");
    let r = d.status.rollout.clone().expect("a rollout");
    assert_eq!(r.phase, Phase::Halted);
    assert_eq!(r.problems.len(), 3);
    assert!(r.message.contains("3 of 20"), "{}", r.message);
    assert_eq!(moved(&d.status, &members, &v("1.1.0")), 0);
    assert!(
        d.events
            .contains(&RolloutEvent::PreviewFailed { failed: 3 })
    );
    // It stays halted: asked again, nothing moves.
    let again = drive(&spec, &d.status, &members, None, at(600)).expect("valid");
    assert_eq!(moved(&again.status, &members, &v("1.1.0")), 0);
    assert!(!again.needs_preview);
}

#[test]
fn a_canary_never_ready_halts_at_the_deadline_and_rolls_back_only_the_canary() {
    let strategy = RolloutStrategy {
        health_deadline: "2m".into(),
        ..RolloutStrategy::default()
    };
    let (spec, status, mut members) = rollout_started(20, strategy);
    let d = drive(&spec, &status, &members, Some(clean_preview(20)), at(2)).expect("valid");
    let mut status = d.status;
    converge(&status, &mut members, |_| false);
    let canary: Vec<String> = members
        .iter()
        .filter(|m| m.module == v("1.1.0").to_string())
        .map(|m| m.instance.clone())
        .collect();
    assert_eq!(canary.len(), 1);
    // Within the deadline: waiting.
    status = drive(&spec, &status, &members, None, at(100))
        .expect("valid")
        .status;
    assert_eq!(
        status.rollout.as_ref().map(|r| r.phase),
        Some(Phase::Progressing)
    );
    // Past it: halted and rolled back.
    let d = drive(&spec, &status, &members, None, at(123)).expect("valid");
    let r = d.status.rollout.clone().expect("a rollout");
    assert_eq!(r.phase, Phase::RolledBack, "{}", r.message);
    assert_eq!(
        r.problems
            .iter()
            .map(|p| p.instance.clone())
            .collect::<Vec<_>>(),
        canary
    );
    assert_eq!(r.problems[0].reason, "NotReady");
    assert_eq!(moved(&d.status, &members, &v("1.1.0")), 0);
    assert_eq!(d.status.current, Some(v("1.0.0")));
    assert!(matches!(
        d.events.as_slice(),
        [RolloutEvent::Halted { .. }, RolloutEvent::RolledBack { .. }]
    ));
}

#[test]
fn without_automatic_rollback_a_halt_keeps_the_moved_instances_until_undo() {
    let strategy = RolloutStrategy {
        health_deadline: "1m".into(),
        auto_rollback: false,
        ..RolloutStrategy::default()
    };
    let (mut spec, status, mut members) = rollout_started(20, strategy);
    let status = drive(&spec, &status, &members, Some(clean_preview(20)), at(2))
        .expect("valid")
        .status;
    converge(&status, &mut members, |_| false);
    let halted = drive(&spec, &status, &members, None, at(70))
        .expect("valid")
        .status;
    assert_eq!(
        halted.rollout.as_ref().map(|r| r.phase),
        Some(Phase::Halted)
    );
    assert_eq!(moved(&halted, &members, &v("1.1.0")), 1);
    spec.undo = true;
    let undone = drive(&spec, &halted, &members, None, at(80))
        .expect("valid")
        .status;
    assert_eq!(
        undone.rollout.as_ref().map(|r| r.phase),
        Some(Phase::RolledBack)
    );
    assert_eq!(moved(&undone, &members, &v("1.1.0")), 0);
}

#[test]
fn a_failing_canary_halts_at_once_without_waiting_for_the_deadline() {
    let (spec, status, mut members) = rollout_started(20, RolloutStrategy::default());
    let status = drive(&spec, &status, &members, Some(clean_preview(20)), at(2))
        .expect("valid")
        .status;
    converge(&status, &mut members, |_| false);
    for m in members
        .iter_mut()
        .filter(|m| m.module == v("1.1.0").to_string())
    {
        m.failing = Some(("Stalled".into(), "Deployment web: 0/2 available".into()));
    }
    let d = drive(&spec, &status, &members, None, at(5)).expect("valid");
    let r = d.status.rollout.expect("a rollout");
    assert_eq!(r.phase, Phase::RolledBack);
    assert_eq!(r.problems[0].reason, "Stalled");
}

#[test]
fn a_failing_instance_not_yet_on_the_new_module_does_not_halt_it() {
    let (spec, status, mut members) = rollout_started(20, RolloutStrategy::default());
    let status = drive(&spec, &status, &members, Some(clean_preview(20)), at(2))
        .expect("valid")
        .status;
    converge(&status, &mut members, |_| true);
    // An instance still on the old module is broken for its own reasons.
    let threshold = status.rollout.as_ref().map_or(0, |r| r.threshold);
    if let Some(m) = members.iter_mut().find(|m| m.bucket >= threshold) {
        m.failing = Some(("Stalled".into(), "its own image does not pull".into()));
        m.ready = false;
    }
    let d = drive(&spec, &status, &members, None, at(5)).expect("valid");
    assert_eq!(d.status.rollout.map(|r| r.phase), Some(Phase::Progressing));
}

#[test]
fn pause_holds_the_step_and_resume_goes_on() {
    let strategy = RolloutStrategy {
        pause: "0s".into(),
        ..RolloutStrategy::default()
    };
    let (mut spec, status, mut members) = rollout_started(20, strategy);
    let status = drive(&spec, &status, &members, Some(clean_preview(20)), at(2))
        .expect("valid")
        .status;
    converge(&status, &mut members, |_| true);
    spec.paused = true;
    let paused = drive(&spec, &status, &members, None, at(10)).expect("valid");
    assert_eq!(
        paused.status.rollout.as_ref().map(|r| r.phase),
        Some(Phase::Paused)
    );
    assert!(paused.events.contains(&RolloutEvent::Paused));
    let still = drive(&spec, &paused.status, &members, None, at(1000)).expect("valid");
    assert_eq!(still.status.rollout.as_ref().map(|r| r.step), Some(0));
    assert_eq!(moved(&still.status, &members, &v("1.1.0")), 1);
    spec.paused = false;
    let resumed = drive(&spec, &still.status, &members, None, at(1001)).expect("valid");
    assert!(resumed.events.contains(&RolloutEvent::Resumed));
    assert_eq!(resumed.status.rollout.as_ref().map(|r| r.step), Some(1));
    assert_eq!(moved(&resumed.status, &members, &v("1.1.0")), 2);
}

#[test]
fn driving_again_from_the_stored_status_never_moves_an_instance_twice_or_skips_a_gate() {
    let strategy = RolloutStrategy {
        pause: "0s".into(),
        ..RolloutStrategy::default()
    };
    let (spec, status, mut members) = rollout_started(20, strategy);
    let status = drive(&spec, &status, &members, Some(clean_preview(20)), at(2))
        .expect("valid")
        .status;
    // The operator restarts any number of times while the canary is not Ready yet.
    converge(&status, &mut members, |_| false);
    let mut s = status.clone();
    for t in 3..10 {
        let d = drive(&spec, &s, &members, None, at(t)).expect("valid");
        assert_eq!(
            d.status.rollout.as_ref().map(|r| r.threshold),
            status.rollout.as_ref().map(|r| r.threshold)
        );
        assert!(d.events.is_empty(), "{:?}", d.events);
        s = d.status;
    }
    // The same input gives the same output.
    let a = drive(&spec, &s, &members, None, at(20)).expect("valid");
    let b = drive(&spec, &s, &members, None, at(20)).expect("valid");
    assert_eq!(a, b);
}

#[test]
fn a_new_module_mid_rollout_replaces_it_from_the_current_module() {
    let (mut spec, status, mut members) = rollout_started(20, RolloutStrategy::default());
    let status = drive(&spec, &status, &members, Some(clean_preview(20)), at(2))
        .expect("valid")
        .status;
    converge(&status, &mut members, |_| true);
    spec.module = v("1.2.0");
    let d = drive(&spec, &status, &members, None, at(5)).expect("valid");
    let r = d.status.rollout.clone().expect("a rollout");
    assert_eq!(
        (r.target.clone(), r.previous.clone(), r.phase),
        (v("1.2.0"), v("1.0.0"), Phase::Previewing)
    );
    assert!(d.needs_preview);
    assert_eq!(d.status.history[0].outcome, "Replaced");
    // While the new preview runs, everyone is on the current module.
    assert_eq!(moved(&d.status, &members, &v("1.0.0")), 20);
    // Set back to the current module: no rollout at all.
    spec.module = v("1.0.0");
    let back = drive(&spec, &d.status, &members, None, at(6)).expect("valid");
    assert_eq!(moved(&back.status, &members, &v("1.0.0")), 20);
    assert!(
        back.status.rollout.is_none()
            || !back
                .status
                .rollout
                .as_ref()
                .is_some_and(|r| r.phase.is_active())
    );
}

#[test]
fn buckets_spread_a_fleet_and_differ_per_channel() {
    let a: Vec<u64> = (0..1000)
        .map(|i| bucket("stable", "ns", &format!("s{i}")))
        .collect();
    let below_tenth = a.iter().filter(|b| **b < ALL / 10).count();
    assert!(
        (60..=140).contains(&below_tenth),
        "{below_tenth} of 1000 in the first tenth"
    );
    let b: Vec<u64> = (0..1000)
        .map(|i| bucket("beta", "ns", &format!("s{i}")))
        .collect();
    assert_ne!(a, b);
}

#[test]
fn a_rolled_back_module_rolls_out_again_once_the_spec_left_it_and_came_back() {
    let (mut spec, status, mut members) = rollout_started(20, RolloutStrategy::default());
    let status = drive(&spec, &status, &members, Some(clean_preview(20)), at(2))
        .expect("valid")
        .status;
    converge(&status, &mut members, |_| true);
    spec.undo = true;
    let undone = drive(&spec, &status, &members, None, at(3))
        .expect("valid")
        .status;
    converge(&undone, &mut members, |_| true);
    assert_eq!(moved(&undone, &members, &v("1.1.0")), 0);
    // Back to the current module (undo cleared), then 1.1.0 again: a new rollout, previewed
    // first, not the old one's RolledBack kept for ever.
    spec.undo = false;
    spec.module = v("1.0.0");
    let left = drive(&spec, &undone, &members, None, at(4))
        .expect("valid")
        .status;
    assert_eq!(left.phase, "Complete");
    assert_eq!(left.module, "embedded:1.0.0");
    spec.module = v("1.1.0");
    let again = drive(&spec, &left, &members, None, at(5)).expect("valid");
    assert!(again.needs_preview);
    let r = again.status.rollout.expect("a rollout");
    assert_eq!((r.phase, r.target), (Phase::Previewing, v("1.1.0")));
    assert_eq!(again.status.history[0].outcome, "RolledBack");
}

#[test]
fn an_undo_left_set_from_an_earlier_rollout_does_not_roll_back_the_next_one() {
    let strategy = RolloutStrategy {
        pause: "0s".into(),
        ..RolloutStrategy::default()
    };
    let (mut spec, status, mut members) = rollout_started(20, strategy);
    let status = drive(&spec, &status, &members, Some(clean_preview(20)), at(2))
        .expect("valid")
        .status;
    converge(&status, &mut members, |_| true);
    spec.undo = true;
    let undone = drive(&spec, &status, &members, None, at(3))
        .expect("valid")
        .status;
    assert_eq!(
        undone.rollout.as_ref().map(|r| r.phase),
        Some(Phase::RolledBack)
    );
    converge(&undone, &mut members, |_| true);
    // A new module while undo is still true: it rolls out (previewed, then the canary).
    spec.module = v("1.2.0");
    let next = drive(&spec, &undone, &members, None, at(4)).expect("valid");
    assert!(next.needs_preview);
    let started = drive(
        &spec,
        &next.status,
        &members,
        Some(clean_preview(20)),
        at(4),
    )
    .expect("valid")
    .status;
    assert_eq!(
        started.rollout.as_ref().map(|r| r.phase),
        Some(Phase::Progressing)
    );
    assert_eq!(moved(&started, &members, &v("1.2.0")), 1);
    // Turned false and true again, it undoes this one too.
    spec.undo = false;
    let cleared = drive(&spec, &started, &members, None, at(5))
        .expect("valid")
        .status;
    assert_eq!(
        cleared.rollout.as_ref().map(|r| r.phase),
        Some(Phase::Progressing)
    );
    spec.undo = true;
    let again = drive(&spec, &cleared, &members, None, at(6))
        .expect("valid")
        .status;
    assert_eq!(
        again.rollout.as_ref().map(|r| r.phase),
        Some(Phase::RolledBack)
    );
    assert_eq!(moved(&again, &members, &v("1.2.0")), 0);
}

#[test]
fn once_a_step_was_healthy_a_later_dip_waits_and_a_paused_rollout_is_not_judged() {
    let strategy = RolloutStrategy {
        health_deadline: "1m".into(),
        pause: "10m".into(),
        ..RolloutStrategy::default()
    };
    let (mut spec, status, mut members) = rollout_started(20, strategy);
    let status = drive(&spec, &status, &members, Some(clean_preview(20)), at(2))
        .expect("valid")
        .status;
    converge(&status, &mut members, |_| true);
    let healthy = drive(&spec, &status, &members, None, at(10))
        .expect("valid")
        .status;
    // The canary dips (an edit rolls its Deployment) long after the deadline: it waits.
    converge(&healthy, &mut members, |_| false);
    let dipped = drive(&spec, &healthy, &members, None, at(600))
        .expect("valid")
        .status;
    assert_eq!(
        dipped.rollout.as_ref().map(|r| r.phase),
        Some(Phase::Progressing)
    );
    // Paused while the next step is not yet healthy: held however long, not rolled back.
    converge(&dipped, &mut members, |_| true);
    let mut s = drive(&spec, &dipped, &members, None, at(601))
        .expect("valid")
        .status;
    s = drive(&spec, &s, &members, None, at(1300))
        .expect("valid")
        .status;
    assert_eq!(s.rollout.as_ref().map(|r| r.step), Some(1));
    converge(&s, &mut members, |_| false);
    spec.paused = true;
    let paused = drive(&spec, &s, &members, None, at(1301))
        .expect("valid")
        .status;
    let held = drive(&spec, &paused, &members, None, at(5000))
        .expect("valid")
        .status;
    assert_eq!(held.rollout.as_ref().map(|r| r.phase), Some(Phase::Paused));
    // Resumed and still not healthy past the deadline: now it halts.
    spec.paused = false;
    let resumed = drive(&spec, &held, &members, None, at(5001))
        .expect("valid")
        .status;
    assert_eq!(
        resumed.rollout.as_ref().map(|r| r.phase),
        Some(Phase::RolledBack)
    );
}
