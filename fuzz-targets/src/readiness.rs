//! Target `readiness`: readiness predicates (CEL included) against arbitrary live objects.
//!
//! Input: text `{"readyWhen": [predicates], "live": {object}}`, or structured: a Kubernetes-like
//! object (workload kinds, conditions, generations at the edges of `i64`, fields of the wrong
//! type) and up to four predicates, CEL expressions built from a small grammar of what goes
//! wrong in CEL (overflow, division by zero, missing fields, type mismatches).
//!
//! Properties:
//! - a predicate list that does not decode is rejected naming the field (`readyWhen[1].type`);
//! - a predicate that does not compile says which of its fields is wrong (`timeout:`,
//!   `expression:`);
//! - evaluation never panics; a CEL predicate that cannot be evaluated is an `Err` naming the
//!   predicate, never a panic, and only a CEL predicate gives one;
//! - the verdict is deterministic, never Ready with a terminal failure or with a controller
//!   behind the current generation, and Ready for a list exactly when Ready for each predicate
//!   alone; no predicates at all (the kind's built-in judgement) is Ready exactly when
//!   `Current` is; health is the object's, whatever the predicates.
use arbitrary::Unstructured;
use cuebe_core::graph::{ReadinessPredicate, decode};
use cuebe_core::readiness::{CompiledPredicate, DefaultReadiness, Readiness, Verdict};
use serde_json::{Map, Value, json};

use crate::make::{any_value, chance, corrupt, count, int, pick, string};

/// Keys a live object's readiness code reads, used for arbitrary objects too.
pub const LIVE_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "generation",
    "name",
    "spec",
    "status",
    "replicas",
    "observedGeneration",
    "conditions",
    "type",
    "status",
    "reason",
    "message",
    "phase",
    "loadBalancer",
    "ingress",
    "availableReplicas",
    "readyReplicas",
    "updatedReplicas",
];

const TIMEOUTS: &[&str] = &[
    "30s",
    "5m",
    "1h30m",
    "250ms",
    "",
    "soon",
    "5 minutes",
    "0s",
    "18446744073709551615s",
    "18446744073709551615h",
    "9999999999999999999h9999999999999999999h",
    "99999999999999999999s",
];

const CONDITION_TYPES: &[&str] = &[
    "Ready",
    "Available",
    "Stalled",
    "Reconciling",
    "ACK.ResourceSynced",
    "ACK.Terminal",
    "Terminal",
    "Complete",
    "Failed",
    "",
];

const STATUSES: &[&str] = &["True", "False", "Unknown", "true", ""];

const KINDS: &[(&str, &str)] = &[
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "ReplicaSet"),
    ("batch/v1", "Job"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("iam.services.k8s.aws/v1alpha1", "Role"),
    ("x/v1", "Thing"),
];

/// CEL pieces: operands over the live object and literals where CEL's arithmetic and
/// conversions have edge cases.
const CEL_OPERANDS: &[&str] = &[
    "self",
    "self.status",
    "self.status.phase",
    "self.metadata.generation",
    "self.status.observedGeneration",
    "self.status.conditions",
    "self.status.conditions[0]",
    "self.status.conditions[0].status",
    "self.status.conditions[18446744073709551615]",
    "self.status.conditions[-1]",
    "self.spec.replicas",
    "self.missing.deeper",
    "self['status']",
    "size(self.status.conditions)",
    "size(self)",
    "has(self.status)",
    "has(self.status.phase)",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615u",
    "0",
    "1",
    "-1",
    "1.5",
    "'Bound'",
    "''",
    "true",
    "null",
    "[]",
    "{}",
    "[1, 2, 3]",
    "int('x')",
    "int(1e100)",
    "uint(-1)",
    "double('nan')",
    "string(self.metadata)",
    "timestamp('2026-01-01T00:00:00Z')",
    "timestamp('bad')",
    "duration('1h')",
    "duration('-9999999999999h')",
    "'abc'.matches('(a+)+$')",
    "'abc'.matches('[')",
    "'abc'.startsWith('a')",
    "self.status.conditions.exists(c, c.type == 'Ready')",
    "self.status.conditions.all(c, c.status == 'True')",
    "self.status.conditions.map(c, c.type)",
    "self.status.conditions.filter(c, c.status == 'True')",
    "[1, 2].map(x, x / 0)",
    "b'abc'",
    "max(1, 2)",
];

const CEL_OPERATORS: &[&str] = &[
    " == ", " != ", " < ", " <= ", " > ", " + ", " - ", " * ", " / ", " % ", " && ", " || ", " in ",
];

