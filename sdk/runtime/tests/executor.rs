//! The executor against a real API server: conflict policies (`Fail` overwrites nothing and
//! names the other manager and the field; `Force` takes the field back), readiness timeouts,
//! explicit adoption, the ConfigMap inventory and per-node deletion policies.
#![allow(clippy::unwrap_used)]

use cuebe::executor::{Executor, SsaExecutor, Timestamp};
use cuebe::graph::{
    ApplyPolicy, ConflictPolicy, GRAPH_VERSION, Graph, GraphMetadata, Node, ReadinessPredicate,
};
use cuebe::instance::Instance;
use cuebe::plan::Plan;
use cuebe::status::{AbstractionStatus, NodePhase};
use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

fn graph(ns: &str, policy: ConflictPolicy) -> Graph {
    Graph {
        graph_version: GRAPH_VERSION.into(),
        metadata: GraphMetadata {
            platform_ref_resolved: "sha256:test".into(),
            module: String::new(),
            render_hash: "sha256:test".into(),
        },
        nodes: vec![Node {
            id: "config".into(),
            object: Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": ns}, "data": {"mode": "safe"}}),
            ),
            apply_policy: ApplyPolicy {
                conflict_policy: policy,
                ..Default::default()
            },
            depends_on: vec![],
            ready_when: vec![],
            deletion_policy: None,
            pending_on: vec![],
        }],
        exports: vec![],
        violations: vec![],
    }
}

/// The instance every test's graph belongs to.
fn instance(ns: &str) -> Instance {
    Instance {
        kind: "Test".into(),
        name: "t".into(),
        namespace: ns.into(),
        generation: Some(1),
        ..Default::default()
    }
}

/// The executor walks validated plans.
fn plan_of(graph: &Graph, instance: &Instance) -> Plan {
    Plan::new(graph.clone(), &instance.namespace).unwrap()
}

