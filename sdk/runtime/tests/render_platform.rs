//! The CUE renderer against the real platform module in `cue/platform`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use cuebe::renderer::{Capabilities, CueRendererOptions, RenderError, RenderInput};
use cuebe::{CueRenderer, ModuleSet, ModuleSource};
use serde_json::json;

fn platform() -> ModuleSource {
    ModuleSource::from_dir(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../cue/platform"),
        "./webservice",
    )
    .expect("cue/platform is readable")
}

fn input(spec: serde_json::Value) -> RenderInput {
    RenderInput {
        instance: cuebe::instance::Instance {
            name: "web".into(),
            namespace: "apps".into(),
            labels: BTreeMap::new(),
            ..Default::default()
        },
        spec,
        ..Default::default()
    }
}

#[test]
fn simple_service_renders_and_is_byte_stable() {
    let c = CueRenderer::new(ModuleSet::single("1.0.0", platform()));
    let spec = json!({"image": "registry.example.com/web:1.4.2", "resources": {"cpu": "250m", "memory": "256Mi"}});
    let g = c.render_blocking(&input(spec.clone())).unwrap();
    let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["serviceAccount", "deployment", "service", "pdb"]);
    assert!(g.violations.is_empty(), "{:?}", g.violations);
    // A fresh renderer (no cache) gives the same bytes and hash.
    let c2 = CueRenderer::new(ModuleSet::single("1.0.0", platform()));
    let g2 = c2.render_blocking(&input(spec)).unwrap();
    assert_eq!(
        serde_json::to_string(&*g).unwrap(),
        serde_json::to_string(&*g2).unwrap()
    );
    assert!(g.metadata.render_hash.starts_with("sha256:"));
}

#[test]
fn irsa_is_pending_until_the_arn_is_observed() {
    let c = CueRenderer::new(ModuleSet::single("1.0.0", platform()));
    let mut i = input(
        json!({"image": "registry.example.com/web:1.4.2", "resources": {"cpu": "250m", "memory": "256Mi"}, "iam": {"policyARNs": []}}),
    );
    i.capabilities = Capabilities::from_names(["ack-iam"]);
    let before = c.render_blocking(&i).unwrap();
    let sa = before.node("serviceAccount").unwrap();
    assert_eq!(sa.pending_on, ["roleArn"]);
    assert!(sa.object.is_none());
    assert_eq!(before.node("deployment").unwrap().pending_on, ["roleArn"]);
    assert!(before.node("iamRole").unwrap().pending_on.is_empty());
    assert!(before.node("service").unwrap().pending_on.is_empty());

    i.observed.insert("iamRole".into(), json!({"status": {"ackResourceMetadata": {"arn": "arn:aws:iam::111122223333:role/apps-web"}}}));
    let after = c.render_blocking(&i).unwrap();
    let sa = after.node("serviceAccount").unwrap();
    assert!(sa.pending_on.is_empty());
    assert_eq!(
        sa.object
            .as_ref()
            .unwrap()
            .pointer("/metadata/annotations/eks.amazonaws.com~1role-arn"),
        Some(&json!("arn:aws:iam::111122223333:role/apps-web"))
    );
    assert_ne!(before.metadata.render_hash, after.metadata.render_hash);
}

#[test]
fn unknown_field_and_wrong_type_name_the_field() {
    let c = CueRenderer::new(ModuleSet::single("1.0.0", platform()));
    let err = c
        .render_blocking(&input(
            json!({"image": "registry.example.com/web:1", "colour": "red"}),
        ))
        .unwrap_err();
    let RenderError::InvalidInput { errors } = &err else {
        panic!("{err}")
    };
    assert_eq!(errors[0].field, "spec.colour", "{err}");
    assert_eq!(errors[0].message, "unknown field (not in the schema)");
    let err = c
        .render_blocking(&input(
            json!({"image": "registry.example.com/web:1", "replicas": "two"}),
        ))
        .unwrap_err();
    let RenderError::InvalidInput { errors } = &err else {
        panic!("{err}")
    };
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(errors[0].field, "spec.replicas");
    assert!(
        errors[0]
            .message
            .contains("mismatched types string and int"),
        "{err}"
    );
}

