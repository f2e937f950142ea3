//! cuebe's standard CUE library (`cuebe.dev/lib`, shipped in `sdk/core/cue/lib`) as a platform
//! module uses it: resolved offline from the copy the SDK ships, and its policy packs checking
//! every container of every workload kind (init containers and a CronJob's job template
//! included), so that no pack silently checks nothing.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use cuebe::renderer::RenderInput;
use cuebe::{CueRenderer, ModuleSet, ModuleSource};
use serde_json::{Value, json};

/// A module that embeds every pack and renders the objects it is given as nodes.
fn every_pack(lib_version: &str) -> ModuleSource {
    ModuleSource::new(
        [
            (
                "cue.mod/module.cue".to_string(),
                format!(
                    "module: \"example.com/packs@v0\"\nlanguage: version: \"v0.17.1\"\n\
                     deps: \"cuebe.dev/lib@v0\": v: \"{lib_version}\"\n"
                ),
            ),
            (
                "t/t.cue".to_string(),
                r#"package t

import "cuebe.dev/lib/policy"

module: {name: "packs", version: "0.0.1"}
input: _
// In another order than the library lists the rules in: the violations come in its order.
policy.PinnedImages
policy.AllowedRegistries
policy.Limits
policy.Restricted
policyOptions: allowedRegistries: ["registry.example.com/"]
nodes: {for id, o in input.spec.objects {(id): {object: o, readyWhen: [{type: "Exists"}]}}}
policyViolations: _
violations: policyViolations
"#
                .to_string(),
            ),
        ],
        "./t",
    )
}

fn render(objects: Value) -> cuebe::graph::Graph {
    let renderer = CueRenderer::new(ModuleSet::single("0.0.1", every_pack("v0.1.0")));
    renderer
        .render_blocking(&RenderInput {
            instance: cuebe::instance::Instance {
                name: "t".into(),
                namespace: "apps".into(),
                ..Default::default()
            },
            spec: json!({ "objects": objects }),
            ..Default::default()
        })
        .unwrap()
        .graph()
        .clone()
}

