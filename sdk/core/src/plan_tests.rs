//! Table tests of the pass decisions: no cluster, milliseconds each.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::graph::ReadinessPredicate;
use crate::readiness::Verdict;

/// The graph tests' own builders: ConfigMap nodes named after their ids.
use crate::graph::tests::{graph, node};

fn plan(nodes: Vec<Node>) -> Plan {
    Plan::new(graph(nodes), "apps").unwrap()
}

fn entry(id: &str) -> InventoryEntry {
    InventoryEntry {
        node_id: id.into(),
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: "apps".into(),
        name: id.into(),
        uid: format!("uid-{id}"),
        mode: InventoryMode::Managed,
        last_applied_hash: "h1".into(),
        last_applied_resource_version: "10".into(),
        last_applied_generation: Some(1),
        last_ready_transition: None,
        deletion_policy: None,
    }
}

fn ready() -> NodeResult {
    NodeResult::unwritten(NodeStatus::ready("exists"), None)
}

fn ids(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().map(|n| n.id.clone()).collect()
}

#[test]
fn the_frontier_advances_only_past_ready_nodes() {
    // a → b → c, and d independent.
    let p = plan(vec![
        node("a", &[]),
        node("b", &["a"]),
        node("c", &["b"]),
        node("d", &[]),
    ]);
    let mut pass = Pass::start(&p, &[]);
    assert_eq!(ids(&pass.frontier()), ["a", "d"]);
    pass.record("a", ready());
    pass.record(
        "d",
        NodeResult::unwritten(NodeStatus::applied("waiting", "t"), None),
    );
    assert_eq!(ids(&pass.frontier()), ["b"]);
    pass.record("b", NodeResult::unwritten(NodeStatus::error("boom"), None));
    assert!(pass.frontier().is_empty(), "c waits for b, which failed");
    let out = pass.finish();
    assert_eq!(out.nodes["c"].phase, NodePhase::Pending);
    assert_eq!(out.nodes["c"].blocked_on, ["b"]);
    assert!(!out.ready);
    assert_eq!(out.stalled, None, "a retried API error is not terminal");
}

/// What the executor starts after each result, with other nodes still in flight: a node starts
/// once its own dependencies are Ready, never waiting for a sibling it does not depend on.
#[test]
fn a_node_starts_when_its_own_dependencies_are_ready() {
    // sa → deploy → pdb; svc → route; cm independent.
    let p = plan(vec![
        node("sa", &[]),
        node("svc", &[]),
        node("deploy", &["sa"]),
        node("pdb", &["deploy"]),
        node("route", &["svc"]),
        node("cm", &[]),
    ]);
    let waiting = || NodeResult::unwritten(NodeStatus::applied("waiting", "t"), None);
    let failed = || NodeResult::unwritten(NodeStatus::error("boom"), None);
    // (the result recorded, what starts next)
    let steps: Vec<(&str, NodeResult, Vec<&str>)> = vec![
        ("sa", ready(), vec!["deploy"]),  // svc and cm still in flight
        ("deploy", ready(), vec!["pdb"]), // svc still in flight
        ("cm", waiting(), vec![]),        // nothing depends on cm
        ("svc", ready(), vec!["route"]),  // the slow sibling, last
        ("pdb", failed(), vec![]),        // a failure ends its branch only
        ("route", waiting(), vec![]),
    ];
    let mut pass = Pass::start(&p, &[]);
    assert_eq!(ids(&pass.take_startable()), ["sa", "svc", "cm"]);
    for (recorded, result, starts) in steps {
        pass.record(recorded, result);
        assert_eq!(ids(&pass.take_startable()), starts, "after {recorded}");
    }
    assert!(pass.take_startable().is_empty());
    let out = pass.finish();
    assert_eq!(out.nodes["pdb"].phase, NodePhase::Error);
    assert!(!out.ready);
}

#[test]
fn a_started_node_is_not_started_again_before_its_result() {
    let p = plan(vec![node("a", &[]), node("b", &["a"])]);
    let mut pass = Pass::start(&p, &[]);
    assert_eq!(ids(&pass.take_startable()), ["a"]);
    assert!(pass.take_startable().is_empty(), "a is in flight");
    assert_eq!(
        ids(&pass.frontier()),
        ["a"],
        "the frontier still names it: not decided"
    );
    pass.record("a", ready());
    assert_eq!(ids(&pass.take_startable()), ["b"]);
}

/// Which nodes get a second look before the pass ends, when the watch cache has news.
#[test]
fn only_waiting_nodes_with_news_are_looked_at_again_once_per_version() {
    let p = plan(vec![
        node("deploy", &[]),
        node("svc", &[]),
        node("cm", &[]),
        node("pdb", &["deploy"]),
    ]);
    let judged_on = |status: NodeStatus, id: &str, rv: &str| NodeResult {
        entry: Some(entry(id)),
        live: Some(serde_json::json!({"metadata": {"resourceVersion": rv}})),
        ..NodeResult::unwritten(status, None)
    };
    let waiting = || NodeStatus::applied("waiting", "t");
    let mut pass = Pass::start(&p, &[]);
    assert_eq!(ids(&pass.take_startable()), ["deploy", "svc", "cm"]);
    pass.record("deploy", judged_on(waiting(), "deploy", "7"));
    pass.record("svc", judged_on(NodeStatus::ready("exists"), "svc", "8"));
    pass.record("cm", judged_on(waiting(), "cm", "5"));
    // What the watch delivered last: the Deployment moved on to 9, the ConfigMap is still at 5,
    // the Service at 12 (it is Ready: never looked at again).
    let delivered = |e: &InventoryEntry| match e.node_id.as_str() {
        "deploy" => Some(Some("9")),
        "cm" => Some(Some("5")),
        _ => Some(Some("12")),
    };
    let delivered = |e: &InventoryEntry| delivered(e).map(|v| v.map(String::from));
    assert_eq!(ids(&pass.take_rejudgeable(delivered)), ["deploy"]);
    assert!(
        pass.take_rejudgeable(delivered).is_empty(),
        "once per delivered version"
    );
    pass.record(
        "deploy",
        judged_on(NodeStatus::ready("1/1 available"), "deploy", "9"),
    );
    assert_eq!(
        ids(&pass.take_startable()),
        ["pdb"],
        "its dependent starts in the same pass"
    );
    pass.record("pdb", judged_on(waiting(), "pdb", "10"));
    // The watch moves every object on to 20: each waiting node once more, the Ready one never.
    let moved_on = |_: &InventoryEntry| Some(Some("20".to_string()));
    assert_eq!(ids(&pass.take_rejudgeable(moved_on)), ["cm", "pdb"]);
    // A look that did not make them Ready: the first judgement stands, and they are not
    // looked at again until the watch delivers another version.
    assert!(
        pass.take_rejudgeable(moved_on).is_empty(),
        "once per delivered version"
    );
    let not_listed = |_: &InventoryEntry| None;
    let absent = |_: &InventoryEntry| Some(None);
    assert!(pass.take_rejudgeable(not_listed).is_empty());
    assert!(pass.take_rejudgeable(absent).is_empty());
    let out = pass.finish();
    assert_eq!(out.nodes["deploy"].phase, NodePhase::Ready);
    assert_eq!(out.nodes["pdb"].phase, NodePhase::Applied);
}

