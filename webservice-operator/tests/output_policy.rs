//! Output policy rules that no WebService input can trigger (the module always renders them),
//! checked directly against synthetic rendered nodes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cuebe::cue::{ExportRequest, Exported, Fill, LoadedModule};
use serde_json::json;

fn rules_for(nodes: serde_json::Value, public: bool) -> Vec<String> {
    let module = webservice_operator::platform_module().with_files([(
        "policytest/check.cue",
        "package policytest\nimport \"platform.example.com/platform/policy\"\nin: {nodes: _, public: bool}\nout: (policy.Output & {nodes: in.nodes, outputPolicy: public: in.public}).outputViolations\n",
    )]);
    let module = LoadedModule::load(
        cuebe::ModuleSource::new(module.files().clone(), "./policytest").module_files(),
        1,
    )
    .unwrap();
    let input = json!({"nodes": nodes, "public": public});
    let out = module
        .eval(
            &[Fill {
                path: "in",
                value: &input,
            }],
            &[ExportRequest::whole("out")],
            Duration::from_secs(10),
        )
        .unwrap();
    let Exported::Value(v) = &out[0] else {
        panic!("{out:?}")
    };
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            format!(
                "{} {}",
                x["rule"].as_str().unwrap(),
                x["path"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn public_service_without_network_policy_or_pdb_is_a_violation() {
    let nodes = json!({"service": {"object": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}}});
    assert_eq!(
        rules_for(nodes.clone(), true),
        [
            "public-needs-network-policy nodes",
            "public-needs-pdb nodes"
        ]
    );
    assert!(rules_for(nodes, false).is_empty());
}

#[test]
fn public_service_with_both_passes() {
    let nodes = json!({
        "np": {"object": {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "x"}}},
        "pdb": {"object": {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"}}},
    });
    assert!(rules_for(nodes, true).is_empty());
}
