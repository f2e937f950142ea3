//! Tracing: `run` with the standard `OTEL_EXPORTER_OTLP_ENDPOINT` exports one trace per
//! reconcile to a real OTLP receiver (Jaeger, built from its Go module), on the real control
//! plane; a bad OTLP setting stops the operator at start.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cuebe::status::{AbstractionStatus, ConditionType};
use cuebe_testkit::cluster::{Pki, TestCluster};
use cuebe_testkit::jaeger::{Jaeger, Span, Trace};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use webservice_operator::WebService;

fn attribute<'a>(span: &'a Span, key: &str) -> &'a str {
    span.attributes
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("span {} has no {key}: {:?}", span.name, span.attributes))
}

/// The trace of the reconcile that made the instance Ready: the first one ending Ready (later
/// ones, woken by that status write, find nothing to change).
fn ready_reconcile<'a>(traces: &'a [Trace], ns: &str) -> Option<(&'a Trace, &'a Span)> {
    traces
        .iter()
        .flat_map(|trace| trace.roots().into_iter().map(move |root| (trace, root)))
        .filter(|(_, root)| {
            root.name == "reconcile"
                && root
                    .attributes
                    .get("k8s.namespace.name")
                    .map(String::as_str)
                    == Some(ns)
                && root
                    .attributes
                    .get("cuebe.reconcile.outcome")
                    .map(String::as_str)
                    == Some("AllNodesReady")
        })
        .min_by_key(|(_, root)| root.start_micros)
}

