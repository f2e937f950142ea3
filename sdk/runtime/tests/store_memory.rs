//! What the operator's stores hold per object, measured on the heap (dhat's testing mode counts
//! every live byte): the child stores are most of the operator's memory per instance at 10,000
//! instances, so what one cached object costs is a figure to keep, not to guess.
//!
//! One test function: dhat counts the whole process, so nothing else may allocate meanwhile.
use std::sync::Arc;

use cuebe::child_cache::{CachedObject, Retained};
use cuebe::instance_store::InstanceStatuses;
use cuebe::status::AbstractionStatus;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::json;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// A Deployment as the API server sends it to a watch (trimmed below as the cache trims it).
fn deployment(i: usize) -> DynamicObject {
    let name = format!("svc-{i}");
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": name, "namespace": "bench", "uid": format!("5f0c8e7a-1b2c-4d3e-8f9a-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i), "generation": 1,
            "creationTimestamp": "2026-12-02T10:00:00Z",
            "labels": {
                "app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "cuebe",
                "cuebe.dev/instance": name, "cuebe.dev/kind": "WebService",
                "cuebe.dev/namespace": "bench"
            },
            "annotations": {"deployment.kubernetes.io/revision": "1"},
            "managedFields": [
                {"manager": "cuebe-webservice", "operation": "Apply", "apiVersion": "apps/v1",
                 "time": "2026-12-02T10:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/name": {}}},
                              "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                 "time": "2026-12-02T10:00:05Z", "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:availableReplicas": {}, "f:conditions": {}}}}
            ]
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name}},
                "spec": {"serviceAccountName": name, "containers": [{
                    "name": "app", "image": "registry.example.com/web@sha256:0123456789abcdef",
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                    "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false}
                }]}
            },
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
        },
        "status": {
            "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
            "availableReplicas": 2,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "message": "Deployment has minimum availability.",
                 "lastUpdateTime": "2026-12-02T10:00:05Z", "lastTransitionTime": "2026-12-02T10:00:05Z"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "message": format!("ReplicaSet \"{name}-6d4b75cb6d\" has successfully progressed."),
                 "lastUpdateTime": "2026-12-02T10:00:05Z", "lastTransitionTime": "2026-12-02T10:00:00Z"}
            ]
        }
    }))
    .unwrap_or_else(|e| panic!("not a Deployment: {e}"))
}

/// A Ready WebService's status as the operator writes it (four nodes, their inventory, one
/// revision).
fn status(i: usize) -> AbstractionStatus {
    let hash = "sha256:9f2c1d0e8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d";
    let condition = |t: &str, s: &str, reason: &str, message: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": message,
               "lastTransitionTime": "2026-12-02T10:00:05Z", "observedGeneration": 1})
    };
    let nodes = ["serviceAccount", "deployment", "service", "pdb"];
    let kinds = [
        ("v1", "ServiceAccount"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("policy/v1", "PodDisruptionBudget"),
    ];
    serde_json::from_value(json!({
        "observedGeneration": 1,
        "conditions": [
            condition("Rendered", "True", "Rendered", "the module rendered 4 nodes"),
            condition("PolicyPassed", "True", "NoViolations", "no policy violation"),
            condition("Progressing", "False", "AllNodesReady", "nothing to do"),
            condition("Ready", "True", "AllNodesReady", "4/4 nodes ready"),
            condition("Stalled", "False", "AllNodesReady", "")
        ],
        "nodes": nodes.iter().map(|n| (n.to_string(), json!({"phase": "Ready",
            "readyDetails": "2/2 replicas available"}))).collect::<serde_json::Map<_, _>>(),
        "readyNodes": "4/4",
        "inventory": nodes.iter().zip(kinds).map(|(n, (v, k))| json!({
            "nodeId": n, "apiVersion": v, "kind": k, "namespace": "bench",
            "name": format!("svc-{i}"), "uid": format!("5f0c8e7a-1b2c-4d3e-8f9a-{i:012}"),
            "mode": "Managed", "lastAppliedHash": hash,
            "lastAppliedResourceVersion": format!("{}", 100_000 + i),
            "lastReadyTransition": "2026-12-02T10:00:05Z"})).collect::<Vec<_>>(),
        "platformRefResolved": hash, "renderHash": hash, "moduleRef": "embedded:1.0.0",
        "revisions": [{"moduleRef": "embedded:1.0.0", "resolved": hash, "renderHash": hash,
                       "appliedAt": "2026-12-02T10:00:00Z", "outcome": "Ready"}]
    }))
    .unwrap_or_else(|e| panic!("not a status: {e}"))
}

fn live_bytes() -> usize {
    dhat::HeapStats::get().curr_bytes
}