#[test]
fn a_second_look_judges_only_the_watched_unchanged_recorded_object() {
    use ReadSource::*;
    // (source, recorded, unchanged, may judge)
    let cases = [
        (Cache, true, true, true),
        (Cache, true, false, false), // changed since our apply: the next pass writes it
        (Cache, false, true, false), // another object (UID): the adoption policy decides
        (OwnWrite, true, true, false), // our write's answer: nothing new to judge
        (Api, true, true, false),    // would be a GET
    ];
    for (source, recorded, unchanged, expected) in cases {
        assert_eq!(
            second_look_applies(source, recorded, unchanged),
            expected,
            "{source:?} recorded={recorded} unchanged={unchanged}"
        );
    }
}

#[test]
fn pending_nodes_are_decided_at_start_and_never_applied() {
    let mut waiting = node("sa", &[]);
    waiting.pending_on = vec!["roleArn".into()];
    let p = plan(vec![node("role", &[]), waiting]);
    let pass = Pass::start(&p, &[]);
    assert_eq!(ids(&pass.frontier()), ["role"]);
    assert_eq!(pass.nodes()["sa"].blocked_on, ["export:roleArn"]);
}

#[test]
fn a_terminal_error_stalls_the_pass_with_the_node_named() {
    let p = plan(vec![node("a", &[])]);
    let mut pass = Pass::start(&p, &[]);
    pass.record(
        "a",
        NodeResult {
            terminal: true,
            ..NodeResult::unwritten(NodeStatus::error("ACK.Terminal: denied"), None)
        },
    );
    assert_eq!(
        pass.finish().stalled.as_deref(),
        Some("a: ACK.Terminal: denied")
    );
}

#[test]
fn an_adoption_is_a_change_once() {
    let p = plan(vec![node("a", &[])]);
    let adopted = InventoryEntry {
        mode: InventoryMode::Adopted,
        ..entry("a")
    };
    for (before, expected) in [(vec![], 1), (vec![adopted.clone()], 0)] {
        let mut pass = Pass::start(&p, &before);
        pass.record(
            "a",
            NodeResult::unwritten(NodeStatus::ready("exists"), Some(adopted.clone())),
        );
        let changes = pass.finish().changes;
        assert_eq!(changes.len(), expected, "before: {before:?}");
    }
}

/// No prune guard: the tests of the other prune rules.
const ALL: PruneThreshold = PruneThreshold::Percent(100);

#[test]
fn the_prune_guard_holds_a_pass_that_would_delete_more_than_the_threshold() {
    let ready = |_: &str| Some(NodePhase::Ready);
    let orphan = |id: &str| InventoryEntry {
        deletion_policy: Some(DeletionPolicy::Orphan),
        ..entry(id)
    };
    let orphaned = |id: &str| InventoryEntry {
        mode: InventoryMode::Orphaned,
        ..entry(id)
    };
    let invalid = PruneThreshold::Invalid("annotation cuebe.dev/prune-threshold: bad".into());
    // (graph, inventory, threshold, prunes, guard message contains)
    type Row = (
        Vec<&'static str>,
        Vec<InventoryEntry>,
        PruneThreshold,
        usize,
        Option<&'static str>,
    );
    let four = || vec![entry("a"), entry("b"), entry("c"), entry("d")];
    let rows: Vec<Row> = vec![
        // Half of four is allowed by the default threshold; three of four is not.
        (vec!["a", "b"], four(), PruneThreshold::Percent(50), 2, None),
        (
            vec!["a"],
            four(),
            PruneThreshold::Percent(50),
            0,
            Some("delete 3 of the 4 objects"),
        ),
        // The message names every object that would go (in deletion order), and the way out.
        (
            vec!["a"],
            four(),
            PruneThreshold::Percent(50),
            0,
            Some("(ConfigMap d, ConfigMap c, ConfigMap b)"),
        ),
        (
            vec!["a"],
            four(),
            PruneThreshold::Percent(50),
            0,
            Some("cuebe.dev/prune-threshold: \"100\""),
        ),
        // An empty render of a one-object instance is held; raising the threshold lets it go.
        (
            vec![],
            vec![entry("a")],
            PruneThreshold::Percent(50),
            0,
            Some("1 of the 1"),
        ),
        (
            vec![],
            vec![entry("a")],
            PruneThreshold::Percent(100),
            1,
            None,
        ),
        // 0% holds any deletion.
        (
            vec!["a", "b", "c"],
            four(),
            PruneThreshold::Percent(0),
            0,
            Some("1 of the 4"),
        ),
        // Releasing leaves objects in place: it does not count, and is not held.
        (
            vec!["a"],
            vec![entry("a"), orphan("b"), orphan("c"), orphan("d")],
            PruneThreshold::Percent(50),
            3,
            None,
        ),
        // Entries already Orphaned are not the instance's objects: not in the base either.
        (
            vec!["a"],
            vec![entry("a"), entry("b"), orphaned("c"), orphaned("d")],
            PruneThreshold::Percent(50),
            1,
            None,
        ),
        // A bad annotation holds deletions (never prune on a guess), naming the annotation.
        (
            vec!["a", "b", "c"],
            four(),
            invalid.clone(),
            0,
            Some("cuebe.dev/prune-threshold"),
        ),
        // ... but with nothing to delete there is nothing to hold.
        (vec!["a", "b", "c", "d"], four(), invalid, 0, None),
    ];
    for (graph, inventory, threshold, prunes, guard) in rows {
        let plan = prune_plan(&graph, &inventory, ready, &threshold);
        let what = format!(
            "graph {graph:?}, {} entries, {threshold:?}",
            inventory.len()
        );
        assert_eq!(plan.entries.len(), prunes, "{what}");
        match guard {
            None => assert_eq!(plan.guarded, None, "{what}"),
            Some(text) => {
                let message = plan.guarded.clone().unwrap_or_default();
                assert!(message.contains(text), "{what}: {message}");
                assert_eq!(plan.held_back, plan.guarded, "{what}");
            }
        }
    }
}

