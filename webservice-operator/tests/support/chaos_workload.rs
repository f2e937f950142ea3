//! The WebService workload of the chaos runs: shared by `benches/chaos.rs` (the full run) and
//! `tests/chaos_smoke.rs` (the small one in the default test suite), which include this file.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use cuebe::Abstraction;
use cuebe_testkit::chaos::Workload;
use serde_json::json;
use webservice_operator::WebService;

/// The `webservice-operator` binary of this build (`run --namespace`), its CRD and field
/// manager, the specs below, and the ACK stand-in for the IAM Roles and Policies.
pub fn workload() -> Workload {
    Workload {
        operator: PathBuf::from(env!("CARGO_BIN_EXE_webservice-operator")),
        crd: cuebe::abstraction::crd::<WebService>(),
        field_manager: WebService::FIELD_MANAGER.to_string(),
        spec: Arc::new(spec),
        // What `spec` turns on and off between revisions: the HPA and the PDB (autoscaling),
        // the ACK Policy (inline policy).
        recreatable_nodes: ["hpa", "pdb", "iamPolicy"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>(),
        ack: true,
    }
}

/// Instance `i` at revision `r`:
/// - every revision has its own image tag (the Deployment is updated in place);
/// - odd `i`: one replica, and autoscaling at even revisions, so the HPA and the PDB are added
///   and pruned (2 of 5 objects: under the prune guard's half);
/// - `i % 4 == 2`: IRSA, an ACK Role whose ARN the ServiceAccount waits for; `i % 8 == 6` also
///   an inline policy at even revisions (an ACK Policy added and pruned).
pub fn spec(i: usize, r: u32) -> serde_json::Value {
    let mut spec = json!({
        "image": format!("registry.example.com/web:1.{r}.0"),
        "resources": {"cpu": "50m", "memory": "64Mi"},
    });
    if i % 2 == 1 {
        spec["replicas"] = json!(1);
        if r.is_multiple_of(2) {
            spec["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": 3});
        }
    }
    if i % 4 == 2 {
        spec["iam"] = json!({"policyARNs": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]});
        if i % 8 == 6 && r.is_multiple_of(2) {
            spec["iam"]["inlinePolicy"] = json!(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#
            );
        }
    }
    spec
}