async fn pass(
    executor: &SsaExecutor,
    ns: &str,
    g: &Graph,
    previous: &AbstractionStatus,
) -> AbstractionStatus {
    let instance = instance(ns);
    let out = executor
        .execute(
            &instance,
            &plan_of(g, &instance),
            previous,
            Timestamp::now(),
        )
        .await;
    AbstractionStatus {
        nodes: out.nodes,
        inventory: out.inventory,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_blocks_and_names_the_other_manager_force_reverts() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let client = cluster.client();
    let ns = cluster.namespace("conflict").await.unwrap();
    let executor = SsaExecutor::new(client.clone(), "cuebe-test");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    let fail = graph(&ns, ConflictPolicy::Fail);
    let first = pass(&executor, &ns, &fail, &AbstractionStatus::default()).await;
    assert_eq!(first.nodes["config"].phase, NodePhase::Ready, "{first:?}");

    // A second pass with nothing changed writes nothing.
    let instance = instance(&ns);
    let steady = executor
        .execute(
            &instance,
            &plan_of(&fail, &instance),
            &first,
            Timestamp::now(),
        )
        .await;
    assert_eq!(steady.writes, 0);

    // Another manager takes the field.
    let intruder = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "fast"}});
    cms.patch(
        "settings",
        &PatchParams::apply("intruder").force(),
        &Patch::Apply(&intruder),
    )
    .await
    .unwrap();

    let blocked = pass(&executor, &ns, &fail, &first).await;
    let node = &blocked.nodes["config"];
    assert_eq!(node.phase, NodePhase::Blocked);
    let message = node.last_error.clone().unwrap();
    assert!(
        message.contains("intruder") && message.contains(".data.mode"),
        "{message}"
    );
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["mode"],
        "fast",
        "nothing overwritten"
    );

    let force = graph(&ns, ConflictPolicy::Force);
    let forced = pass(&executor, &ns, &force, &blocked).await;
    assert_eq!(forced.nodes["config"].phase, NodePhase::Ready);
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["mode"],
        "safe",
        "reverted under Force"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_readiness_timeout_puts_the_node_in_error_and_holds_its_dependents() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let ns = cluster.namespace("timeout").await.unwrap();
    let executor = SsaExecutor::new(cluster.client(), "cuebe-test");
    let mut g = graph(&ns, ConflictPolicy::Force);
    g.nodes[0].ready_when = vec![ReadinessPredicate::Cel {
        expression: "self.data.mode == 'ready'".into(),
        message: None,
        timeout: Some("1s".into()),
    }];
    let mut dependent = g.nodes[0].clone();
    dependent.id = "after".into();
    dependent.object = Some(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after", "namespace": ns}}),
    );
    dependent.ready_when = vec![];
    dependent.depends_on = vec!["config".into()];
    g.nodes.push(dependent);

    let first = pass(&executor, &ns, &g, &AbstractionStatus::default()).await;
    assert_eq!(first.nodes["config"].phase, NodePhase::Applied);
    assert!(
        first.nodes["config"]
            .ready_details
            .as_deref()
            .unwrap()
            .contains("is false")
    );
    assert_eq!(first.nodes["after"].phase, NodePhase::Pending);
    assert_eq!(first.nodes["after"].blocked_on, ["config"]);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let second = pass(&executor, &ns, &g, &first).await;
    assert_eq!(second.nodes["config"].phase, NodePhase::Error);
    assert!(
        second.nodes["config"]
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("not ready after 1s"),
        "{:?}",
        second.nodes["config"]
    );
    assert_eq!(
        second.nodes["after"].phase,
        NodePhase::Pending,
        "nothing downstream of a failed node is applied"
    );
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    assert!(cms.get_opt("after").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_object_is_adopted_only_when_listed_and_is_recorded_adopted() {
    use cuebe::inventory::InventoryMode;
    use cuebe::lifecycle::AdoptRef;
    let cluster = TestCluster::shared().await.unwrap();
    let client = cluster.client();
    let ns = cluster.namespace("adopt").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    // Somebody else's ConfigMap with the name the graph renders.
    let existing = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "legacy", "owner": "team-a"}});
    cms.patch(
        "settings",
        &PatchParams::apply("kubectl"),
        &Patch::Apply(&existing),
    )
    .await
    .unwrap();
    let executor = SsaExecutor::new(client.clone(), "cuebe-test");
    let g = graph(&ns, ConflictPolicy::Force);
    let mut instance = instance(&ns);

    let refused = executor
        .execute(
            &instance,
            &plan_of(&g, &instance),
            &AbstractionStatus::default(),
            Timestamp::now(),
        )
        .await;
    let node = &refused.nodes["config"];
    assert_eq!(node.phase, NodePhase::Blocked, "{node:?}");
    let message = node.last_error.clone().unwrap();
    assert!(
        message.contains("ConfigMap settings already exists")
            && message.contains("spec.adopt.resources"),
        "{message}"
    );
    assert_eq!(refused.writes, 0);
    assert!(refused.inventory.is_empty());
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["mode"],
        "legacy",
        "nothing written before adoption"
    );

    instance.adopt = vec![AdoptRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "settings".into(),
    }];
    let adopted = executor
        .execute(
            &instance,
            &plan_of(&g, &instance),
            &AbstractionStatus::default(),
            Timestamp::now(),
        )
        .await;
    assert_eq!(
        adopted.nodes["config"].phase,
        NodePhase::Ready,
        "{adopted:?}"
    );
    assert_eq!(adopted.inventory[0].mode, InventoryMode::Adopted);
    let live = cms.get("settings").await.unwrap();
    let data = live.data.unwrap();
    assert_eq!(data["mode"], "safe", "our field applied");
    assert_eq!(data["owner"], "team-a", "fields we do not render are kept");
    assert_eq!(
        live.metadata.labels.unwrap()["cuebe.dev/instance"],
        "t",
        "labelled as ours after adoption"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_configmap_inventory_round_trips_and_leaves_the_status_empty() {
    use cuebe::inventory::{ConfigMapInventory, Inventory};
    let cluster = TestCluster::shared().await.unwrap();
    let client = cluster.client();
    let ns = cluster.namespace("inventory").await.unwrap();
    let executor = SsaExecutor::new(client.clone(), "cuebe-test");
    let inventory = ConfigMapInventory::new(client.clone(), "cuebe-test");
    let g = graph(&ns, ConflictPolicy::Fail);
    let instance = instance(&ns);
    let out = executor
        .execute(
            &instance,
            &plan_of(&g, &instance),
            &AbstractionStatus::default(),
            Timestamp::now(),
        )
        .await;
    let mut status = AbstractionStatus::default();
    inventory
        .store(&instance, &out.inventory, &mut status)
        .await
        .unwrap();
    assert!(status.inventory.is_empty(), "the status holds no entries");
    let cm: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(cm.get_opt("test-t-inventory").await.unwrap().is_some());
    let loaded = inventory.load(&instance, &status).await.unwrap();
    assert_eq!(loaded, out.inventory);

    // Pruning works from the loaded inventory: an empty graph deletes the object — once the
    // prune guard is told that losing every object is intended.
    let empty = Graph {
        nodes: vec![],
        ..g.clone()
    };
    let previous = AbstractionStatus {
        inventory: loaded,
        ..Default::default()
    };
    let guarded = executor
        .execute(
            &instance,
            &plan_of(&empty, &instance),
            &previous,
            Timestamp::now(),
        )
        .await;
    assert_eq!(guarded.inventory, previous.inventory, "the guard holds");
    let message = guarded.prune_guard.unwrap_or_default();
    assert!(
        message.contains("delete 1 of the 1 objects of the instance (ConfigMap settings)"),
        "{message}"
    );
    assert!(cm.get_opt("settings").await.unwrap().is_some());
    let mut instance = instance.clone();
    instance.annotations.insert(
        cuebe::instance::PRUNE_THRESHOLD_ANNOTATION.into(),
        "100".into(),
    );
    let pruned = executor
        .execute(
            &instance,
            &plan_of(&empty, &instance),
            &previous,
            Timestamp::now(),
        )
        .await;
    assert!(pruned.inventory.is_empty());
    assert!(
        cm.get_opt("settings")
            .await
            .unwrap()
            .is_none_or(|c| c.metadata.deletion_timestamp.is_some())
    );

    inventory.forget(&instance).await.unwrap();
    assert!(cm.get_opt("test-t-inventory").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_asks_to_be_orphaned_outlives_its_instance_and_its_node() {
    use cuebe::executor::INSTANCE_LABEL;
    use cuebe::graph::DeletionPolicy;
    let cluster = TestCluster::shared().await.unwrap();
    let client = cluster.client();
    let ns = cluster.namespace("orphan-node").await.unwrap();
    let executor = SsaExecutor::new(client.clone(), "cuebe-test");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let config_map = |id: &str, name: &str, policy: Option<DeletionPolicy>| Node {
        id: id.into(),
        object: Some(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"k": "v"}}),
        ),
        deletion_policy: policy,
        ..graph(&ns, ConflictPolicy::Force).nodes[0].clone()
    };
    let labelled = |cm: &ConfigMap| {
        cm.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(INSTANCE_LABEL))
    };

    // Teardown: the instance says Delete, the `keep` node says Orphan.
    let g = Graph {
        nodes: vec![
            config_map("keep", "kept", Some(DeletionPolicy::Orphan)),
            config_map("drop", "dropped", None),
        ],
        ..graph(&ns, ConflictPolicy::Force)
    };
    let status = pass(&executor, &ns, &g, &AbstractionStatus::default()).await;
    assert_eq!(
        status.inventory[0].deletion_policy,
        Some(DeletionPolicy::Orphan),
        "the node's policy is recorded for teardown"
    );
    assert!(labelled(&cms.get("kept").await.unwrap()));
    let mut rounds = 0;
    while !executor
        .teardown(&instance(&ns), &status.inventory, DeletionPolicy::Delete)
        .await
        .unwrap()
    {
        rounds += 1;
        assert!(rounds < 50, "teardown did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let kept = cms.get("kept").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none(), "not deleted");
    assert!(
        !labelled(&kept),
        "released: no longer carries the instance label"
    );
    assert!(
        cms.get_opt("dropped")
            .await
            .unwrap()
            .is_none_or(|c| c.metadata.deletion_timestamp.is_some()),
        "the other node followed the instance's Delete"
    );

    // Pruning: a node that leaves the graph is released, not deleted, when it asked to be.
    let g = Graph {
        nodes: vec![
            config_map("anchor", "anchor", None),
            config_map("keep", "kept-by-prune", Some(DeletionPolicy::Orphan)),
        ],
        ..graph(&ns, ConflictPolicy::Force)
    };
    let first = pass(&executor, &ns, &g, &AbstractionStatus::default()).await;
    let smaller = Graph {
        nodes: vec![g.nodes[0].clone()],
        ..g.clone()
    };
    let second = pass(&executor, &ns, &smaller, &first).await;
    assert!(second.inventory.iter().all(|e| e.node_id != "keep"));
    let kept = cms.get("kept-by-prune").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none(), "not deleted");
    assert!(!labelled(&kept));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kind_served_after_a_pass_found_it_missing_is_applied_by_the_next_pass() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let cluster = TestCluster::shared().await.unwrap();
    let ns = cluster.namespace("late-crd").await.unwrap();
    let executor = SsaExecutor::new(cluster.client(), "cuebe-test");
    let instance = instance(&ns);
    let mut g = graph(&ns, ConflictPolicy::Fail);
    g.nodes[0].object = Some(json!({
        "apiVersion": "late.cuebe.dev/v1", "kind": "Gadget",
        "metadata": {"name": "g1", "namespace": ns}, "spec": {"size": 1}
    }));
    let first = executor
        .execute(
            &instance,
            &plan_of(&g, &instance),
            &AbstractionStatus::default(),
            Timestamp::now(),
        )
        .await;
    let node = &first.nodes["config"];
    assert_eq!(node.phase, NodePhase::Error);
    assert!(
        node.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("not served"),
        "{node:?}"
    );

    // The CRD is installed after the executor was told the group does not exist: the executor's
    // discovery cache must not remember that absence.
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.late.cuebe.dev"},
        "spec": {"group": "late.cuebe.dev", "scope": "Namespaced",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap();
    cluster
        .apply_crds(
            &[crd],
            std::time::Instant::now() + std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    let second = executor
        .execute(
            &instance,
            &plan_of(&g, &instance),
            &AbstractionStatus::default(),
            Timestamp::now(),
        )
        .await;
    assert_eq!(
        second.nodes["config"].phase,
        NodePhase::Ready,
        "{:?}",
        second.nodes
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_the_server_refuses_for_good_stalls_with_its_message() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let ns = cluster.namespace("refused").await.unwrap();
    let executor = SsaExecutor::new(cluster.client(), "cuebe-test");
    let mut g = graph(&ns, ConflictPolicy::Fail);
    // The API server refuses this key (422 Invalid) on every attempt.
    g.nodes[0].object = Some(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": ns},
        "data": {"not a key!": "x"},
    }));
    let instance = instance(&ns);
    let out = executor
        .execute(
            &instance,
            &plan_of(&g, &instance),
            &AbstractionStatus::default(),
            Timestamp::now(),
        )
        .await;
    let node = &out.nodes["config"];
    assert_eq!(node.phase, NodePhase::Error);
    let message = node.last_error.clone().unwrap_or_default();
    assert!(
        message.contains("HTTP 422") && message.contains("not a key!"),
        "{message}"
    );
    // Terminal: the instance is Stalled with the server's message, not retried every few
    // seconds as if it might pass.
    let stalled = out.stalled.clone().unwrap_or_default();
    assert!(
        stalled.starts_with("config: ") && stalled.contains("HTTP 422"),
        "{stalled}"
    );
    let mut status = AbstractionStatus {
        nodes: out.nodes.clone(),
        ..Default::default()
    };
    let verdict = cuebe::status::summarize(&mut status, &out, Some(1), "2026-01-01T00:00:00Z");
    assert_eq!(verdict, cuebe::status::PassVerdict::Stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn teardown_completes_when_someone_replaced_an_object_and_leaves_the_replacement() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let client = cluster.client();
    let ns = cluster.namespace("replaced").await.unwrap();
    let executor = SsaExecutor::new(client.clone(), "cuebe-test");
    let first = pass(
        &executor,
        &ns,
        &graph(&ns, ConflictPolicy::Fail),
        &AbstractionStatus::default(),
    )
    .await;
    assert_eq!(first.nodes["config"].phase, NodePhase::Ready, "{first:?}");

    // Someone deletes our ConfigMap and creates their own under the same name.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.delete("settings", &Default::default()).await.unwrap();
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"owner": "them"}});
    let replacement = cms
        .patch(
            "settings",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();

    // Deleting the instance neither deletes their object nor waits for it for ever: a
    // UID-preconditioned delete would be refused (409) at every attempt.
    let done = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        executor.teardown(
            &instance(&ns),
            &first.inventory,
            cuebe::graph::DeletionPolicy::Delete,
        ),
    )
    .await
    .expect("teardown returns")
    .unwrap();
    assert!(
        done,
        "teardown is complete: the replacement is not ours to wait for"
    );
    let still = cms.get("settings").await.unwrap();
    assert_eq!(still.metadata.uid, replacement.metadata.uid);
    assert_eq!(still.data.unwrap()["owner"], "them");
}