#[test]
fn the_fleet_guard_lets_a_few_instances_prune_per_window() {
    let t = |s: &str| -> crate::clock::Timestamp { s.parse().unwrap() };
    let mut guard = FleetPruneGuard::new(2, Duration::from_secs(60));
    let steps: [(&str, &str, bool, bool); 7] = [
        // (instance, time, admitted, paused afterwards)
        ("a", "2026-01-01T00:00:00Z", true, false),
        ("b", "2026-01-01T00:00:10Z", true, false),
        ("c", "2026-01-01T00:00:20Z", false, true),
        // An instance already counted in the window goes on.
        ("a", "2026-01-01T00:00:30Z", true, true),
        // a's slot (00:00:00) expires at 00:01:00; b's at 00:01:10.
        ("c", "2026-01-01T00:01:05Z", true, true),
        ("d", "2026-01-01T00:01:06Z", false, true),
        ("d", "2026-01-01T00:02:30Z", true, false),
    ];
    for (instance, at, admitted, paused) in steps {
        assert_eq!(
            guard.admit(instance, t(at)).is_ok(),
            admitted,
            "{instance} at {at}"
        );
        assert_eq!(
            guard.paused(t(at)),
            paused,
            "paused after {instance} at {at}"
        );
    }
    assert_eq!(guard.held_total(), 2);
    let mut closed = FleetPruneGuard::new(0, Duration::from_secs(60));
    let message = closed.admit("a", t("2026-01-01T00:00:00Z")).unwrap_err();
    assert!(message.contains("pruning is paused"), "{message}");
}

#[test]
fn prune_only_from_a_complete_healthy_pass() {
    let inventory = [entry("kept"), entry("gone")];
    let status = |phase: NodePhase| move |id: &str| (id == "kept").then_some(phase);
    let cases = [
        (NodePhase::Ready, true),
        (NodePhase::Applied, true),
        (NodePhase::Pending, false),
        (NodePhase::Blocked, false),
        (NodePhase::Error, false),
    ];
    for (phase, prunes) in cases {
        let plan = prune_plan(&["kept"], &inventory, status(phase), &ALL);
        assert_eq!(!plan.entries.is_empty(), prunes, "{phase:?}");
        assert_eq!(plan.held_back.is_some(), !prunes, "{phase:?}");
    }
    // A node of the graph that the pass never decided counts as not healthy.
    let plan = prune_plan(&["kept", "new"], &inventory, status(NodePhase::Ready), &ALL);
    assert!(plan.entries.is_empty());
    assert!(plan.held_back.unwrap().contains("new"));
}

#[test]
fn prune_order_policy_and_orphaned_entries() {
    let orphan_node = InventoryEntry {
        deletion_policy: Some(DeletionPolicy::Orphan),
        ..entry("b")
    };
    let already = InventoryEntry {
        mode: InventoryMode::Orphaned,
        ..entry("c")
    };
    let plan = prune_plan(
        &[],
        &[entry("a"), orphan_node.clone(), already],
        |_| None,
        &ALL,
    );
    assert_eq!(
        plan.entries,
        [
            (orphan_node, DeletionPolicy::Orphan),
            (entry("a"), DeletionPolicy::Delete)
        ],
        "last applied first; Orphaned entries are left alone"
    );
}

#[test]
fn when_to_read_before_writing() {
    use ApplyMode::*;
    let recorded = entry("a");
    let orphaned = InventoryEntry {
        mode: InventoryMode::Orphaned,
        ..entry("a")
    };
    let cases: [(ApplyMode, Option<&InventoryEntry>, &str, bool); 6] = [
        (CreateOrUpdate, Some(&recorded), "h1", true), // same render: may skip the write
        (CreateOrUpdate, Some(&recorded), "h2", false), // changed render: just apply
        (CreateOrUpdate, None, "h1", true),            // unknown object may exist: adoption
        (CreateOrUpdate, Some(&orphaned), "h2", true), // released earlier: ask again
        (CreateOnly, Some(&recorded), "h2", true),     // must know whether it exists
        (AdoptOnly, Some(&recorded), "h2", true),
    ];
    for (mode, e, hash, expected) in cases {
        assert_eq!(needs_read(mode, e, hash), expected, "{mode:?} {e:?} {hash}");
    }
}