/// A CEL expression: usually `operand op operand`, sometimes nested, negated or raw bytes.
pub fn cel_expression(u: &mut Unstructured<'_>, depth: usize) -> String {
    if chance(u, 5) {
        return u.arbitrary::<String>().unwrap_or_default();
    }
    let operand = |u: &mut Unstructured<'_>| {
        if depth > 0 && chance(u, 25) {
            format!("({})", cel_expression(u, depth - 1))
        } else {
            pick(u, CEL_OPERANDS).to_string()
        }
    };
    let left = operand(u);
    let expr = if chance(u, 20) {
        left
    } else {
        let op = pick(u, CEL_OPERATORS);
        let right = operand(u);
        format!("{left}{op}{right}")
    };
    match count(u, 9) {
        0 => format!("!{expr}"),
        1 => format!("-{expr}"),
        2 => format!("{expr} ? true : false"),
        _ => expr,
    }
}

fn timeout(u: &mut Unstructured<'_>, fields: &mut Map<String, Value>) {
    if chance(u, 40) {
        fields.insert("timeout".into(), Value::String(string(u, TIMEOUTS)));
    }
}

/// One predicate as Graph JSON (`{"type": …}`), mostly well-formed.
pub fn predicate(u: &mut Unstructured<'_>) -> Value {
    let mut fields = Map::new();
    let kind = pick(
        u,
        &[
            "Exists",
            "ConditionMatch",
            "DeploymentAvailable",
            "ServiceLoadBalancerReady",
            "Current",
            "Cel",
            "Cel",
            "Cel",
            "Eventually",
        ],
    );
    fields.insert("type".into(), json!(kind));
    match kind {
        "ConditionMatch" => {
            let key = if chance(u, 20) {
                "condition"
            } else {
                "conditionType"
            };
            fields.insert(key.into(), json!(string(u, CONDITION_TYPES)));
            fields.insert("status".into(), json!(string(u, STATUSES)));
            if chance(u, 30) {
                fields.insert("reason".into(), json!(string(u, &["Synced", "Other"])));
            }
        }
        "Cel" => {
            fields.insert("expression".into(), json!(cel_expression(u, 2)));
        }
        _ => {}
    }
    timeout(u, &mut fields);
    Value::Object(fields)
}

fn condition(u: &mut Unstructured<'_>) -> Value {
    let mut c = Map::new();
    c.insert("type".into(), json!(string(u, CONDITION_TYPES)));
    c.insert("status".into(), json!(string(u, STATUSES)));
    if chance(u, 50) {
        c.insert("reason".into(), json!(string(u, &["Synced", "Other", ""])));
    }
    if chance(u, 50) {
        c.insert("message".into(), json!(string(u, &["AccessDenied", ""])));
    }
    if chance(u, 30) {
        c.insert("observedGeneration".into(), json!(int(u)));
    }
    Value::Object(c)
}

/// A live object the readiness code has something to say about.
pub fn live_object(u: &mut Unstructured<'_>) -> Value {
    let (api_version, kind) = pick(u, KINDS);
    let mut obj = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "web"},
        "spec": {},
        "status": {},
    });
    if chance(u, 70) {
        obj["metadata"]["generation"] = json!(int(u));
    }
    if chance(u, 60) {
        obj["spec"]["replicas"] = json!(int(u));
    }
    if chance(u, 20) {
        obj["spec"]["type"] = json!(pick(u, &["LoadBalancer", "ClusterIP"]));
    }
    if chance(u, 20) {
        obj["spec"]["updateStrategy"] = json!({
            "type": pick(u, &["OnDelete", "RollingUpdate"]),
            "rollingUpdate": {"partition": int(u)},
        });
    }
    for key in [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "availableReplicas",
        "readyReplicas",
        "desiredNumberScheduled",
        "updatedNumberScheduled",
        "numberAvailable",
        "numberReady",
        "succeeded",
        "active",
    ] {
        if chance(u, 40) {
            obj["status"][key] = json!(int(u));
        }
    }
    if chance(u, 30) {
        obj["status"]["phase"] = json!(string(u, &["Bound", "Pending", "Succeeded"]));
    }
    if chance(u, 20) {
        obj["status"]["updateRevision"] = json!(pick(u, &["r1", "r2"]));
        obj["status"]["currentRevision"] = json!(pick(u, &["r1", "r2"]));
    }
    if chance(u, 20) {
        let ingress: Vec<Value> = (0..count(u, 2)).map(|_| json!({"ip": "1.2.3.4"})).collect();
        obj["status"]["loadBalancer"] = json!({"ingress": ingress});
    }
    if chance(u, 70) {
        let conditions: Vec<Value> = (0..count(u, 4)).map(|_| condition(u)).collect();
        obj["status"]["conditions"] = Value::Array(conditions);
    }
    // Anything may be anything: status as a string, generation as a float, conditions as null.
    for _ in 0..count(u, 2) {
        corrupt(u, &mut obj, LIVE_KEYS);
    }
    if chance(u, 3) {
        obj = any_value(u, 4, LIVE_KEYS);
    }
    obj
}

