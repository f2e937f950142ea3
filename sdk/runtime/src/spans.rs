//! The spans of a reconcile, for tracing backends (OpenTelemetry through `cuebe_cli`'s OTLP
//! exporter, or any `tracing` subscriber).
//!
//! Every span here has the target [`TARGET`] and level INFO. A subscriber that does not enable
//! that target pays one disabled-callsite check per span and nothing else (no attribute is
//! formatted); `cuebe_cli` enables it only for its OTLP exporter, so logs look the same with or
//! without tracing.
//!
//! The tree of one reconcile (names as a tracing backend shows them):
//!
//! ```text
//! reconcile                    one per reconcile of an instance
//! ├── render                   the CUE evaluation (cache hit or not), once per render round
//! ├── apply <node id>          one per node of the Graph: read, adopt, Server-Side Apply
//! ├── readiness <node id>      the node's readiness verdict after its apply (another one each
//! │                            time the pass looks again at it in the watch cache)
//! └── status write             the status patch (also when nothing changed: written = false)
//! ```
//!
//! `apply` and `readiness` of one node follow each other; a node starts once its own
//! dependencies are Ready, concurrently with others, so spans of several nodes overlap.
//!
//! Attributes (names are stable; OpenTelemetry semantic conventions where one exists):
//!
//! | span | attribute | value |
//! | --- | --- | --- |
//! | reconcile | `k8s.namespace.name` | the instance's namespace |
//! | reconcile | `cuebe.instance.kind` | its kind, e.g. `WebService` |
//! | reconcile | `cuebe.instance.name` | its name |
//! | reconcile | `cuebe.instance.generation` | `metadata.generation` |
//! | reconcile | `cuebe.module.ref` | the module asked for (`status.moduleRef`) |
//! | reconcile | `cuebe.module.resolved` | what it resolved to (`status.platformRefResolved`: a digest, or a pinned `oci://…@sha256:…` / `git+…@<commit>`) |
//! | reconcile | `cuebe.render.hash` | `status.renderHash` |
//! | reconcile | `cuebe.reconcile.outcome` | the Ready condition's reason (`AllNodesReady`, `Progressing`, `PolicyViolation`, `RenderFailed`, …), `Deleting` for a deletion, `Error` when the reconcile failed |
//! | render | `cuebe.module.digest` | digest of the module that rendered (`sha256:…`) |
//! | render | `cuebe.module.name` | its name and version, e.g. `webservice@1.0.0` |
//! | render | `cuebe.render.hash` | the render hash |
//! | render | `cuebe.render.nodes` | number of nodes in the Graph |
//! | render | `cuebe.render.cached` | `true` when the render cache answered (no CUE evaluation) |
//! | apply | `cuebe.node.id` | the node's id in the Graph |
//! | apply | `k8s.object.kind`, `k8s.object.name` | the object's kind and name |
//! | apply | `cuebe.node.action` | `apply` (written), `unchanged` (nothing to write), `read` (a `Reference` node), `blocked`, `error` |
//! | apply | `cuebe.node.phase` | the node's phase after the pass (`Applied`, `Ready`, `Blocked`, `Error`, …) |
//! | readiness | `cuebe.node.id` | the node's id |
//! | readiness | `cuebe.readiness.verdict` | the phase the verdict gives (`Ready`, `Applied` = not ready yet, `Error` = timed out or failed) |
//! | status write | `cuebe.status.written` | `false` when the status had not changed (no request) |
//!
//! A failed reconcile, render, apply or status write has `otel.status_code = ERROR` and the
//! error in `otel.status_description`; a failed render or node also has `error.type`.
//!
//! ```
//! // Spans are ordinary `tracing` spans: any subscriber sees them under this target.
//! assert_eq!(cuebe::spans::TARGET, "cuebe::spans");
//! ```
use cuebe_core::graph::Node;
use cuebe_core::plan::{NodeResult, Plan};
use cuebe_core::status::{AbstractionStatus, ConditionType, NodePhase, NodeStatus};
use tracing::Span;
use tracing::field::Empty;

/// The target of every span of a reconcile: enable it (at INFO) to see them.
pub const TARGET: &str = "cuebe::spans";