#[test]
fn unchanged_means_same_render_and_our_generation() {
    let e = entry("a");
    let live = |generation: Option<i64>, rv: &str| LiveMeta {
        uid: Some("uid-a".into()),
        generation,
        resource_version: Some(rv.into()),
    };
    let no_generation = InventoryEntry {
        last_applied_generation: None,
        ..entry("a")
    };
    let cases = [
        (&e, live(Some(1), "99"), "h1", true), // status update by its controller: same generation
        (&e, live(Some(2), "99"), "h1", false), // someone changed the spec
        (&e, live(Some(1), "10"), "h2", false), // our render changed
        (&no_generation, live(None, "10"), "h1", true), // no generation: resourceVersion
        (&no_generation, live(None, "11"), "h1", false),
    ];
    for (entry, live, hash, expected) in cases {
        assert_eq!(
            is_unchanged(Some(entry), Some(&live), hash),
            expected,
            "{live:?} {hash}"
        );
    }
    assert!(!is_unchanged(None, Some(&live(Some(1), "10")), "h1"));
}

#[test]
fn a_recreated_object_is_not_the_recorded_one() {
    let e = entry("a");
    let uid = |u: &str| LiveMeta {
        uid: Some(u.into()),
        ..Default::default()
    };
    assert!(is_recorded_object(Some(&e), Some(&uid("uid-a"))));
    assert!(!is_recorded_object(Some(&e), Some(&uid("other"))));
    assert!(!is_recorded_object(None, Some(&uid("uid-a"))));
    assert!(!is_recorded_object(Some(&e), None));
}

#[test]
fn the_write_decision_table() {
    use ApplyMode::*;
    use WriteDecision::*;
    let cases = [
        (CreateOrUpdate, true, true, Keep),
        (CreateOrUpdate, true, false, Apply),
        (CreateOrUpdate, false, false, Apply),
        (CreateOnly, true, false, Keep),
        (CreateOnly, false, false, Apply),
        (AdoptOnly, false, false, NothingToAdopt),
        (AdoptOnly, true, false, Apply),
        (AdoptOnly, true, true, Keep),
    ];
    for (mode, exists, unchanged, expected) in cases {
        assert_eq!(
            write_decision(mode, exists, unchanged),
            expected,
            "{mode:?} exists={exists} unchanged={unchanged}"
        );
    }
}

#[test]
fn readiness_against_the_clock() {
    let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
    let waiting = Verdict {
        ready: false,
        details: "0/1".into(),
        terminal: None,
        health: None,
    };
    let five_min = Some(Duration::from_secs(300));
    let since = |t: &str| NodeStatus::applied("0/1", t);
    type Case = (
        Verdict,
        Option<NodeStatus>,
        Option<Duration>,
        NodePhase,
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            Verdict {
                ready: true,
                ..waiting.clone()
            },
            None,
            five_min,
            NodePhase::Ready,
            false,
        ),
        (waiting.clone(), None, five_min, NodePhase::Applied, false),
        (
            waiting.clone(),
            Some(since("2026-01-01T00:09:00Z")),
            five_min,
            NodePhase::Applied,
            false,
        ),
        (
            waiting.clone(),
            Some(since("2026-01-01T00:00:00Z")),
            five_min,
            NodePhase::Error,
            true,
        ),
        (
            waiting.clone(),
            Some(since("2026-01-01T00:00:00Z")),
            None,
            NodePhase::Applied,
            false,
        ),
        (
            Verdict {
                terminal: Some("Stalled: quota".into()),
                ..waiting.clone()
            },
            None,
            None,
            NodePhase::Error,
            true,
        ),
    ];
    for (verdict, previous, timeout, phase, terminal) in cases {
        let (status, is_terminal) = judge(&verdict, previous.as_ref(), timeout, now);
        assert_eq!(
            (status.phase, is_terminal),
            (phase, terminal),
            "{verdict:?} {previous:?}"
        );
    }
    // An expired timeout stays expired, from the first time the node was seen waiting.
    let expired = NodeStatus::error("not ready").waiting_since("2026-01-01T00:00:00Z");
    let (status, _) = judge(&waiting, Some(&expired), five_min, now);
    assert_eq!(status.phase, NodePhase::Error);
    assert_eq!(
        status.waiting_since.as_deref(),
        Some("2026-01-01T00:00:00Z")
    );
    // A Ready node that falls back starts waiting anew.
    let (status, _) = judge(&waiting, Some(&NodeStatus::ready("ok")), five_min, now);
    assert_eq!(status.waiting_since, Some(now.to_string()));
}

#[test]
fn a_malformed_cel_predicate_fails_the_plan_naming_the_node() {
    let mut bad = node("pvc", &[]);
    bad.ready_when = vec![ReadinessPredicate::Cel {
        expression: "self.status.(".into(),
        message: None,
        timeout: None,
    }];
    let graph = plan(vec![node("a", &[])]).graph().clone();
    let graph = Graph {
        nodes: vec![bad],
        ..graph
    };
    let errors = Plan::new(graph, "apps").unwrap_err();
    assert!(
        errors[0]
            .to_string()
            .starts_with("nodes.pvc.readyWhen[0]: expression: does not compile"),
        "{}",
        errors[0]
    );
}

#[test]
fn the_inventory_keeps_what_our_last_apply_left_when_nothing_was_written() {
    let n = node("a", &[]);
    let previous = entry("a");
    let live = LiveMeta {
        uid: Some("uid-a".into()),
        generation: Some(1),
        resource_version: Some("57".into()),
    };
    let update = |wrote: bool| {
        EntryUpdate {
            node: &n,
            previous: Some(&previous),
            identity: ("v1", "ConfigMap", "a"),
            namespace: "apps".into(),
            live: &live,
            hash: "h1".into(),
            adopted: false,
            wrote,
        }
        .entry()
    };
    assert_eq!(update(false).last_applied_resource_version, "10");
    assert_eq!(update(true).last_applied_resource_version, "57");
    assert_eq!(update(true).mode, InventoryMode::Managed);
}