/// Runs the `run` binary on a fresh namespace with `env`, applies a WebService, waits until it is
/// Ready and stops the operator with SIGTERM. Returns the namespace, the instance's status and
/// how long the operator took to exit.
async fn reconcile_to_ready(env: &[(&str, &str)]) -> (String, AbstractionStatus, Duration) {
    let cluster = TestCluster::shared().await.unwrap();
    cluster
        .apply_crds(
            &cuebe::abstraction::crds::<WebService>(),
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let ns = cluster.namespace("tracing").await.unwrap();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
        .args(["run", "--namespace", &ns])
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("OTEL_SERVICE_NAME", format!("webservice-operator-{ns}"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let webservices: Api<WebService> = Api::namespaced(cluster.client(), &ns);
    let body = json!({
        "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
        "metadata": {"name": "web"},
        "spec": {"image": "registry.example.com/web:1.4.2",
            "resources": {"cpu": "100m", "memory": "64Mi"}},
    });
    webservices
        .patch(
            "web",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    let status = || async {
        webservices
            .get("web")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    };
    cuebe_testkit::eventually::eventually(
        "web Ready",
        Duration::from_secs(90),
        || async { status().await.is_ready() },
        || async { format!("{:#?}\n{}", status().await, cluster.log_tails(10)) },
    )
    .await;
    let status: AbstractionStatus = status().await;
    // SIGTERM: the operator stops reconciling and flushes its spans before it exits.
    let stopped_at = Instant::now();
    unsafe { libc::kill(operator.id() as i32, libc::SIGTERM) };
    let exit = operator.wait().unwrap();
    assert!(exit.success(), "the operator exited with {exit}");
    (ns, status, stopped_at.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconcile_is_a_trace_of_render_apply_readiness_and_status_write() {
    let jaeger = Jaeger::start().unwrap();
    let (ns, status, shutdown) = reconcile_to_ready(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &jaeger.otlp_endpoint()),
        // Nothing leaves before the exit: the spans Jaeger has were flushed at shutdown.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ])
    .await;
    let service = format!("webservice-operator-{ns}");
    let traces = jaeger.traces(&service).await.unwrap();
    let Some((trace, root)) = ready_reconcile(&traces, &ns) else {
        panic!(
            "no reconcile trace with outcome AllNodesReady among {} traces: {:#?}\n{}",
            traces.len(),
            traces.iter().flat_map(|t| t.roots()).collect::<Vec<_>>(),
            jaeger.log()
        );
    };
    assert_eq!(attribute(root, "cuebe.instance.kind"), "WebService");
    assert_eq!(attribute(root, "cuebe.instance.name"), "web");
    assert_eq!(attribute(root, "cuebe.instance.generation"), "1");
    assert_eq!(attribute(root, "cuebe.module.ref"), status.module_ref);
    assert_eq!(
        attribute(root, "cuebe.module.resolved"),
        status.platform_ref_resolved
    );
    assert_eq!(attribute(root, "cuebe.render.hash"), status.render_hash);
    assert_eq!(
        attribute(root, "cuebe.reconcile.outcome"),
        status.condition(ConditionType::Ready).unwrap().reason
    );

    let children = trace.children(root);
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    let render = children
        .iter()
        .find(|s| s.name == "render")
        .unwrap_or_else(|| panic!("no render span under the reconcile: {names:?}"));
    assert_eq!(attribute(render, "cuebe.render.hash"), status.render_hash);
    assert!(attribute(render, "cuebe.module.digest").starts_with("sha256:"));
    assert!(attribute(render, "cuebe.module.name").starts_with("webservice@"));
    assert!(!status.nodes.is_empty());
    for (node, node_status) in &status.nodes {
        let apply = children
            .iter()
            .find(|s| s.name == format!("apply {node}"))
            .unwrap_or_else(|| panic!("no apply span for {node}: {names:?}"));
        assert_eq!(attribute(apply, "cuebe.node.id"), node);
        assert!(!attribute(apply, "k8s.object.kind").is_empty());
        assert!(!attribute(apply, "k8s.object.name").is_empty());
        assert!(
            ["apply", "unchanged"].contains(&attribute(apply, "cuebe.node.action")),
            "{node}: {:?}",
            apply.attributes
        );
        let readiness = children
            .iter()
            .find(|s| s.name == format!("readiness {node}"))
            .unwrap_or_else(|| panic!("no readiness span for {node}: {names:?}"));
        assert_eq!(
            attribute(readiness, "cuebe.readiness.verdict"),
            format!("{:?}", node_status.phase)
        );
        assert!(readiness.start_micros >= apply.start_micros);
    }
    let status_write = children
        .iter()
        .find(|s| s.name == "status write")
        .unwrap_or_else(|| panic!("no status write span: {names:?}"));
    assert_eq!(attribute(status_write, "cuebe.status.written"), "true");
    // Every span of the trace is one of those, directly under the reconcile.
    assert_eq!(children.len() + 1, trace.spans.len(), "{names:?}");
    // The first reconciles wrote something: some apply span says so.
    assert!(
        traces
            .iter()
            .flat_map(|t| &t.spans)
            .any(|s| s.name.starts_with("apply ")
                && s.attributes.get("cuebe.node.action").map(String::as_str) == Some("apply")),
        "no apply span wrote anything"
    );
    assert!(
        shutdown < Duration::from_secs(15),
        "shutdown took {shutdown:?}"
    );
}

/// Arguments after `run`, environment, what stderr must say.
type BadSetting<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn traces_reach_an_https_endpoint_the_system_roots_trust() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(pki_dir.path()).unwrap();
    let jaeger = Jaeger::start_tls(&pki.serving_cert, &pki.serving_key).unwrap();
    assert!(jaeger.otlp_endpoint().starts_with("https://"));
    let ca = pki.ca_cert.display().to_string();
    let (ns, _, _) = reconcile_to_ready(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &jaeger.otlp_endpoint()),
        // The system roots, as the operator reads them, are this CA alone.
        ("SSL_CERT_FILE", &ca),
    ])
    .await;
    let traces = jaeger
        .traces(&format!("webservice-operator-{ns}"))
        .await
        .unwrap();
    assert!(
        ready_reconcile(&traces, &ns).is_some(),
        "no reconcile trace with outcome AllNodesReady over TLS among {} traces\n{}",
        traces.len(),
        jaeger.log()
    );
}

#[test]
fn a_bad_otlp_setting_stops_the_operator_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [BadSetting; 3] = [
        (
            &["--otlp-endpoint", "not a url"],
            &[],
            "--otlp-endpoint: OTLP endpoint not a url",
        ),
        (
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: traces are exported over OTLP/gRPC only",
        ),
        (
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_TRACES_EXPORTER", "zipkin"),
            ],
            "OTEL_TRACES_EXPORTER=zipkin",
        ),
    ];
    for (args, env, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            // Never reach a cluster: the setting is checked first.
            .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} {env:?}: {stderr}");
    }
}