/// Live heap bytes and blocks per object of `n` trimmed Deployments kept by `store` (counted
/// from before they were built: what built them is dropped by then, or moved into the store).
fn per_object<S>(n: usize, store: impl FnOnce(Vec<DynamicObject>) -> S) -> (S, usize, usize) {
    let before = dhat::HeapStats::get();
    let objects: Vec<DynamicObject> = (0..n)
        .map(|i| {
            let mut o = deployment(i);
            Retained::default().trim(&mut o);
            o
        })
        .collect();
    let kept = store(objects);
    let after = dhat::HeapStats::get();
    (
        kept,
        after.curr_bytes.saturating_sub(before.curr_bytes) / n,
        after.curr_blocks.saturating_sub(before.curr_blocks) / n,
    )
}

#[test]
fn a_cached_child_object_costs_a_fraction_of_the_object_it_stands_for() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let resource = ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        plural: "deployments".into(),
    };
    const N: usize = 2_000;
    let baseline = live_bytes();

    // What kube's reflector would hold: the trimmed objects themselves, keyed by kind and name.
    let (whole_store, as_objects, object_blocks) = per_object(N, |objects| {
        let mut writer = Writer::<DynamicObject>::new(resource.clone());
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(o));
        }
        writer
    });
    drop(whole_store);

    // What the child cache holds.
    let (compact_store, compact, compact_blocks) = per_object(N, |objects| {
        let mut writer = Writer::<CachedObject>::new(Arc::new(resource.clone()));
        for o in &objects {
            writer.apply_watcher_event(&watcher::Event::Apply(CachedObject::new(o)));
        }
        // One object kept to compare with what the store gives back (1/N of the figure).
        (writer, objects.into_iter().next())
    });
    let (writer, first) = compact_store;

    eprintln!(
        "per trimmed Deployment in a store: {as_objects} bytes in {object_blocks} allocations as a \
         DynamicObject, {compact} bytes in {compact_blocks} as a CachedObject ({:.2}x)",
        compact as f64 / as_objects as f64
    );
    // The figures the benchmarks page reports: a quarter, about 1.5 KB with the store's key.
    assert!(
        compact * 3 < as_objects,
        "{compact} bytes is not under a third of {as_objects}"
    );
    assert!(compact < 1_600, "{compact} bytes per cached Deployment");

    // And it reads back as what was stored.
    let first = first.unwrap_or_else(|| panic!("no object"));
    let reader = writer.as_reader();
    let stored = reader
        .get(
            &kube::runtime::reflector::ObjectRef::new_with("svc-0", Arc::new(resource))
                .within("bench"),
        )
        .unwrap_or_else(|| panic!("svc-0 not in the store"));
    assert_eq!(stored.instance(), Some("svc-0"));
    let read = stored.object().unwrap_or_else(|| panic!("unreadable"));
    assert_eq!(
        serde_json::to_value(&read).unwrap_or_default(),
        serde_json::to_value(&first).unwrap_or_default()
    );
    drop((writer, reader, stored, read, first));
    assert!(live_bytes() >= baseline);

    // Instance statuses: as the objects held them, and as the instance store keeps them.
    let before = dhat::HeapStats::get();
    let typed: Vec<AbstractionStatus> = (0..N).map(status).collect();
    let typed_stats = dhat::HeapStats::get();
    let as_status = (typed_stats.curr_bytes - before.curr_bytes) / N;
    let status_blocks = (typed_stats.curr_blocks - before.curr_blocks) / N;
    let statuses = InstanceStatuses::default();
    for (i, s) in typed.iter().enumerate() {
        statuses.keep(&format!("5f0c8e7a-1b2c-4d3e-8f9a-{i:012}"), Some(s));
    }
    let first_typed = typed[0].clone();
    drop(typed);
    let kept_stats = dhat::HeapStats::get();
    let kept = (kept_stats.curr_bytes - before.curr_bytes) / N;
    let kept_blocks = (kept_stats.curr_blocks - before.curr_blocks) / N;
    eprintln!(
        "per WebService status: {as_status} bytes in {status_blocks} allocations as an \
         AbstractionStatus, {kept} bytes in {kept_blocks} kept by UID ({:.2}x)",
        kept as f64 / as_status as f64
    );
    // Requested bytes only: each allocation also costs the allocator ~16 bytes, so the blocks
    // matter too.
    assert!(
        kept * 10 < as_status * 7,
        "{kept} bytes is not under 70 % of {as_status}"
    );
    assert!(
        kept_blocks * 10 < status_blocks,
        "{kept_blocks} vs {status_blocks} allocations"
    );
    assert_eq!(
        statuses.get("5f0c8e7a-1b2c-4d3e-8f9a-000000000000"),
        Some(first_typed)
    );
}