#[test]
fn concurrent_renders_match_sequential_ones() {
    // Several threads share two evaluators of one module; every render must come out exactly as
    // it does alone (a CUE value shared unsafely would mix inputs or crash).
    let options = CueRendererOptions {
        render_cache_capacity: 0,
        evaluators_per_module: 2,
        ..Default::default()
    };
    let c = std::sync::Arc::new(CueRenderer::with_options(
        ModuleSet::single("1.0.0", platform()),
        options.clone(),
    ));
    let spec_for = |i: usize| json!({"image": format!("registry.example.com/web:1.{i}.0"), "replicas": 1 + i % 5, "resources": {"cpu": "250m", "memory": "256Mi"}});
    let alone = CueRenderer::with_options(ModuleSet::single("1.0.0", platform()), options);
    let expected: Vec<String> = (0..8)
        .map(|i| {
            serde_json::to_string(&*alone.render_blocking(&input(spec_for(i))).unwrap()).unwrap()
        })
        .collect();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            let spec = spec_for(i);
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| {
                        serde_json::to_string(&*c.render_blocking(&input(spec.clone())).unwrap())
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        for got in t.join().unwrap() {
            assert_eq!(got, expected[i], "render {i} differs when run concurrently");
        }
    }
    // Eight first renders at once built the module once: the others waited for that build.
    assert_eq!(c.cache_stats().modules_built, 1);
}

#[test]
fn a_name_the_module_cannot_render_is_invalid_input_naming_the_field() {
    // Admission refuses such names (the CRD's rule); a CRD installed without it still never
    // gets a half-applied instance: the render stops, naming the field.
    let c = CueRenderer::new(ModuleSet::single("1.0.0", platform()));
    for name in ["a".repeat(64), "web.example".to_string()] {
        let mut request = input(json!({"image": "registry.example.com/web:1"}));
        request.instance.name = name.clone();
        let err = c.render_blocking(&request).unwrap_err();
        let RenderError::InvalidInput { errors } = &err else {
            panic!("{name}: {err}")
        };
        assert_eq!(errors[0].field, "metadata.name", "{err}");
        assert!(errors[0].message.contains("DNS label"), "{err}");
        assert_eq!(err.reason(), "InvalidSpec");
    }
}

#[test]
fn a_spec_over_the_size_limit_is_refused_before_cue_sees_it() {
    let c = CueRenderer::new(ModuleSet::single("1.0.0", platform()));
    // 30,000 env entries (about 1.3 MiB): what took a render past its time limit and the
    // operator past 1 GiB.
    let env: Vec<serde_json::Value> = (0..30_000)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": format!("value-{i}")}))
        .collect();
    let started = std::time::Instant::now();
    let err = c
        .render_blocking(&input(
            json!({"image": "registry.example.com/web:1", "env": env}),
        ))
        .unwrap_err();
    let RenderError::InvalidInput { errors } = &err else {
        panic!("{err}")
    };
    assert_eq!(errors[0].field, "spec");
    assert!(errors[0].message.contains("at most 256 KiB"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "refused without evaluating"
    );
    // 3,000 entries is well within the limit and renders.
    let env: Vec<serde_json::Value> = (0..3_000)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": format!("value-{i}")}))
        .collect();
    c.render_blocking(&input(
        json!({"image": "registry.example.com/web:1", "env": env}),
    ))
    .unwrap();
}

#[test]
fn a_module_with_dependencies_is_refused_offline_without_a_network_call() {
    // CUE would otherwise fetch deps from CUE_REGISTRY (registry.cue.works by default) from
    // inside the bridge; the bridge's registry refuses every fetch.
    let with_deps = ModuleSource::new(
        [
            (
                "cue.mod/module.cue",
                "module: \"example.com/m@v1\"\nlanguage: version: \"v0.17.1\"\ndeps: \"example.com/other@v0\": v: \"v0.1.0\"\n",
            ),
            (
                "p/p.cue",
                "package p\nimport \"example.com/other\"\nx: other.y\n",
            ),
        ],
        "./p",
    );
    let c = CueRenderer::new(ModuleSet::single("1.0.0", with_deps));
    let started = std::time::Instant::now();
    let err = c
        .render_blocking(&input(json!({"image": "registry.example.com/web:1"})))
        .unwrap_err();
    assert_eq!(err.reason(), "ModuleLoadFailed", "{err}");
    assert!(err.to_string().contains("loaded offline"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn the_largest_env_list_the_crd_admits_with_unicode_values_renders() {
    // The WebService CRD admits at most 1,000 env entries; free text may be any Unicode.
    let env: Vec<serde_json::Value> = (0..1000)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": format!("héllo wörld ✓ 日本語 🚀 #{i}")}))
        .collect();
    let spec = json!({"image": "registry.example.com/web:1.4.2",
        "resources": {"cpu": "250m", "memory": "256Mi"}, "env": env});
    let c = CueRenderer::new(ModuleSet::single("1.0.0", platform()));
    // Rendering at all means within the render time limit (10 s): past it, RenderTimeout.
    let g = c.render_blocking(&input(spec)).unwrap();
    let deployment = g.nodes.iter().find(|n| n.id == "deployment").unwrap();
    let rendered = deployment.object.as_ref().unwrap()["spec"]["template"]["spec"]["containers"][0]
        ["env"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rendered.len(), 1000);
    assert_eq!(
        rendered[999]["value"], "héllo wörld ✓ 日本語 🚀 #999",
        "Unicode survives byte for byte"
    );
}