/// A graph of one ConfigMap per `(node id, object name, data)`, in order.
fn config_maps(ns: &str, maps: &[(&str, &str, &str)]) -> Graph {
    let mut g = graph(ns, ConflictPolicy::Fail);
    let template = g.nodes[0].clone();
    g.nodes = maps
        .iter()
        .map(|(id, name, value)| Node {
            id: id.to_string(),
            object: Some(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns}, "data": {"value": value}})),
            ..template.clone()
        })
        .collect();
    g
}

async fn execute_as(
    executor: &SsaExecutor,
    instance: &Instance,
    g: &Graph,
    previous: &AbstractionStatus,
) -> (AbstractionStatus, usize) {
    let out = executor
        .execute(instance, &plan_of(g, instance), previous, Timestamp::now())
        .await;
    let writes = out.writes;
    (
        AbstractionStatus {
            nodes: out.nodes,
            inventory: out.inventory,
            ..Default::default()
        },
        writes,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_rendering_one_object_do_not_fight_and_neither_deletes_the_others() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let client = cluster.client();
    let ns = cluster.namespace("collide").await.unwrap();
    let executor = SsaExecutor::new(client.clone(), "cuebe-test");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let a = Instance {
        name: "a".into(),
        ..instance(&ns)
    };
    // b even asks to adopt it: another instance's object is never adopted.
    let b = Instance {
        name: "b".into(),
        adopt: vec![cuebe::instance::AdoptRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "shared".into(),
        }],
        ..instance(&ns)
    };
    let graph_a = config_maps(&ns, &[("config", "shared", "from-a")]);
    let graph_b = config_maps(&ns, &[("config", "shared", "from-b")]);

    let (mut status_a, _) =
        execute_as(&executor, &a, &graph_a, &AbstractionStatus::default()).await;
    assert_eq!(
        status_a.nodes["config"].phase,
        NodePhase::Ready,
        "{status_a:?}"
    );
    let (mut status_b, _) =
        execute_as(&executor, &b, &graph_b, &AbstractionStatus::default()).await;
    let blocked = &status_b.nodes["config"];
    assert_eq!(blocked.phase, NodePhase::Blocked, "{status_b:?}");
    let message = blocked.last_error.clone().unwrap_or_default();
    assert!(message.contains("managed by Test a"), "{message}");

    // Pass after pass, nobody writes: the object keeps a's data and its resourceVersion.
    let before = cms.get("shared").await.unwrap();
    for round in 0..3 {
        let (next_a, writes_a) = execute_as(&executor, &a, &graph_a, &status_a).await;
        let (next_b, writes_b) = execute_as(&executor, &b, &graph_b, &status_b).await;
        assert_eq!((writes_a, writes_b), (0, 0), "round {round}");
        assert_eq!(next_b.nodes["config"].phase, NodePhase::Blocked);
        (status_a, status_b) = (next_a, next_b);
    }
    let after = cms.get("shared").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.data.unwrap()["value"], "from-a");

    // Had both recorded it (two creates racing), deleting b still leaves a's object alone.
    let mut raced = status_a.inventory.clone();
    raced[0].node_id = "config".into();
    let done = executor
        .teardown(&b, &raced, cuebe::graph::DeletionPolicy::Delete)
        .await
        .unwrap();
    assert!(done);
    assert_eq!(
        cms.get("shared").await.unwrap().metadata.uid,
        before.metadata.uid,
        "b's teardown released a's object instead of deleting it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_scoped_kind_is_refused_before_anything_is_written_unless_allowed() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let client = cluster.client();
    let ns = cluster.namespace("scope").await.unwrap();
    let tenant_ns = format!("{ns}-made");
    let mut g = config_maps(&ns, &[("config", "settings", "x")]);
    let mut namespace_node = g.nodes[0].clone();
    namespace_node.id = "namespace".into();
    namespace_node.object =
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": tenant_ns}}));
    g.nodes.push(namespace_node);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());

    let strict = SsaExecutor::new(client.clone(), "cuebe-test");
    let refused = pass(&strict, &ns, &g, &AbstractionStatus::default()).await;
    let node = &refused.nodes["namespace"];
    assert_eq!(node.phase, NodePhase::Blocked, "{refused:?}");
    assert!(
        node.last_error
            .as_deref()
            .is_some_and(|m| m.contains("Namespace is cluster-scoped")),
        "{node:?}"
    );
    assert_eq!(refused.nodes["config"].phase, NodePhase::Pending);
    assert!(
        cms.get_opt("settings").await.unwrap().is_none(),
        "nothing of the graph is written"
    );
    assert!(namespaces.get_opt(&tenant_ns).await.unwrap().is_none());

    let allowing =
        SsaExecutor::new(client.clone(), "cuebe-test").allow_cluster_scoped(["Namespace"]);
    let applied = pass(&allowing, &ns, &g, &AbstractionStatus::default()).await;
    assert_eq!(
        applied.nodes["namespace"].phase,
        NodePhase::Ready,
        "{applied:?}"
    );
    let made = namespaces.get(&tenant_ns).await.unwrap();
    let labels = made.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get(cuebe::executor::NAMESPACE_LABEL)
            .map(String::as_str),
        Some(ns.as_str()),
        "a cluster-scoped object names its instance's namespace"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_permission_blocks_its_node_before_any_object_is_written() {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let admin = cluster.client();
    let ns = cluster.namespace("rbac").await.unwrap();
    // The operator's account may do everything with ConfigMaps here, nothing with Secrets.
    let rule = |resource: &str| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.into()]),
        verbs: ["get", "list", "watch", "create", "patch", "delete"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let grant = |resources: &[&str]| Role {
        metadata: kube::api::ObjectMeta {
            name: Some("operator".into()),
            ..Default::default()
        },
        rules: Some(resources.iter().map(|r| rule(r)).collect()),
    };
    let roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
    roles
        .create(&Default::default(), &grant(&["configmaps"]))
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns);
    let binding = RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some("operator".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "operator".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: "tenant-operator".into(),
            ..Default::default()
        }]),
    };
    bindings
        .create(&Default::default(), &binding)
        .await
        .unwrap();
    let operator = cluster.impersonating_client("tenant-operator", &["system:authenticated"]);

    let mut g = config_maps(&ns, &[("config", "settings", "x")]);
    let mut secret = g.nodes[0].clone();
    secret.id = "secret".into();
    secret.object = Some(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "token", "namespace": ns}, "stringData": {"token": "t"}}));
    g.nodes.push(secret);

    let executor = SsaExecutor::new(operator.clone(), "cuebe-test");
    let refused = pass(&executor, &ns, &g, &AbstractionStatus::default()).await;
    let node = &refused.nodes["secret"];
    assert_eq!(node.phase, NodePhase::Blocked, "{refused:?}");
    let message = node.last_error.clone().unwrap_or_default();
    assert!(
        message.contains(&format!("may not get secrets in namespace {ns}")),
        "the verb, resource and namespace: {message}"
    );
    assert_eq!(refused.nodes["config"].phase, NodePhase::Pending);
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    assert!(
        cms.get_opt("settings").await.unwrap().is_none(),
        "nothing of the graph is written, not even what was allowed"
    );

    // Once the permission is granted, the graph is applied (a fresh operator: refusals are
    // cached for 30 s).
    roles
        .replace(
            "operator",
            &Default::default(),
            &grant(&["configmaps", "secrets"]),
        )
        .await
        .unwrap();
    let executor = SsaExecutor::new(operator, "cuebe-test");
    let applied = pass(&executor, &ns, &g, &AbstractionStatus::default()).await;
    assert_eq!(
        applied.nodes["secret"].phase,
        NodePhase::Ready,
        "{applied:?}"
    );
    assert!(cms.get_opt("settings").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_object_is_replaced_and_the_old_one_is_pruned_not_leaked() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let client = cluster.client();
    let ns = cluster.namespace("rename").await.unwrap();
    let executor = SsaExecutor::new(client.clone(), "cuebe-test");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let before = config_maps(&ns, &[("config", "settings", "x"), ("other", "other", "y")]);
    let first = pass(&executor, &ns, &before, &AbstractionStatus::default()).await;
    assert_eq!(first.nodes["config"].phase, NodePhase::Ready, "{first:?}");

    // The module now names the node's object differently.
    let after = config_maps(
        &ns,
        &[("config", "settings-v2", "x"), ("other", "other", "y")],
    );
    let second = pass(&executor, &ns, &after, &first).await;
    assert_eq!(second.nodes["config"].phase, NodePhase::Ready, "{second:?}");
    assert!(cms.get_opt("settings-v2").await.unwrap().is_some());
    assert!(
        cms.get_opt("settings")
            .await
            .unwrap()
            .is_none_or(|c| c.metadata.deletion_timestamp.is_some()),
        "the old object is pruned, not left behind unrecorded"
    );
    let names: Vec<&str> = second.inventory.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["settings-v2", "other"]);
}