#[test]
fn refusals_that_repeat_on_retry_are_permanent() {
    let cases: [(u16, &str, bool); 11] = [
        (
            403,
            "pods \"web\" is forbidden: exceeded quota: compute, requested: cpu=1",
            false,
        ),
        (
            422,
            "Deployment.apps \"web\" is invalid: spec.selector: field is immutable",
            true,
        ),
        (
            422,
            "metadata.name: Invalid value: must be no more than 63 characters",
            true,
        ),
        (400, "the object provided is unrecognized", true),
        (
            403,
            "deployments.apps is forbidden: User cannot patch resource",
            true,
        ),
        (413, "Request entity too large: limit is 3145728", true),
        (500, "etcdserver: request is too large", true),
        (
            500,
            "Internal error occurred: failed calling webhook",
            false,
        ),
        (
            503,
            "the server is currently unable to handle the request",
            false,
        ),
        (429, "too many requests", false),
        (
            409,
            "Operation cannot be fulfilled: the object has been modified",
            false,
        ),
    ];
    for (code, message, permanent) in cases {
        assert_eq!(
            super::is_permanent_refusal(code, message),
            permanent,
            "{code} {message}"
        );
    }
}

#[test]
fn an_entry_whose_node_renders_another_object_is_rekeyed_for_pruning() {
    let renders = |name: &str, api_version: &str, kind: &str| {
        let mut n = node("a", &[]);
        n.object = Some(
            serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}),
        );
        n
    };
    let recorded = |api_version: &str, kind: &str, name: &str| InventoryEntry {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        ..entry("a")
    };
    // (node renders, recorded entry, node id the pass starts with)
    let rows = [
        (
            renders("a", "v1", "ConfigMap"),
            recorded("v1", "ConfigMap", "a"),
            "a",
        ),
        (
            renders("a-v2", "v1", "ConfigMap"),
            recorded("v1", "ConfigMap", "a"),
            "replaced:a/ConfigMap/a",
        ),
        (
            renders("a", "v1", "Secret"),
            recorded("v1", "ConfigMap", "a"),
            "replaced:a/ConfigMap/a",
        ),
        // Another version of the same group is the same object.
        (
            renders("a", "apps/v1", "Deployment"),
            recorded("apps/v1beta1", "Deployment", "a"),
            "a",
        ),
        (
            renders("a", "iam.services.k8s.aws/v1alpha1", "Role"),
            recorded("rbac.authorization.k8s.io/v1", "Role", "a"),
            "replaced:a/Role/a",
        ),
    ];
    for (rendered, stored, expected) in rows {
        let p = plan(vec![rendered.clone()]);
        let start = starting_inventory(&p, std::slice::from_ref(&stored));
        assert_eq!(
            start[0].node_id, expected,
            "{:?} vs {stored:?}",
            rendered.object
        );
        // The replaced entry is pruned by a healthy pass; a kept one is not.
        let pruned = prune_plan(&["a"], &start, |_| Some(NodePhase::Ready), &ALL);
        assert_eq!(
            pruned.entries.len(),
            usize::from(expected != "a"),
            "{expected}"
        );
    }
    // A node pending on an export renders nothing yet: its entry is kept.
    let mut pending = node("a", &[]);
    pending.object = None;
    pending.pending_on = vec!["arn".into()];
    let p = plan(vec![pending]);
    let start = starting_inventory(&p, &[recorded("v1", "ConfigMap", "old")]);
    assert_eq!(start[0].node_id, "a");
}

/// A node that only reads an existing Secret named `name`.
fn reference(id: &str, name: &str) -> Node {
    let mut n = node(id, &[]);
    n.apply_policy.mode = ApplyMode::Reference;
    n.object =
        Some(serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}));
    n
}

#[test]
fn a_reference_is_read_never_written() {
    use WriteDecision::*;
    // (exists, unchanged, decision): an existing referenced object is kept as it is whatever
    // our render says; a missing one is never created.
    let rows = [
        (true, false, Keep),
        (true, true, Keep),
        (false, false, MissingReference),
        (false, true, MissingReference),
    ];
    for (exists, unchanged, expected) in rows {
        assert_eq!(
            write_decision(ApplyMode::Reference, exists, unchanged),
            expected,
            "exists={exists} unchanged={unchanged}"
        );
    }
    // Always read: its existence is its readiness, and its exports come from the live object.
    for e in [None, Some(&entry("creds"))] {
        assert!(needs_read(ApplyMode::Reference, e, "h1"), "{e:?}");
    }
}

#[test]
fn a_missing_reference_holds_its_dependents_and_pruning() {
    // creds (reference) → deployment; config independent; `old` left the graph.
    let p = plan(vec![
        reference("creds", "queue-credentials"),
        node("deployment", &["creds"]),
        node("config", &[]),
    ]);
    let stored = [entry("config"), entry("old")];
    let mut pass = Pass::start(&p, &stored);
    assert_eq!(ids(&pass.frontier()), ["creds", "config"]);
    pass.record(
        "creds",
        NodeResult::unwritten(
            missing_reference("Secret", "apps", "queue-credentials"),
            None,
        ),
    );
    pass.record("config", ready());
    assert!(pass.frontier().is_empty(), "deployment waits for creds");
    pass.close();
    let nodes = pass.nodes();
    assert_eq!(nodes["creds"].phase, NodePhase::Pending);
    assert_eq!(
        nodes["creds"].blocked_on,
        ["object:Secret/apps/queue-credentials"]
    );
    let message = nodes["creds"].ready_details.clone().unwrap_or_default();
    assert!(
        message.contains("Secret apps/queue-credentials does not exist"),
        "{message}"
    );
    assert_eq!(nodes["deployment"].phase, NodePhase::Pending);
    assert_eq!(nodes["deployment"].blocked_on, ["creds"]);
    // Nothing is pruned while the reference is missing.
    let prune = prune_plan(
        &["creds", "deployment", "config"],
        &stored,
        |id| nodes.get(id).map(|s| s.phase),
        &ALL,
    );
    assert!(prune.entries.is_empty());
    assert!(
        prune.held_back.unwrap_or_default().contains("creds"),
        "the reason names the missing reference"
    );
    let out = pass.into_outcome();
    assert!(!out.ready);
    assert_eq!(
        out.stalled, None,
        "waiting for someone to create it is not a failure"
    );
    // Cluster-scoped: no namespace in the name.
    assert_eq!(
        missing_reference("StorageClass", "", "fast").blocked_on,
        ["object:StorageClass/fast"]
    );
}

