//! Reference nodes against the real API server, through the executor: what a reference needs
//! (read access only; the allow-list for a cluster-scoped kind), that it gates its dependents
//! and is never written, and that a node switched to a reference releases its object instead of
//! deleting it.
#![allow(clippy::unwrap_used)]

use cuebe::executor::{ChangeAction, Executor, Outcome, SsaExecutor, Timestamp};
use cuebe::graph::{ApplyMode, ApplyPolicy, GRAPH_VERSION, Graph, GraphMetadata, Node};
use cuebe::instance::Instance;
use cuebe::plan::Plan;
use cuebe::status::{AbstractionStatus, NodePhase};
use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

fn node(id: &str, object: Value, mode: ApplyMode, depends_on: &[&str]) -> Node {
    Node {
        id: id.into(),
        object: Some(object),
        apply_policy: ApplyPolicy {
            mode,
            ..Default::default()
        },
        depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
        ready_when: vec![],
        deletion_policy: None,
        pending_on: vec![],
    }
}

fn graph(nodes: Vec<Node>) -> Graph {
    Graph {
        graph_version: GRAPH_VERSION.into(),
        metadata: GraphMetadata {
            platform_ref_resolved: "sha256:test".into(),
            module: String::new(),
            render_hash: "sha256:test".into(),
        },
        nodes,
        exports: vec![],
        violations: vec![],
    }
}

fn instance(ns: &str) -> Instance {
    Instance {
        kind: "Test".into(),
        name: "t".into(),
        namespace: ns.into(),
        generation: Some(1),
        ..Default::default()
    }
}

async fn pass(
    executor: &SsaExecutor,
    ns: &str,
    g: &Graph,
    previous: &AbstractionStatus,
) -> Outcome {
    let instance = instance(ns);
    let plan = Plan::new(g.clone(), ns).unwrap();
    executor
        .execute(&instance, &plan, previous, Timestamp::now())
        .await
}

