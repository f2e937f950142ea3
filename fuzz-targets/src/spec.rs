//! Target `spec`: a `WebService` manifest through the CRD type's deserialisation (what the
//! derive's `spec_value` and the CLI read) and the platform module, compiled by CUE.
//!
//! Input: the manifest as YAML or JSON text, or structured: a manifest whose spec fields are
//! present or not, of the right type or not, at the edges of `i32`, with unknown fields, odd
//! names, and capabilities on or off.
//!
//! Properties:
//! - a manifest (a YAML mapping) the type rejects is rejected naming the field
//!   (`spec.replicas: invalid type …`, ``missing field `image` ``);
//! - a spec the type accepts renders to a Graph, or to input errors that each name a field
//!   under `spec` or `metadata`, never to a module error, an invalid graph or a timeout;
//! - a rendered Graph's violations each name a field, and the Graph passes the `graph`
//!   target's checks (decoding, validation, planning, round trip).
//!
//! Every execution evaluates CUE (the render cache is off), so this target runs in the
//! hundreds per second, not the tens of thousands.
use std::collections::BTreeMap;
use std::sync::OnceLock;

use arbitrary::Unstructured;
use cuebe::abstraction::render_input;
use cuebe_cli::render::{RenderFailure, parse_instance};
use cuebe_core::render::{Capabilities, CueRenderer, CueRendererOptions, RenderError};
use serde_json::{Map, Value, json};
use webservice_operator::WebService;

use crate::make::{any_value, chance, corrupt, count, int, pick, string};
use crate::names_a_field;

const KEYS: &[&str] = &[
    "image",
    "replicas",
    "port",
    "resources",
    "cpu",
    "memory",
    "env",
    "name",
    "value",
    "exposure",
    "type",
    "host",
    "autoscaling",
    "maxReplicas",
    "iam",
    "policyARNs",
    "platformRef",
    "embedded",
];

/// One renderer for the process: building the module is the slow part, evaluating is what is
/// fuzzed. The render cache is off so every execution evaluates.
fn renderer() -> &'static CueRenderer {
    static RENDERER: OnceLock<CueRenderer> = OnceLock::new();
    RENDERER.get_or_init(|| {
        CueRenderer::with_options(
            webservice_operator::platform_modules(),
            CueRendererOptions {
                render_cache_capacity: 0,
                ..CueRendererOptions::default()
            },
        )
    })
}

fn small_int(u: &mut Unstructured<'_>) -> Value {
    if chance(u, 60) {
        json!(pick(u, &[0, 1, 2, 3, 10, 80, 8080, 65535, 65536, -1]))
    } else {
        json!(int(u))
    }
}