#[test]
fn a_referenced_object_never_enters_the_inventory() {
    let p = plan(vec![
        reference("creds", "queue-credentials"),
        node("deployment", &["creds"]),
    ]);
    let mut pass = Pass::start(&p, &[]);
    // Even a result that carries an entry (an executor wrapper's mistake) records none, and
    // no adoption is announced.
    let adopted = InventoryEntry {
        mode: InventoryMode::Adopted,
        ..entry("creds")
    };
    pass.record(
        "creds",
        NodeResult::unwritten(NodeStatus::ready("exists"), Some(adopted)),
    );
    assert_eq!(
        ids(&pass.frontier()),
        ["deployment"],
        "a present reference is Ready"
    );
    pass.record(
        "deployment",
        NodeResult::unwritten(NodeStatus::ready("exists"), Some(entry("deployment"))),
    );
    let out = pass.finish();
    assert!(out.ready);
    assert!(out.changes.is_empty(), "{:?}", out.changes);
    let recorded: Vec<&str> = out.inventory.iter().map(|e| e.node_id.as_str()).collect();
    assert_eq!(recorded, ["deployment"]);
    // So neither a prune nor the instance's deletion can ever reach it.
    let prune = prune_plan(
        &["deployment"],
        &out.inventory,
        |_| Some(NodePhase::Ready),
        &ALL,
    );
    assert!(prune.entries.is_empty());
}

#[test]
fn an_object_whose_node_becomes_a_reference_is_released_not_deleted() {
    // The module managed Secret queue-credentials as node `creds`; now it only reads it.
    let stored = InventoryEntry {
        kind: "Secret".into(),
        name: "queue-credentials".into(),
        ..entry("creds")
    };
    let p = plan(vec![
        reference("creds", "queue-credentials"),
        node("other", &[]),
    ]);
    let start = starting_inventory(&p, &[stored, entry("other")]);
    assert_eq!(
        start[0].node_id,
        "referenced:creds/Secret/queue-credentials"
    );
    assert_eq!(start[0].deletion_policy, Some(DeletionPolicy::Orphan));
    // A healthy pass releases it (even under the strictest prune threshold: nothing is
    // deleted), and says so in words.
    let ready = |_: &str| Some(NodePhase::Ready);
    let prune = prune_plan(
        &["creds", "other"],
        &start,
        ready,
        &PruneThreshold::Percent(0),
    );
    assert_eq!(prune.entries.len(), 1);
    assert_eq!(prune.entries[0].1, DeletionPolicy::Orphan);
    assert_eq!(prune.guarded, None);
    let mut pass = Pass::start(&p, &start);
    pass.pruned(&prune.entries[0].0, Some(ChangeAction::Released));
    let out = pass.into_outcome();
    assert_eq!(
        out.changes[0].to_string(),
        "released Secret queue-credentials: its node creds now only references it"
    );
    assert!(out.inventory.iter().all(|e| e.node_id == "other"));
    // Deleting the instance before that pass only unlabels it too.
    assert_eq!(
        entry_policy(&start[0], DeletionPolicy::Delete),
        DeletionPolicy::Orphan
    );
}

#[test]
fn a_reference_is_read_where_the_graph_names_it() {
    let r = reference("creds", "queue-credentials");
    let address = reference_address(&r, "apps").unwrap();
    assert_eq!(
        (
            address.api_version.as_str(),
            address.kind.as_str(),
            address.namespace.as_str(),
            address.name.as_str()
        ),
        ("v1", "Secret", "apps", "queue-credentials")
    );
    // Not a reference, or not rendered yet: nothing to read.
    assert!(reference_address(&node("a", &[]), "apps").is_none());
    let mut waiting = reference("creds", "x");
    waiting.object = None;
    assert!(reference_address(&waiting, "apps").is_none());
}

#[test]
fn a_cluster_scoped_reference_needs_the_allow_list() {
    let allowed = ["StorageClass.storage.k8s.io".to_string()];
    assert_eq!(
        reference_scope_refusal("storage.k8s.io", "StorageClass", &allowed),
        None
    );
    let refusal = reference_scope_refusal("", "Namespace", &allowed).unwrap_or_default();
    assert!(refusal.contains("Namespace is cluster-scoped"), "{refusal}");
    assert!(refusal.contains("reference"), "{refusal}");
}