fn status_of(out: &Outcome) -> AbstractionStatus {
    AbstractionStatus {
        nodes: out.nodes.clone(),
        inventory: out.inventory.clone(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_needs_only_read_access_gates_its_dependents_and_is_never_written() {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let admin = cluster.client();
    let ns = cluster.namespace("reference").await.unwrap();
    // The operator may write ConfigMaps here, and only read Secrets.
    let rule = |resource: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.into()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let role = Role {
        metadata: kube::api::ObjectMeta {
            name: Some("operator".into()),
            ..Default::default()
        },
        rules: Some(vec![
            rule(
                "configmaps",
                &["get", "list", "watch", "create", "patch", "delete"],
            ),
            rule("secrets", &["get", "list", "watch"]),
        ]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&Default::default(), &role)
        .await
        .unwrap();
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
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&Default::default(), &binding)
        .await
        .unwrap();
    let operator = cluster.impersonating_client("tenant-operator", &["system:authenticated"]);
    let executor = SsaExecutor::new(operator, "cuebe-test");

    let g = graph(vec![
        node(
            "token",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}}),
            ApplyMode::Reference,
            &[],
        ),
        node(
            "config",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": ns}, "data": {"mode": "x"}}),
            ApplyMode::CreateOrUpdate,
            &["token"],
        ),
    ]);
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);

    // Missing: Pending naming it (read access is enough: not Blocked), the dependent waits.
    let waiting = pass(&executor, &ns, &g, &AbstractionStatus::default()).await;
    let token = &waiting.nodes["token"];
    assert_eq!(token.phase, NodePhase::Pending, "{waiting:?}");
    assert_eq!(token.blocked_on, [format!("object:Secret/{ns}/token")]);
    assert!(
        token
            .ready_details
            .as_deref()
            .is_some_and(|d| d.contains(&format!("Secret {ns}/token does not exist"))),
        "{token:?}"
    );
    assert_eq!(waiting.nodes["config"].phase, NodePhase::Pending);
    assert_eq!(waiting.nodes["config"].blocked_on, ["token"]);
    assert_eq!(waiting.writes, 0);
    assert!(cms.get_opt("settings").await.unwrap().is_none());
    assert!(secrets.get_opt("token").await.unwrap().is_none());

    // Someone creates it: Ready, the dependent applied, the Secret untouched and unrecorded.
    let theirs = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "token"}, "stringData": {"token": "t"}});
    secrets
        .patch(
            "token",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();
    let ready = pass(&executor, &ns, &g, &status_of(&waiting)).await;
    assert!(ready.ready, "{ready:?}");
    assert!(
        ready.live.contains_key("token"),
        "its live object feeds the exports"
    );
    let recorded: Vec<&str> = ready.inventory.iter().map(|e| e.node_id.as_str()).collect();
    assert_eq!(recorded, ["config"]);
    let secret = secrets.get("token").await.unwrap();
    assert!(secret.metadata.labels.unwrap_or_default().is_empty());
    let managers: Vec<String> = secret
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.clone())
        .collect();
    assert_eq!(managers, ["kubectl"]);
    assert!(cms.get_opt("settings").await.unwrap().is_some());

    // Deleting the instance (its inventory) leaves the referenced Secret.
    let all_gone = executor
        .teardown(
            &instance(&ns),
            &ready.inventory,
            cuebe::graph::DeletionPolicy::Delete,
        )
        .await
        .unwrap();
    assert!(all_gone || cms.get_opt("settings").await.unwrap().is_none());
    assert!(secrets.get_opt("token").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_scoped_reference_needs_the_allow_list_and_is_never_labelled() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let client = cluster.client();
    let ns = cluster.namespace("ref-scope").await.unwrap();
    let g = graph(vec![node(
        "home",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        ApplyMode::Reference,
        &[],
    )]);
    let strict = SsaExecutor::new(client.clone(), "cuebe-test");
    let refused = pass(&strict, &ns, &g, &AbstractionStatus::default()).await;
    let home = &refused.nodes["home"];
    assert_eq!(home.phase, NodePhase::Blocked, "{refused:?}");
    assert!(
        home.last_error
            .as_deref()
            .is_some_and(|m| m.contains("may only reference objects in its own namespace")),
        "{home:?}"
    );
    let allowing =
        SsaExecutor::new(client.clone(), "cuebe-test").allow_cluster_scoped(["Namespace"]);
    let read = pass(&allowing, &ns, &g, &AbstractionStatus::default()).await;
    assert!(read.ready, "{read:?}");
    assert!(read.inventory.is_empty());
    let namespace = Api::<Namespace>::all(client).get(&ns).await.unwrap();
    let labels = namespace.metadata.labels.unwrap_or_default();
    assert!(
        !labels.contains_key(cuebe::executor::NAMESPACE_LABEL)
            && !labels.contains_key(cuebe::executor::INSTANCE_LABEL),
        "{labels:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_switched_to_a_reference_releases_its_object_and_never_deletes_it() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let client = cluster.client();
    let ns = cluster.namespace("ref-switch").await.unwrap();
    let executor = SsaExecutor::new(client.clone(), "cuebe-test");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let managed = graph(vec![node(
        "shared",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "shared", "namespace": ns}, "data": {"a": "1"}}),
        ApplyMode::CreateOrUpdate,
        &[],
    )]);
    let first = pass(&executor, &ns, &managed, &AbstractionStatus::default()).await;
    assert!(first.ready, "{first:?}");
    let uid = cms.get("shared").await.unwrap().metadata.uid;

    // The module now only reads it.
    let referenced = graph(vec![node(
        "shared",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}}),
        ApplyMode::Reference,
        &[],
    )]);
    let switched = pass(&executor, &ns, &referenced, &status_of(&first)).await;
    assert!(switched.ready, "{switched:?}");
    assert!(switched.inventory.is_empty(), "{:?}", switched.inventory);
    assert_eq!(
        switched
            .changes
            .iter()
            .map(|c| (c.action, c.to_string()))
            .collect::<Vec<_>>(),
        [(
            ChangeAction::Released,
            "released ConfigMap shared: its node shared now only references it".to_string()
        )]
    );
    let kept = cms.get("shared").await.unwrap();
    assert_eq!(kept.metadata.uid, uid, "the same object, not deleted");
    let labels = kept.metadata.labels.unwrap_or_default();
    assert!(
        !labels.contains_key(cuebe::executor::INSTANCE_LABEL),
        "released: {labels:?}"
    );
}