/// The root span of one reconcile of an instance.
pub(crate) fn reconcile(kind: &str, namespace: &str, name: &str, generation: Option<i64>) -> Span {
    tracing::info_span!(
        target: "cuebe::spans",
        "reconcile",
        k8s.namespace.name = namespace,
        cuebe.instance.kind = kind,
        cuebe.instance.name = name,
        cuebe.instance.generation = generation,
        cuebe.module.ref = Empty,
        cuebe.module.resolved = Empty,
        cuebe.render.hash = Empty,
        cuebe.reconcile.outcome = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Records how the reconcile ended: the status it left (`None` for a deletion) or its error.
pub(crate) fn record_reconcile<E: std::fmt::Display>(
    span: &Span,
    status: Option<&AbstractionStatus>,
    result: Result<(), &E>,
) {
    if span.is_disabled() {
        return;
    }
    if let Some(status) = status {
        for (field, value) in [
            ("cuebe.module.ref", &status.module_ref),
            ("cuebe.module.resolved", &status.platform_ref_resolved),
            ("cuebe.render.hash", &status.render_hash),
        ] {
            if !value.is_empty() {
                span.record(field, value.as_str());
            }
        }
    }
    match result {
        Err(error) => {
            span.record("cuebe.reconcile.outcome", "Error");
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.to_string());
        }
        Ok(()) => {
            let outcome = match status {
                None => "Deleting".to_string(),
                Some(status) => status
                    .condition(ConditionType::Ready)
                    .map(|c| c.reason.clone())
                    .unwrap_or_default(),
            };
            // Empty when the pass only added the finalizer (the next pass renders).
            if !outcome.is_empty() {
                span.record("cuebe.reconcile.outcome", outcome);
            }
        }
    }
}

/// One render of the instance (a cache hit included).
pub(crate) fn render() -> Span {
    tracing::info_span!(
        target: "cuebe::spans",
        "render",
        cuebe.module.digest = Empty,
        cuebe.module.name = Empty,
        cuebe.render.hash = Empty,
        cuebe.render.nodes = Empty,
        cuebe.render.cached = Empty,
        error.r#type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Records what a render gave, and ends its span (taken by value: the span closes here, not
/// when the pass ends).
pub(crate) fn record_render<E: std::fmt::Display>(
    span: Span,
    rendered: Result<&Plan, (&'static str, &E)>,
) {
    if span.is_disabled() {
        return;
    }
    match rendered {
        Ok(plan) => {
            let graph = plan.graph();
            span.record(
                "cuebe.module.digest",
                graph.metadata.platform_ref_resolved.as_str(),
            );
            span.record("cuebe.module.name", graph.metadata.module.as_str());
            span.record("cuebe.render.hash", graph.metadata.render_hash.as_str());
            span.record("cuebe.render.nodes", graph.nodes.len());
        }
        Err((reason, error)) => {
            span.record("error.type", reason);
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.to_string());
        }
    }
}

/// `apply <node id>`: the node's read, adoption decision and write.
pub(crate) fn apply(node: &Node) -> Span {
    let object = node.object.as_ref();
    let field = |pointer: &str| {
        object
            .and_then(|o| o.pointer(pointer))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    };
    tracing::info_span!(
        target: "cuebe::spans",
        "apply",
        otel.name = format!("apply {}", node.id),
        cuebe.node.id = node.id.as_str(),
        k8s.object.kind = field("/kind"),
        k8s.object.name = field("/metadata/name"),
        cuebe.node.action = Empty,
        cuebe.node.phase = Empty,
        error.r#type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Records what the pass did with the node.
pub(crate) fn record_apply(span: &Span, node: &Node, result: &NodeResult) {
    if span.is_disabled() {
        return;
    }
    let phase = result.status.phase;
    let action = match phase {
        NodePhase::Error => "error",
        NodePhase::Blocked => "blocked",
        _ if node.is_reference() => "read",
        _ if result.writes > 0 => "apply",
        _ => "unchanged",
    };
    span.record("cuebe.node.action", action);
    span.record("cuebe.node.phase", phase_name(phase));
    if matches!(phase, NodePhase::Error | NodePhase::Blocked) {
        span.record("error.type", phase_name(phase));
        span.record("otel.status_code", "ERROR");
        span.record(
            "otel.status_description",
            result.status.last_error.as_deref().unwrap_or_default(),
        );
    }
}

/// `readiness <node id>`: the verdict on the node's live object. `parent` is the reconcile's
/// span, so apply and readiness are siblings under it.
pub(crate) fn readiness(parent: &Span, node: &Node) -> Span {
    tracing::info_span!(
        target: "cuebe::spans",
        parent: parent,
        "readiness",
        otel.name = format!("readiness {}", node.id),
        cuebe.node.id = node.id.as_str(),
        cuebe.readiness.verdict = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Records the readiness verdict.
pub(crate) fn record_readiness(span: &Span, status: &NodeStatus) {
    if span.is_disabled() {
        return;
    }
    span.record("cuebe.readiness.verdict", phase_name(status.phase));
    if status.phase == NodePhase::Error {
        span.record("otel.status_code", "ERROR");
        span.record(
            "otel.status_description",
            status.last_error.as_deref().unwrap_or_default(),
        );
    }
}

/// `status write`: the status patch. `cuebe.status.written` starts `false` and turns `true`
/// once a patch was sent.
pub(crate) fn status_write() -> Span {
    tracing::info_span!(
        target: "cuebe::spans",
        "status write",
        cuebe.status.written = false,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

fn phase_name(phase: NodePhase) -> &'static str {
    match phase {
        NodePhase::Pending => "Pending",
        NodePhase::Applied => "Applied",
        NodePhase::Ready => "Ready",
        NodePhase::Blocked => "Blocked",
        NodePhase::Error => "Error",
    }
}