/// Runs the target on raw bytes (see the crate doc for the two readings).
pub fn run(data: &[u8]) {
    if crate::is_text(data, b"{ \n") {
        let Ok(doc) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let live = doc.get("live").cloned().unwrap_or(Value::Null);
        let ready_when = doc.get("readyWhen").cloned().unwrap_or(json!([]));
        check_json(ready_when, &live);
    } else {
        let mut u = Unstructured::new(data);
        let ready_when = Value::Array((0..count(&mut u, 4)).map(|_| predicate(&mut u)).collect());
        let live = live_object(&mut u);
        check_json(ready_when, &live);
    }
}

/// Decodes `ready_when` as a Graph node's `readyWhen` and checks every property against
/// `live`.
pub fn check_json(ready_when: Value, live: &Value) {
    let predicates: Vec<ReadinessPredicate> = match decode(ready_when, "readyWhen") {
        Ok(p) => p,
        Err(e) => {
            assert!(
                e.path.starts_with("readyWhen"),
                "a readyWhen that does not decode must name its field: {e}"
            );
            return;
        }
    };
    check(&predicates, live);
}

/// Checks every property of the module doc for `predicates` against `live`.
pub fn check(predicates: &[ReadinessPredicate], live: &Value) {
    let mut compiled = Vec::new();
    for p in predicates {
        match CompiledPredicate::compile(p) {
            Ok(c) => compiled.push(c),
            Err(message) => assert!(
                message.starts_with("timeout: ") || message.starts_with("expression: "),
                "a predicate that does not compile must name its field: {message}"
            ),
        }
    }
    let all = DefaultReadiness.evaluate(&compiled, live);
    // The verdict, not its details: a CEL error's details embed the object in hash-map order
    // (a known finding, see the book's fuzzing guide and `cel_error_details_are_stable`).
    let gist = |r: &Result<Verdict, _>| r.as_ref().map(|v| (v.ready, v.terminal.clone())).ok();
    assert_eq!(
        gist(&all),
        gist(&DefaultReadiness.evaluate(&compiled, live)),
        "readiness must be a function of the predicates and the object"
    );
    let singles: Vec<Result<Verdict, _>> = compiled
        .iter()
        .map(|c| DefaultReadiness.evaluate(std::slice::from_ref(c), live))
        .collect();
    for (c, single) in compiled.iter().zip(&singles) {
        if let Err(e) = single {
            assert!(
                matches!(c.predicate, ReadinessPredicate::Cel { .. }),
                "only a CEL predicate can fail to evaluate, not {:?}: {e}",
                c.predicate
            );
            assert!(
                e.predicate.starts_with("cel: ") && !e.message.is_empty(),
                "a CEL evaluation error names the predicate and says why: {e}"
            );
        }
    }
    let only = |p: ReadinessPredicate| {
        let compiled = CompiledPredicate::compile(&p).expect("a built-in predicate compiles");
        DefaultReadiness.evaluate(&[compiled], live)
    };
    // What the object alone says (its generation and a terminal failure): `Exists`.
    let empty = only(ReadinessPredicate::Exists { timeout: None });
    let Ok(empty) = empty else {
        panic!("Exists cannot fail to evaluate: {empty:?}");
    };
    // No `readyWhen` at all is the kind's built-in judgement, the same as `Current`.
    let by_kind = DefaultReadiness.evaluate(&[], live);
    let Ok(by_kind) = by_kind else {
        panic!("no predicates cannot fail to evaluate: {by_kind:?}");
    };
    let current = only(ReadinessPredicate::Current { timeout: None });
    assert_eq!(
        Some(by_kind.ready),
        current.as_ref().ok().map(|v| v.ready),
        "no readyWhen judges as Current does: {by_kind:?} vs {current:?}"
    );
    assert_eq!(by_kind.health, empty.health, "health is the object's");
    match all {
        Err(e) => assert!(
            singles.iter().any(Result::is_err),
            "a list fails to evaluate only when one of its predicates does: {e}"
        ),
        Ok(verdict) => {
            assert_eq!(verdict.terminal, empty.terminal, "terminal is the object's");
            if verdict.terminal.is_some() || !empty.ready && empty.terminal.is_none() {
                // Terminal, or the controller is behind the generation: nothing is Ready.
                assert!(!verdict.ready, "Ready despite {:?}", empty);
            }
            // (An empty list is the kind's judgement, checked against `Current` above.)
            if !singles.is_empty() && singles.iter().all(Result::is_ok) {
                let each = singles.iter().all(|s| s.as_ref().is_ok_and(|v| v.ready));
                assert_eq!(
                    verdict.ready,
                    each && empty.ready,
                    "a list is Ready exactly when each predicate is: {verdict:?} vs {singles:?}"
                );
            }
        }
    }
}
