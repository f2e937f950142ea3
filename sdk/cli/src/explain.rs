//! `explain NAME`: what a live instance is, and what it is waiting for.
//!
//! Reads the instance's status and re-renders its Graph (same renderer, the cluster's
//! capabilities, the exports observed on its inventory) to print the DAG with each node's phase,
//! what it is blocked on, its health where its kind has one, the top violations and the
//! resolved module.
use std::fmt::Write as _;

use kube::api::Api;
use kube::{Client, ResourceExt};

use cuebe::abstraction::{Abstraction, discover_capabilities, observed_exports, render_input};
use cuebe::executor::Executor;
use cuebe::renderer::Renderer;
use cuebe::status::AbstractionStatus;

/// Why `explain` failed.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The instance could not be read.
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Get {
        /// Kind.
        kind: String,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The error.
        source: kube::Error,
    },
    /// The API server could not be asked which optional APIs it serves.
    #[error("discovering the cluster's capabilities: {0}")]
    Discovery(#[source] kube::Error),
}

/// The explanation of one live instance, as text: its Ready condition, the resolved module and
/// renderHash, the graph as it renders now with each node's phase and what it waits for, and
/// the top violations.
///
/// ```no_run
/// # async fn f<A: cuebe::Abstraction>(client: kube::Client) -> Result<(), cuebe_cli::explain::ExplainError> {
/// let renderer = cuebe::CueRenderer::new(A::modules());
/// let executor = cuebe::executor::SsaExecutor::new(client.clone(), A::FIELD_MANAGER);
/// let text = cuebe_cli::explain::explain::<A>(client, &renderer, &executor, "apps", "web").await?;
/// print!("{text}");
/// # Ok(()) }
/// ```
pub async fn explain<A: Abstraction>(
    client: Client,
    renderer: &dyn Renderer,
    executor: &dyn Executor,
    namespace: &str,
    name: &str,
) -> Result<String, ExplainError> {
    let api: Api<A> = Api::namespaced(client.clone(), namespace);
    let ws = api.get(name).await.map_err(|source| ExplainError::Get {
        kind: A::kind(&()).into_owned(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    })?;
    let status: AbstractionStatus = ws.abstraction_status().cloned().unwrap_or_default();
    let mut out = String::new();
    let ready = status.condition(cuebe::status::ConditionType::Ready);
    let _ = writeln!(
        out,
        "{} {namespace}/{}: Ready={} ({}) nodes {}",
        A::kind(&()),
        ws.name_any(),
        ready.map(|c| c.status.as_str()).unwrap_or("Unknown"),
        ready
            .map(|c| c.reason.as_str())
            .unwrap_or("not reconciled yet"),
        if status.ready_nodes.is_empty() {
            "-"
        } else {
            &status.ready_nodes
        },
    );
    if let Some(c) = ready.filter(|c| c.status != "True" && !c.message.is_empty()) {
        let _ = writeln!(out, "  {}", c.message);
    }
    let _ = writeln!(
        out,
        "module: {}  renderHash: {}",
        if status.platform_ref_resolved.is_empty() {
            "-"
        } else {
            &status.platform_ref_resolved
        },
        if status.render_hash.is_empty() {
            "-"
        } else {
            &status.render_hash
        },
    );

    // The graph as the operator renders it now.
    let capabilities = discover_capabilities(&client, &A::capability_probes())
        .await
        .map_err(ExplainError::Discovery)?;
    let observed = observed_exports(executor, &status.inventory).await;
    let input = render_input(&ws, capabilities, observed);
    match renderer.render(&input).await {
        Ok(plan) => {
            let graph = plan.graph();
            let _ = writeln!(out, "graph ({}):", graph.metadata.module);
            for node in &graph.nodes {
                let s = status.nodes.get(&node.id);
                let phase = s
                    .map(|s| format!("{:?}", s.phase))
                    .unwrap_or_else(|| "-".into());
                let kind = node
                    .object
                    .as_ref()
                    .and_then(|o| o.get("kind"))
                    .and_then(|k| k.as_str())
                    .unwrap_or("(pending)");
                let deps = if node.depends_on.is_empty() {
                    String::new()
                } else {
                    format!(" after {}", node.depends_on.join(", "))
                };
                let _ = writeln!(out, "  {:<16} {:<24} {:<8}{deps}", node.id, kind, phase);
                if let Some(s) = s {
                    if !s.blocked_on.is_empty() {
                        let _ = writeln!(out, "      blocked on: {}", s.blocked_on.join(", "));
                    }
                    if let Some(e) = &s.last_error {
                        let _ = writeln!(out, "      error: {e}");
                    } else if let Some(d) = &s.ready_details {
                        let _ = writeln!(out, "      {d}");
                    }
                    // Apart from readiness: a Ready CronJob whose last run failed says so here.
                    if let Some(health) = s.health {
                        let details = s.health_details.as_deref().unwrap_or_default();
                        let _ = writeln!(out, "      health: {health:?}: {details}");
                    }
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "graph: does not render: {e}");
        }
    }
    if !status.violations.is_empty() {
        let _ = writeln!(out, "violations ({}):", status.violations.len());
        for v in status.violations.iter().take(5) {
            let _ = writeln!(out, "  {v}");
        }
    }
    Ok(out)
}