/// A container that passes every pack.
fn compliant(name: &str) -> Value {
    json!({
        "name": name,
        "image": "registry.example.com/app:1.2.3",
        "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
        "securityContext": {
            "runAsNonRoot": true, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
            "privileged": false, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

/// A container that fails every container rule.
fn offending(name: &str) -> Value {
    json!({
        "name": name,
        "image": "docker.io/someone/tool:latest",
        "securityContext": {"privileged": true}
    })
}

/// Every workload kind with `pod` as its pod spec, and where the kind keeps it.
fn workloads(pod: &Value) -> Vec<(&'static str, Value, &'static str)> {
    let template = json!({"metadata": {"labels": {"app": "t"}}, "spec": pod});
    let selector = json!({"matchLabels": {"app": "t"}});
    let object = |api: &str, kind: &str, spec: Value| json!({"apiVersion": api, "kind": kind, "metadata": {"name": "w", "namespace": "apps"}, "spec": spec});
    vec![
        (
            "Deployment",
            object(
                "apps/v1",
                "Deployment",
                json!({"selector": selector, "template": template}),
            ),
            "spec.template.spec",
        ),
        (
            "StatefulSet",
            object(
                "apps/v1",
                "StatefulSet",
                json!({"serviceName": "w", "selector": selector, "template": template}),
            ),
            "spec.template.spec",
        ),
        (
            "DaemonSet",
            object(
                "apps/v1",
                "DaemonSet",
                json!({"selector": selector, "template": template}),
            ),
            "spec.template.spec",
        ),
        (
            "ReplicaSet",
            object(
                "apps/v1",
                "ReplicaSet",
                json!({"selector": selector, "template": template}),
            ),
            "spec.template.spec",
        ),
        (
            "Job",
            object("batch/v1", "Job", json!({"template": template})),
            "spec.template.spec",
        ),
        (
            "CronJob",
            object(
                "batch/v1",
                "CronJob",
                json!({"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}}),
            ),
            "spec.jobTemplate.spec.template.spec",
        ),
        ("Pod", object("v1", "Pod", pod.clone()), "spec"),
    ]
}

/// The container rules and the field each names.
const CONTAINER_RULES: &[(&str, &str)] = &[
    ("not-privileged", "securityContext.privileged"),
    ("run-as-non-root", "securityContext.runAsNonRoot"),
    (
        "read-only-root-filesystem",
        "securityContext.readOnlyRootFilesystem",
    ),
    ("drop-all-capabilities", "securityContext.capabilities.drop"),
    (
        "seccomp-runtime-default",
        "securityContext.seccompProfile.type",
    ),
    ("limits-required", "resources.limits"),
    ("allowed-registries", "image"),
    ("image-pinned", "image"),
];

fn violations(g: &cuebe::graph::Graph) -> BTreeSet<(String, String)> {
    g.violations
        .iter()
        .map(|v| (v.rule.clone(), v.path.clone()))
        .collect()
}

#[test]
fn every_container_rule_catches_a_container_of_every_workload_kind_init_containers_included() {
    for list in ["containers", "initContainers"] {
        // The offending container sits in `list`; the pod's other list holds a compliant one.
        let pod = if list == "containers" {
            json!({"containers": [compliant("ok"), offending("bad")]})
        } else {
            json!({"initContainers": [offending("bad")], "containers": [compliant("ok")]})
        };
        let index = if list == "containers" { 1 } else { 0 };
        for (kind, object, at) in workloads(&pod) {
            let g = render(json!({ "w": object }));
            let found = violations(&g);
            let expected: BTreeSet<(String, String)> = CONTAINER_RULES
                .iter()
                .map(|(rule, field)| {
                    (
                        rule.to_string(),
                        format!("nodes.w.object.{at}.{list}[{index}].{field}"),
                    )
                })
                .collect();
            assert_eq!(found, expected, "{kind}, offending container in {list}");
        }
    }
}

#[test]
fn every_pod_rule_catches_a_pod_of_every_workload_kind() {
    let pod = json!({
        "hostNetwork": true, "hostPID": true,
        "containers": [compliant("ok")],
        "volumes": [{"name": "logs", "hostPath": {"path": "/var/log"}}]
    });
    for (kind, object, at) in workloads(&pod) {
        let g = render(json!({ "w": object }));
        let expected: BTreeSet<(String, String)> = [
            ("no-host-network", "hostNetwork"),
            ("no-host-namespaces", "hostPID"),
            ("no-host-path", "volumes[0].hostPath"),
        ]
        .iter()
        .map(|(rule, field)| (rule.to_string(), format!("nodes.w.object.{at}.{field}")))
        .collect();
        assert_eq!(violations(&g), expected, "{kind}");
    }
    // hostIPC alone is named as such.
    let g = render(json!({"w": {"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "w", "namespace": "apps"},
        "spec": {"hostIPC": true, "containers": [compliant("ok")]}}}));
    assert_eq!(
        violations(&g),
        BTreeSet::from([(
            "no-host-namespaces".to_string(),
            "nodes.w.object.spec.hostIPC".to_string()
        )])
    );
}

#[test]
fn a_compliant_pod_of_every_workload_kind_passes_every_pack() {
    let pod = json!({"initContainers": [compliant("init")], "containers": [compliant("app")]});
    for (kind, object, _) in workloads(&pod) {
        let g = render(json!({ "w": object }));
        assert!(g.violations.is_empty(), "{kind}: {:?}", g.violations);
    }
    // The pod's securityContext counts for runAsNonRoot and seccomp when the container's is
    // silent on them.
    let mut quiet = compliant("app");
    let sc = quiet["securityContext"].as_object_mut().unwrap();
    sc.remove("runAsNonRoot");
    sc.remove("seccompProfile");
    let pod = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [quiet]});
    for (kind, object, _) in workloads(&pod) {
        let g = render(json!({ "w": object }));
        assert!(g.violations.is_empty(), "{kind}: {:?}", g.violations);
    }
    // ... and is caught when it is wrong there.
    let mut quiet = compliant("app");
    let sc = quiet["securityContext"].as_object_mut().unwrap();
    sc.remove("runAsNonRoot");
    sc.remove("seccompProfile");
    let pod = json!({"securityContext": {"runAsNonRoot": false, "seccompProfile": {"type": "Unconfined"}},
        "containers": [quiet]});
    for (kind, object, at) in workloads(&pod) {
        let g = render(json!({ "w": object }));
        let expected: BTreeSet<(String, String)> = [
            ("run-as-non-root", "securityContext.runAsNonRoot"),
            (
                "seccomp-runtime-default",
                "securityContext.seccompProfile.type",
            ),
        ]
        .iter()
        .map(|(rule, field)| {
            (
                rule.to_string(),
                format!("nodes.w.object.{at}.containers[0].{field}"),
            )
        })
        .collect();
        assert_eq!(violations(&g), expected, "{kind}");
    }
}

#[test]
fn violations_come_in_the_library_rule_order_whatever_order_the_packs_are_embedded_in() {
    let g = render(json!({"w": workloads(&json!({"hostNetwork": true,
        "initContainers": [offending("bad")], "containers": [compliant("ok")]}))[0].1}));
    let rules: Vec<&str> = g.violations.iter().map(|v| v.rule.as_str()).collect();
    // The test module embeds PinnedImages, AllowedRegistries, Limits, Restricted.
    assert_eq!(
        rules,
        [
            "no-host-network",
            "not-privileged",
            "run-as-non-root",
            "read-only-root-filesystem",
            "drop-all-capabilities",
            "seccomp-runtime-default",
            "limits-required",
            "allowed-registries",
            "image-pinned",
        ]
    );
}

#[test]
fn a_workload_whose_pod_spec_is_not_where_its_kind_keeps_it_is_a_violation() {
    // A module typo (spec.templates) would otherwise leave every container rule checking nothing.
    for (kind, api, spec, at) in [
        (
            "Deployment",
            "apps/v1",
            json!({"templates": {}}),
            "spec.template.spec",
        ),
        (
            "StatefulSet",
            "apps/v1",
            json!({"templates": {}}),
            "spec.template.spec",
        ),
        (
            "DaemonSet",
            "apps/v1",
            json!({"templates": {}}),
            "spec.template.spec",
        ),
        (
            "Job",
            "batch/v1",
            json!({"templates": {}}),
            "spec.template.spec",
        ),
        // A CronJob's pod template is under jobTemplate, not template.
        (
            "CronJob",
            "batch/v1",
            json!({"schedule": "* * * * *", "template": {"spec": {"containers": [offending("bad")]}}}),
            "spec.jobTemplate.spec.template.spec",
        ),
    ] {
        let object = json!({"apiVersion": api, "kind": kind, "metadata": {"name": "w", "namespace": "apps"}, "spec": spec});
        let g = render(json!({ "w": object }));
        assert_eq!(
            violations(&g),
            BTreeSet::from([(
                "workload-pod-spec".to_string(),
                format!("nodes.w.object.{at}")
            )]),
            "{kind}"
        );
        assert!(
            g.violations[0]
                .message
                .contains(&format!("is a {kind} without a pod spec")),
            "{}",
            g.violations[0].message
        );
    }
}

#[test]
fn the_library_resolves_offline_from_the_copy_the_sdk_ships() {
    // Every shipped version is one cuebe.dev/lib@v0 a module may require.
    let newest = cuebe::stdlib::latest();
    assert_eq!(newest.module, "cuebe.dev/lib@v0");
    let renderer = CueRenderer::new(ModuleSet::single("0.0.1", every_pack(newest.version)));
    let started = std::time::Instant::now();
    let g = renderer
        .render_blocking(&RenderInput {
            instance: cuebe::instance::Instance {
                name: "t".into(),
                namespace: "apps".into(),
                ..Default::default()
            },
            spec: json!({"objects": {"config": {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "config", "namespace": "apps"}}}}),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(g.nodes.len(), 1);
    assert!(g.violations.is_empty());
    // No registry was asked (CUE_REGISTRY would point at registry.cue.works).
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_version_the_sdk_does_not_ship_is_refused_naming_the_versions_it_does() {
    let renderer = CueRenderer::new(ModuleSet::single("0.0.1", every_pack("v0.0.9")));
    let err = renderer
        .render_blocking(&RenderInput {
            spec: json!({"objects": {}}),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.reason(), "ModuleLoadFailed", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("cuebe.dev/lib@v0.0.9 is not shipped with this build of cuebe")
            && text.contains(cuebe::stdlib::latest().version),
        "{text}"
    );
}

#[test]
fn readiness_defaults_are_predicates_the_graph_accepts() {
    // byKind is data a module puts in readyWhen: every entry must parse as a Graph predicate.
    let module = ModuleSource::new(
        [
            (
                "cue.mod/module.cue",
                "module: \"example.com/r@v0\"\nlanguage: version: \"v0.17.1\"\n\
                 deps: \"cuebe.dev/lib@v0\": v: \"v0.1.0\"\n",
            ),
            (
                "r/r.cue",
                "package r\nimport \"cuebe.dev/lib/readiness\"\nmodule: {name: \"r\", version: \"0.0.1\"}\ninput: _\n\
                 nodes: {for kind, rw in readiness.byKind {(kind): {object: {apiVersion: \"v1\", kind: \"ConfigMap\", \
                 metadata: {name: kind, namespace: \"apps\"}}, readyWhen: rw}}}\n\
                 nodes: ack: {object: {apiVersion: \"v1\", kind: \"ConfigMap\", metadata: {name: \"ack\", namespace: \"apps\"}}, readyWhen: readiness.ackSynced}\n\
                 nodes: lb: {object: {apiVersion: \"v1\", kind: \"ConfigMap\", metadata: {name: \"lb\", namespace: \"apps\"}}, readyWhen: readiness.loadBalancer}\n",
            ),
        ],
        "./r",
    );
    let g = CueRenderer::new(ModuleSet::single("0.0.1", module))
        .render_blocking(&RenderInput {
            instance: cuebe::instance::Instance {
                name: "r".into(),
                namespace: "apps".into(),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
    let by_kind: BTreeMap<&str, Vec<&str>> = g
        .nodes
        .iter()
        .map(|n| {
            (
                n.id.as_str(),
                n.ready_when.iter().map(|p| p.type_name()).collect(),
            )
        })
        .collect();
    assert_eq!(by_kind["Deployment"], ["DeploymentAvailable"]);
    assert_eq!(by_kind["StatefulSet"], ["Current"]);
    assert_eq!(by_kind["CronJob"], ["Exists"]);
    assert_eq!(by_kind["ack"], ["ConditionMatch"]);
    assert_eq!(by_kind["lb"], ["ServiceLoadBalancerReady"]);
    assert!(by_kind.len() > 20, "{by_kind:?}");
}