/// A `WebService` spec: each field present or not, mostly of the right type.
pub fn spec(u: &mut Unstructured<'_>) -> Value {
    let mut s = Map::new();
    if !chance(u, 3) {
        let image = string(
            u,
            &[
                "registry.example.com/web:1.4.2",
                "registry.example.com/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "registry.example.com/web:latest",
                "registry.example.com/web",
                "docker.io/library/nginx:1",
                "",
            ],
        );
        s.insert("image".into(), json!(image));
    }
    if chance(u, 50) {
        s.insert("resources".into(), json!({"cpu": string(u, &["250m", "1", "", "x"]), "memory": string(u, &["256Mi", "1Gi", ""])}));
    }
    if chance(u, 40) {
        s.insert("replicas".into(), small_int(u));
    }
    if chance(u, 30) {
        s.insert("port".into(), small_int(u));
    }
    if chance(u, 25) {
        let env: Vec<Value> = (0..count(u, 3))
            .map(|i| json!({"name": string(u, &["A", "PORT", "", "1X"]), "value": format!("{i}")}))
            .collect();
        s.insert("env".into(), json!(env));
    }
    if chance(u, 15) {
        s.insert("command".into(), json!(["/bin/web"]));
        s.insert("args".into(), json!(["--port", "8080"]));
    }
    if chance(u, 20) {
        s.insert(
            "probes".into(),
            json!({"readinessPath": string(u, &["/healthz", "", "healthz"])}),
        );
    }
    if chance(u, 35) {
        let mut e = Map::new();
        e.insert(
            "type".into(),
            json!(pick(u, &["Internal", "Public", "Secret"])),
        );
        if chance(u, 60) {
            e.insert(
                "host".into(),
                json!(string(u, &["web.example.com", "", "-bad-", "a.b"])),
            );
        }
        if chance(u, 30) {
            e.insert("path".into(), json!(string(u, &["/", "/api", "api"])));
        }
        s.insert("exposure".into(), Value::Object(e));
    }
    if chance(u, 25) {
        s.insert(
            "autoscaling".into(),
            json!({"minReplicas": small_int(u), "maxReplicas": small_int(u), "targetCPUUtilization": small_int(u)}),
        );
    }
    if chance(u, 20) {
        let mut iam = Map::new();
        if chance(u, 70) {
            iam.insert(
                "policyARNs".into(),
                json!([string(
                    u,
                    &["arn:aws:iam::aws:policy/ReadOnlyAccess", "nope"]
                )]),
            );
        }
        if chance(u, 40) {
            iam.insert(
                "inlinePolicy".into(),
                json!(string(
                    u,
                    &[r#"{"Version":"2012-10-17","Statement":[]}"#, "{", ""]
                )),
            );
        }
        s.insert("iam".into(), Value::Object(iam));
    }
    if chance(u, 10) {
        s.insert(
            "platformRef".into(),
            json!({"embedded": string(u, &["1.0.0", "9.9.9"])}),
        );
    }
    if chance(u, 10) {
        s.insert(
            "deletionPolicy".into(),
            json!(pick(u, &["Delete", "Orphan", "Keep"])),
        );
    }
    if chance(u, 10) {
        s.insert(
            "adopt".into(),
            json!({"resources": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": string(u, &["legacy", ""])}]}),
        );
    }
    if chance(u, 5) {
        s.insert(
            string(u, &["replica", "hostNetwork"]),
            any_value(u, 1, KEYS),
        );
    }
    let mut spec = Value::Object(s);
    if chance(u, 15) {
        corrupt(u, &mut spec, KEYS);
    }
    spec
}

/// Runs the target on raw bytes (see the crate doc for the two readings).
pub fn run(data: &[u8]) {
    if crate::is_text(data, b"a#-{ \n") {
        if let Ok(text) = std::str::from_utf8(data) {
            check_text(text, Capabilities::default());
        }
    } else {
        let mut u = Unstructured::new(data);
        let name = string(
            &mut u,
            &[
                "web",
                "hello",
                "Web",
                "",
                "a-very-long-name-that-goes-past-what-a-label-value-may-hold-0123456789",
            ],
        );
        let manifest = json!({
            "apiVersion": "platform.example.com/v1alpha1",
            "kind": "WebService",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": spec(&mut u),
        });
        let capabilities = Capabilities::from_names(
            [Capabilities::GATEWAY_API, Capabilities::ACK_IAM]
                .into_iter()
                .filter(|_| chance(&mut u, 50)),
        );
        check_text(&manifest.to_string(), capabilities);
    }
}

/// Parses `text` as a `WebService` manifest, renders it, and checks every property of the
/// module doc.
pub fn check_text(text: &str, capabilities: Capabilities) {
    let object: WebService = match parse_instance("fuzz.yaml", text) {
        Ok(object) => object,
        Err(RenderFailure::Input { message, .. }) => {
            let mapping = cuebe_cli::render::parse_yaml::<Value>("fuzz.yaml", text)
                .is_ok_and(|v| v.is_object());
            assert!(
                !mapping || names_a_field(&message) || message.starts_with("expected apiVersion"),
                "a manifest the type rejects must name the field: {message}"
            );
            return;
        }
        Err(other) => panic!("parsing rendered nothing yet failed: {other}"),
    };
    if object
        .metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        // The CLI refuses this before rendering; the API server never admits it.
        return;
    }
    let input = render_input(&object, capabilities, BTreeMap::new());
    match renderer().render_blocking(&input) {
        Ok(plan) => {
            for v in &plan.violations {
                assert!(
                    !v.path.is_empty() && names_a_field(&v.to_string()),
                    "a violation must name its field: {v}"
                );
            }
            crate::graph::check_text(&serde_json::to_string(plan.graph()).unwrap_or_default());
        }
        Err(RenderError::InvalidInput { errors }) => {
            for e in errors {
                assert!(
                    (e.field.starts_with("spec") || e.field.starts_with("metadata"))
                        && names_a_field(&e.to_string()),
                    "an input error must name its field: {e}"
                );
            }
        }
        Err(RenderError::UnknownModule(e)) => assert!(
            e.to_string().starts_with("spec.platformRef"),
            "an unknown module must name spec.platformRef: {e}"
        ),
        Err(e) => panic!(
            "a spec the type accepts must render or be rejected by field, not fail: {e}\nspec: {}",
            input.spec
        ),
    }
}
