//! Target `graph`: Graph JSON through decoding, validation and planning.
//!
//! Input: Graph JSON text (what `render -o json` prints), or structured: up to eight nodes
//! whose ids, dependencies and export names come from small pools (so duplicates, unknown
//! dependencies and cycles are common), objects missing a required field or in another
//! namespace, predicates as in the `readiness` target, and now and then one value of the
//! wrong type anywhere in the document.
//!
//! Properties:
//! - JSON that does not decode as a Graph is rejected naming the field
//!   (`nodes[0].readyWhen[1].timeout`), unless the text is not JSON or not an object at all;
//! - a Graph that validation or planning rejects gets errors that each name a field
//!   (`nodes.<id>.…`, `nodes: …`, `exports.<name>.node`); planning rejects what validation
//!   rejects, and beyond it only predicates that do not compile;
//! - a plan has every node exactly once in apply order, each after all of its dependencies;
//!   teardown order is apply order reversed; each node's predicates are compiled;
//! - a pass that finds every applied node Ready offers each node at most once and ends;
//! - a valid Graph round-trips through its JSON form; drawing it (DOT, Mermaid) never panics.
use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Unstructured;
use cuebe_core::graph::{Graph, GraphError};
use cuebe_core::plan::{NodeResult, Pass, Plan};
use cuebe_core::status::NodeStatus;
use serde_json::{Map, Value, json};

use crate::make::{chance, corrupt, count, pick, string};
use crate::names_a_field;

/// The instance's namespace every generated graph is validated for.
pub const NAMESPACE: &str = "apps";

const IDS: &[&str] = &["a", "b", "c", "d", "deployment", "service"];
const EXPORTS: &[&str] = &["roleArn", "url"];
const KEYS: &[&str] = &[
    "id",
    "nodes",
    "object",
    "dependsOn",
    "readyWhen",
    "applyPolicy",
    "mode",
    "pendingOn",
    "exports",
    "node",
    "path",
    "metadata",
    "name",
    "namespace",
    "type",
    "timeout",
    "expression",
];

fn object(u: &mut Unstructured<'_>, id: &str) -> Value {
    let (api_version, kind) = pick(
        u,
        &[
            ("v1", "ConfigMap"),
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
        ],
    );
    let mut obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": id}});
    match count(u, 9) {
        0 => obj["metadata"]["namespace"] = json!(NAMESPACE),
        1 => obj["metadata"]["namespace"] = json!(string(u, &["other", ""])),
        2 => {
            if let Some(m) = obj.as_object_mut() {
                m.remove(pick(u, &["apiVersion", "kind", "metadata"]));
            }
        }
        3 => obj["metadata"]["name"] = json!(""),
        _ => {}
    }
    obj
}

fn node(u: &mut Unstructured<'_>) -> Value {
    let id = string(u, IDS);
    let mut n = Map::new();
    n.insert("id".into(), json!(id));
    if chance(u, 90) {
        n.insert("object".into(), object(u, &id));
    }
    let deps: Vec<String> = (0..count(u, 2)).map(|_| string(u, IDS)).collect();
    n.insert("dependsOn".into(), json!(deps));
    let ready: Vec<Value> = (0..count(u, 2))
        .map(|_| crate::readiness::predicate(u))
        .collect();
    n.insert("readyWhen".into(), Value::Array(ready));
    if chance(u, 30) {
        n.insert(
            "applyPolicy".into(),
            json!({
                "mode": pick(u, &["CreateOrUpdate", "CreateOnly", "AdoptOnly", "Reference"]),
                "conflictPolicy": pick(u, &["Fail", "Force"]),
            }),
        );
    }
    if chance(u, 20) {
        n.insert(
            "deletionPolicy".into(),
            json!(pick(u, &["Delete", "Orphan"])),
        );
    }
    if chance(u, 15) {
        n.insert("pendingOn".into(), json!([string(u, EXPORTS)]));
    }
    Value::Object(n)
}

/// A Graph document, mostly well-formed.
pub fn document(u: &mut Unstructured<'_>) -> Value {
    let nodes: Vec<Value> = (0..count(u, 8)).map(|_| node(u)).collect();
    let exports: Vec<Value> = (0..count(u, 2))
        .map(|_| {
            json!({
                "name": string(u, EXPORTS),
                "node": string(u, IDS),
                "path": "status.ackResourceMetadata.arn",
            })
        })
        .collect();
    let mut doc = json!({
        "graphVersion": "cuebe.dev/v1alpha1",
        "metadata": {"platformRefResolved": "sha256:0", "renderHash": "sha256:0"},
        "nodes": nodes,
        "exports": exports,
    });
    if chance(u, 10) {
        doc["violations"] = json!([{
            "path": "spec.image",
            "rule": "allowed-registries",
            "message": "no",
            "severity": pick(u, &["Error", "Warning"]),
        }]);
    }
    if chance(u, 15) {
        corrupt(u, &mut doc, KEYS);
    }
    doc
}