/// A CronJob over five runs as the executor sees it pass after pass: its node stays Ready and so
/// does the instance; a failed run turns it Unhealthy once (one Warning), the runs after it keep
/// it Unhealthy until one succeeds (one Normal), and no pass flips Ready.
#[test]
fn a_cronjob_run_that_fails_is_reported_once_and_never_flips_ready() {
    use crate::readiness::{CompiledPredicate, DefaultReadiness, Readiness};
    use crate::status::{AbstractionStatus, Health, summarize, transitions};
    let cron = |status: serde_json::Value| {
        serde_json::json!({"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "report", "generation": 1},
            "spec": {"schedule": "*/5 * * * *"}, "status": status})
    };
    let run = |job: &str| serde_json::json!([{"kind": "Job", "name": job}]);
    // The CronJob's status pass after pass: (what happened, status, expected health).
    let passes = [
        ("created", serde_json::json!({}), Health::Healthy),
        (
            "first run",
            serde_json::json!({"active": run("report-1"), "lastScheduleTime": "2026-12-02T10:00:00Z"}),
            Health::Healthy,
        ),
        (
            "it succeeded",
            serde_json::json!({"lastScheduleTime": "2026-12-02T10:00:00Z", "lastSuccessfulTime": "2026-12-02T10:00:20Z"}),
            Health::Healthy,
        ),
        (
            "second run",
            serde_json::json!({"active": run("report-2"), "lastScheduleTime": "2026-12-02T10:05:00Z", "lastSuccessfulTime": "2026-12-02T10:00:20Z"}),
            Health::Healthy,
        ),
        (
            "it failed",
            serde_json::json!({"lastScheduleTime": "2026-12-02T10:05:00Z", "lastSuccessfulTime": "2026-12-02T10:00:20Z"}),
            Health::Unhealthy,
        ),
        (
            "a resync",
            serde_json::json!({"lastScheduleTime": "2026-12-02T10:05:00Z", "lastSuccessfulTime": "2026-12-02T10:00:20Z"}),
            Health::Unhealthy,
        ),
        (
            "third run",
            serde_json::json!({"active": run("report-3"), "lastScheduleTime": "2026-12-02T10:10:00Z", "lastSuccessfulTime": "2026-12-02T10:00:20Z"}),
            Health::Unhealthy,
        ),
        (
            "it succeeded",
            serde_json::json!({"lastScheduleTime": "2026-12-02T10:10:00Z", "lastSuccessfulTime": "2026-12-02T10:10:31Z"}),
            Health::Healthy,
        ),
    ];
    let now: Timestamp = "2026-12-02T10:11:00Z".parse().unwrap();
    let exists =
        [CompiledPredicate::compile(&ReadinessPredicate::Exists { timeout: None }).unwrap()];
    for predicates in [&[][..], &exists[..]] {
        let mut status = AbstractionStatus::default();
        let mut events = Vec::new();
        for (what, cron_status, health) in &passes {
            let verdict = DefaultReadiness
                .evaluate(predicates, &cron(cron_status.clone()))
                .unwrap();
            let (node, terminal) = judge(&verdict, status.nodes.get("report"), None, now);
            assert!(!terminal);
            assert_eq!(node.phase, NodePhase::Ready, "{what}: {node:?}");
            assert_eq!(node.health, Some(*health), "{what}: {node:?}");
            let before = status.clone();
            status.nodes.insert("report".into(), node);
            let outcome = Outcome {
                ready: true,
                ..Default::default()
            };
            summarize(&mut status, &outcome, Some(1), "2026-12-02T10:11:00Z");
            assert!(status.is_ready(), "{what}");
            // The Ready condition says so while it lasts, without turning False.
            let message = status
                .condition(crate::status::ConditionType::Ready)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            assert_eq!(
                message.contains("1/1 nodes ready; unhealthy: report: the last run"),
                *health == Health::Unhealthy,
                "{what}: {message}"
            );
            events.extend(
                transitions(&before, &status)
                    .into_iter()
                    .map(|e| (*what, e)),
            );
        }
        let seen: Vec<(&str, &str, bool)> = events
            .iter()
            .map(|(what, e)| (*what, e.reason.as_str(), e.warning))
            .collect();
        assert_eq!(
            seen,
            [
                ("created", "Ready", false),
                ("it failed", "NodeUnhealthy", true),
                ("it succeeded", "NodeHealthy", false),
            ]
        );
        let unhealthy = events[1].1.note.clone().unwrap_or_default();
        assert!(
            unhealthy.starts_with("report: the last run (scheduled 2026-12-02T10:05:00Z) did not succeed; last success: 2026-12-02T10:00:20Z"),
            "{unhealthy}"
        );
    }
}

#[test]
fn health_the_object_cannot_tell_keeps_the_last_judgement() {
    use crate::readiness::HealthVerdict;
    use crate::status::Health;
    let now: Timestamp = "2026-12-02T10:11:00Z".parse().unwrap();
    let verdict = |ready: bool, health: Option<Health>| Verdict {
        ready,
        details: "d".into(),
        terminal: None,
        health: health.map(|health| HealthVerdict {
            health,
            details: format!("judged {health:?}"),
        }),
    };
    let before = |health: Option<Health>| {
        let s = NodeStatus::ready("d");
        match health {
            Some(h) => s.with_health(h, format!("before {h:?}")),
            None => s,
        }
    };
    use Health::{Healthy, Unhealthy, Unknown};
    // (judged now, before, expected health, expected details)
    let cases = [
        (
            Some(Unknown),
            Some(Unhealthy),
            Some(Unhealthy),
            Some("before Unhealthy"),
        ),
        (
            Some(Unknown),
            Some(Healthy),
            Some(Healthy),
            Some("before Healthy"),
        ),
        (
            Some(Unknown),
            Some(Unknown),
            Some(Unknown),
            Some("judged Unknown"),
        ),
        (Some(Unknown), None, Some(Unknown), Some("judged Unknown")),
        (
            Some(Healthy),
            Some(Unhealthy),
            Some(Healthy),
            Some("judged Healthy"),
        ),
        (
            Some(Unhealthy),
            Some(Healthy),
            Some(Unhealthy),
            Some("judged Unhealthy"),
        ),
        (None, Some(Unhealthy), None, None),
    ];
    for (judged, previous, health, details) in cases {
        for ready in [true, false] {
            let (status, _) = judge(&verdict(ready, judged), Some(&before(previous)), None, now);
            assert_eq!(
                (status.health, status.health_details.as_deref()),
                (health, details),
                "{judged:?} after {previous:?}"
            );
            // Health never decides the phase.
            let phase = if ready {
                NodePhase::Ready
            } else {
                NodePhase::Applied
            };
            assert_eq!(status.phase, phase);
        }
    }
}

