//! The bridge keeps nothing per evaluation: an operator renders every instance again on each
//! resync, so memory that grows with renders grows forever.

use std::time::Duration;

use cuebe_cue_sys::module::{
    ExportRequest, Fill, LoadedModule, ModuleFiles, bridge_memory, write_go_heap_profile,
};

const MODULE: &str = r#"package m

input: {
	metadata: {name: string, namespace: string, labels: [string]: string}
	spec: {image: string, replicas: int & >=1, env: [...{name: string, value: string}]}
}
nodes: {
	deployment: {
		apiVersion: "apps/v1"
		kind:       "Deployment"
		metadata: {name: input.metadata.name, namespace: input.metadata.namespace, labels: input.metadata.labels}
		spec: {
			replicas: input.spec.replicas
			template: spec: containers: [{name: "app", image: input.spec.image, env: input.spec.env}]
		}
	}
	service: {
		apiVersion: "v1"
		kind:       "Service"
		metadata: {name: input.metadata.name, namespace: input.metadata.namespace}
		spec: ports: [{port: 80, targetPort: 8080}]
	}
}
"#;

/// The Go live heap after a collection, in bytes (the profile collects first).
fn live_heap_after_collection() -> u64 {
    let path = std::env::temp_dir().join(format!("cuebe-memory-test-{}.pprof", std::process::id()));
    write_go_heap_profile(&path).expect("heap profile written");
    let _ = std::fs::remove_file(&path);
    bridge_memory().heap_live
}

#[test]
fn rendering_many_different_inputs_keeps_the_go_heap_flat() {
    let source = ModuleFiles {
        files: [
            (
                "cue.mod/module.cue",
                "module: \"example.com/m@v0\"\nlanguage: version: \"v0.17.1\"\n",
            ),
            ("m.cue", MODULE),
        ]
        .into_iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect(),
        package: ".".into(),
        dependencies: Vec::new(),
    };
    let module = LoadedModule::load(source, 1).expect("module loads");
    let render = |i: usize| {
        let input = serde_json::json!({
            "metadata": {"name": format!("web-{i}"), "namespace": "apps", "labels": {"team": "a"}},
            "spec": {
                "image": format!("registry.example.com/web:1.{i}"),
                "replicas": 1 + i % 3,
                "env": (0..8).map(|e| serde_json::json!({"name": format!("VAR_{e}"), "value": format!("value {i} {e}")})).collect::<Vec<_>>(),
            },
        });
        let out = module
            .eval(
                &[Fill {
                    path: "input",
                    value: &input,
                }],
                &[ExportRequest::split("nodes", 2)],
                Duration::from_secs(10),
            )
            .expect("renders");
        assert_eq!(out.len(), 1);
    };
    // Warm up: the first renders fill CUE's caches of the module itself.
    (0..200).for_each(render);
    let before = live_heap_after_collection();
    const RENDERS: usize = 3000;
    (200..200 + RENDERS).for_each(render);
    let after = live_heap_after_collection();
    let per_render = after.saturating_sub(before) / RENDERS as u64;
    // Before the bridge built its inputs as expressions, CUE's runtime registered each compiled
    // input as an instance and kept it: about 5 KB per render here, 7-14 KB in the operator.
    assert!(
        per_render < 256,
        "the Go live heap grew from {before} to {after} bytes over {RENDERS} renders ({per_render} bytes per render)"
    );
}