/// Runs the target on raw bytes (see the crate doc for the two readings).
pub fn run(data: &[u8]) {
    if crate::is_text(data, b"{[ \n") {
        if let Ok(text) = std::str::from_utf8(data) {
            check_text(text);
        }
    } else {
        let doc = document(&mut Unstructured::new(data));
        check_text(&doc.to_string());
    }
}

/// Decodes `text` as a Graph and checks every property of the module doc.
pub fn check_text(text: &str) {
    match Graph::from_json(text) {
        Ok(graph) => check(graph),
        Err(e) => {
            let is_object = serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object());
            assert!(
                !is_object || !e.path.is_empty() || names_a_field(&e.message),
                "a Graph document that does not decode must name the field: {e}"
            );
        }
    }
}

/// Checks every property of the module doc for a decoded graph.
pub fn check(graph: Graph) {
    let _ = (graph.to_dot(), graph.to_mermaid());
    if !has_float(&serde_json::to_value(&graph).unwrap_or(Value::Null)) {
        // Floats may move by one unit in the last place through serde_json's parser.
        let text = serde_json::to_string(&graph).unwrap_or_default();
        let again = Graph::from_json(&text);
        assert!(
            again.as_ref() == Ok(&graph),
            "a Graph must round-trip through its JSON: {again:?}"
        );
    }
    let validated = graph.validate(NAMESPACE);
    if let Err(errors) = &validated {
        for e in errors {
            let message = e.to_string();
            assert!(
                (message.starts_with("nodes") || message.starts_with("exports."))
                    && names_a_field(&message),
                "a validation error must name its field: {message}"
            );
        }
    }
    let plan = Plan::new(graph.clone(), NAMESPACE);
    let plan = match (plan, validated) {
        (Ok(plan), Ok(())) => plan,
        (Err(planned), Err(validated)) => {
            assert_eq!(planned, validated, "planning reports validation's errors");
            return;
        }
        (Err(planned), Ok(())) => {
            for e in planned {
                let message = e.to_string();
                assert!(
                    matches!(e, GraphError::InvalidPredicate { .. })
                        && message.starts_with("nodes.")
                        && message.contains("]: expression: "),
                    "beyond validation, planning only rejects CEL that does not compile, \
                     naming the predicate: {message}"
                );
            }
            return;
        }
        (Ok(_), Err(errors)) => panic!("planned a graph validation rejects: {errors:?}"),
    };
    check_plan(&plan, &graph);
}

fn check_plan(plan: &Plan, graph: &Graph) {
    let order: Vec<&str> = plan.apply_order().map(|n| n.id.as_str()).collect();
    let mut ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    ids.sort_unstable();
    assert_eq!(sorted, ids, "apply order has every node exactly once");
    let position: BTreeMap<&str, usize> =
        order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for n in &graph.nodes {
        for d in &n.depends_on {
            assert!(
                position[d.as_str()] < position[n.id.as_str()],
                "{} is applied before its dependency {d}: {order:?}",
                n.id
            );
        }
        assert_eq!(
            plan.predicates(&n.id).len(),
            n.ready_when.len(),
            "every predicate of {} is compiled",
            n.id
        );
        assert_eq!(plan.node(&n.id), Some(n));
    }
    let teardown: Vec<&str> = plan.teardown_order().map(|n| n.id.as_str()).collect();
    let mut reversed = order.clone();
    reversed.reverse();
    assert_eq!(teardown, reversed, "teardown is apply order reversed");

    // A pass as the executor walks it: nodes start once their own dependencies are Ready, and
    // results come back in another order than the starts (the latest started first). Each
    // node is started at most once and only after its dependencies are Ready, some stay
    // waiting (their dependents never start), and the walk ends with a state for every node.
    let mut pass = Pass::start(plan, &[]);
    let mut started = BTreeSet::new();
    let mut ready = BTreeSet::new();
    let mut in_flight: Vec<String> = Vec::new();
    for _ in 0..=2 * graph.nodes.len() {
        for node in pass.take_startable() {
            assert!(started.insert(node.id.clone()), "{} started twice", node.id);
            for d in &node.depends_on {
                assert!(
                    ready.contains(d),
                    "{} started before {d} was Ready",
                    node.id
                );
            }
            in_flight.push(node.id.clone());
        }
        let Some(id) = in_flight.pop() else {
            break;
        };
        let status = if id.len() % 3 == 0 {
            NodeStatus::applied("waiting", "2026-01-01T00:00:00Z")
        } else {
            ready.insert(id.clone());
            NodeStatus::ready("ok")
        };
        pass.record(&id, NodeResult::unwritten(status, None));
    }
    assert!(in_flight.is_empty(), "a pass must end");
    assert!(pass.take_startable().is_empty(), "a pass must end");
    let outcome = pass.finish();
    assert_eq!(
        outcome.nodes.len(),
        graph.nodes.len(),
        "every node has a state"
    );
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}