#[test]
fn the_read_source_table() {
    use ReadSource::{Api, Cache, OwnWrite};
    // (synced, keeps needed fields, own write pending, in store) → source
    let cases = [
        // Not listed yet, or not watchable (no list/watch permission): as before the cache.
        ((false, true, false, true), Api),
        ((false, true, true, true), Api),
        ((false, false, false, false), Api),
        // Trimmed of a field a render reads (a CEL predicate, an export path).
        ((true, false, false, true), Api),
        ((true, false, true, true), Api),
        // Our write's answer until the watch delivers it, present in the store or not.
        ((true, true, true, true), OwnWrite),
        ((true, true, true, false), OwnWrite),
        // The steady state: no request.
        ((true, true, false, true), Cache),
        // Absent: deleted, or unlabelled (adoption needs to see it): one GET.
        ((true, true, false, false), Api),
    ];
    for ((synced, keeps_needed_fields, own_write_pending, in_store), want) in cases {
        let view = CacheView {
            synced,
            keeps_needed_fields,
            own_write_pending,
            in_store,
        };
        assert_eq!(read_source(view), want, "{view:?}");
    }
}

#[test]
fn an_own_write_is_remembered_only_while_the_watch_has_not_passed_it() {
    // (store before the write, store after it, version written) → remember
    let cases = [
        // Nothing delivered since: the watch is behind our write.
        ((Some("10"), Some("10"), "12"), true),
        ((None, None, "12"), true),
        // The watch already delivered our write.
        ((Some("10"), Some("12"), "12"), false),
        ((None, Some("12"), "12"), false),
        // Something was delivered (ours and a later change, or an earlier one): the store is
        // trusted, never a version ordering.
        ((Some("10"), Some("13"), "12"), false),
        ((None, Some("9"), "12"), false),
        // Deleted meanwhile.
        ((Some("10"), None, "12"), false),
        // A write that changed nothing leaves the version the store shows.
        ((Some("10"), Some("10"), "10"), false),
    ];
    for ((before, now, written), want) in cases {
        assert_eq!(
            remember_own_write(before, now, written),
            want,
            "{before:?} → {now:?}, wrote {written}"
        );
    }
    use WatchDelivery::{Applied, Deleted, Relisted};
    // (remembered version, delivered) → settled
    let deliveries = [
        (("12", Applied("12")), true),
        // A change made before ours, delivered late: ours still stands.
        (("12", Applied("11")), false),
        (("12", Deleted), true),
        (("12", Relisted), true),
    ];
    for ((remembered, delivered), want) in deliveries {
        assert_eq!(
            settles_own_write(remembered, delivered),
            want,
            "{remembered} after {delivered:?}"
        );
    }
    // Adoption reads the object from the server, whatever answered first.
    use ReadSource::{Api, Cache, OwnWrite};
    for (source, recorded, want) in [
        (Cache, false, true),
        (OwnWrite, false, true),
        (Api, false, false),
        (Cache, true, false),
        (OwnWrite, true, false),
    ] {
        assert_eq!(
            confirm_before_adopting(source, recorded),
            want,
            "{source:?}, recorded {recorded}"
        );
    }
}

#[test]
fn an_instance_on_its_way_to_ready_is_looked_at_again_when_a_timeout_expires_or_after_the_safety_net()
 {
    let now: Timestamp = "2026-12-02T10:10:00Z".parse().unwrap();
    let secs = Duration::from_secs;
    let applied = |since: &str| NodeStatus::applied("0/1 available", since);
    let nodes = |list: Vec<(&str, NodeStatus)>| -> BTreeMap<String, NodeStatus> {
        list.into_iter()
            .map(|(id, s)| (id.to_string(), s))
            .collect()
    };
    // (case, nodes, timeout of each node, expected)
    type Timeouts = fn(&str) -> Option<Duration>;
    let cases: Vec<(&str, BTreeMap<String, NodeStatus>, Timeouts, Duration)> = vec![
        (
            "no timeout anywhere: the watches wake it, the safety net is 30 s",
            nodes(vec![("deployment", applied("2026-12-02T10:09:00Z"))]),
            |_| None,
            PROGRESSING_RECHECK,
        ),
        (
            "a timeout far away: the safety net first",
            nodes(vec![("deployment", applied("2026-12-02T10:09:00Z"))]),
            |_| Some(Duration::from_secs(600)),
            PROGRESSING_RECHECK,
        ),
        (
            "a timeout 10 s away: one second after it",
            nodes(vec![("deployment", applied("2026-12-02T10:09:10Z"))]),
            |_| Some(Duration::from_secs(60)),
            secs(11),
        ),
        (
            "a timeout already past (the pass that reports it is due): one second",
            nodes(vec![("deployment", applied("2026-12-02T10:00:00Z"))]),
            |_| Some(Duration::from_secs(60)),
            secs(1),
        ),
        (
            "the soonest of several waiting nodes",
            nodes(vec![
                ("deployment", applied("2026-12-02T10:09:55Z")),
                ("role", applied("2026-12-02T10:09:00Z")),
            ]),
            |id| match id {
                "deployment" => Some(Duration::from_secs(20)),
                _ => Some(Duration::from_secs(80)),
            },
            secs(16),
        ),
        (
            "only Applied nodes wait: a Ready or pending node's timeout does not count",
            nodes(vec![
                ("deployment", NodeStatus::ready("1/1 available")),
                (
                    "pdb",
                    NodeStatus::pending(vec!["deployment".into()], "waits"),
                ),
            ]),
            |_| Some(Duration::from_secs(5)),
            PROGRESSING_RECHECK,
        ),
        (
            "an unreadable waiting-since is not a deadline",
            nodes(vec![("deployment", applied("yesterday"))]),
            |_| Some(Duration::from_secs(5)),
            PROGRESSING_RECHECK,
        ),
    ];
    for (case, nodes, timeouts, expected) in cases {
        assert_eq!(
            progressing_recheck(&nodes, timeouts, now),
            expected,
            "{case}"
        );
    }
}
