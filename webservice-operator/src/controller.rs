//! The WebService controller: compile each WebService into its Graph and execute it.
//!
//! Workflow of one reconcile (inside the `cuebe.dev/cleanup` finalizer):
//! 1. compile the spec with the cluster's capabilities and the exports observed on live objects
//!    (from the inventory); a compile error or a policy violation stops here — nothing is applied
//!    and the status says why;
//! 2. execute the Graph (see `cuebe::executor`); when a pass observes an export that a pending
//!    node waits for (the IAM role's ARN), re-render and execute again in the same reconcile;
//! 3. write the status, only when it changed.
//!
//! Children are watched by the `cuebe.dev/kind=WebService` label, so a Ready transition or a
//! hand deletion reaches the instance at once rather than at the next requeue.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cuebe::CueCompiler;
use cuebe::compiler::{Capabilities, Compiler};
use cuebe::executor::{Executor, INSTANCE_LABEL, Instance, KIND_LABEL, age_of, now};
use cuebe::graph::DeletionPolicy as NodeDeletionPolicy;
use cuebe::status::{AbstractionStatus, NodePhase};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::RwLock;

use crate::{DeletionPolicy, WebService};

/// The field manager the operator applies with.
pub const FIELD_MANAGER: &str = "cuebe-webservice";
/// The finalizer that runs deletion.
pub const FINALIZER: &str = "cuebe.dev/cleanup";

/// Why a reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Writing status failed.
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    /// Deletion is still in progress or failed.
    #[error("deleting: {0}")]
    Teardown(String),
    /// The finalizer protocol failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// Shared state of the controller.
pub struct Context {
    client: Client,
    recorder: Recorder,
    compiler: CueCompiler,
    executor: Executor,
    capabilities: RwLock<(Capabilities, Option<Instant>)>,
    /// The status last written per instance (by UID). The watch cache can lag behind our own
    /// writes; starting from what we wrote avoids repeating writes and events.
    written: std::sync::Mutex<std::collections::HashMap<String, AbstractionStatus>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context on this client with the embedded platform modules.
    pub fn new(client: Client) -> Self {
        Self {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
            executor: Executor::new(client.clone(), FIELD_MANAGER),
            compiler: CueCompiler::new(crate::platform_modules()),
            client,
            capabilities: RwLock::new((Capabilities::default(), None)),
            written: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Capabilities, rediscovered at most every 30 s (so installing the ACK or Gateway API CRDs
    /// is noticed without a restart).
    pub async fn capabilities(&self) -> Capabilities {
        {
            let cached = self.capabilities.read().await;
            if let (caps, Some(at)) = &*cached
                && at.elapsed() < Duration::from_secs(30)
            {
                return caps.clone();
            }
        }
        let caps = discover_capabilities(&self.client).await;
        *self.capabilities.write().await = (caps.clone(), Some(Instant::now()));
        caps
    }
}

/// Asks the API server which optional APIs it serves.
pub async fn discover_capabilities(client: &Client) -> Capabilities {
    let mut names = Vec::new();
    for (group, version, kind, name) in [
        (
            "iam.services.k8s.aws",
            "v1alpha1",
            "Role",
            Capabilities::ACK_IAM,
        ),
        (
            "gateway.networking.k8s.io",
            "v1",
            "HTTPRoute",
            Capabilities::GATEWAY_API,
        ),
    ] {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        if kube::discovery::pinned_kind(client, &gvk).await.is_ok() {
            names.push(name);
        }
    }
    Capabilities::from_names(names)
}

fn deletion_policy(ws: &WebService) -> NodeDeletionPolicy {
    match ws.spec.deletion_policy {
        Some(DeletionPolicy::Orphan) => NodeDeletionPolicy::Orphan,
        _ => NodeDeletionPolicy::Delete,
    }
}

/// Events for what changed between two statuses: the instance's Ready/Stalled/policy
/// transitions and each node failing or being blocked. A node turning Ready is not an event of
/// its own (it is in the status, and at hundreds of instances the writes add up).
fn transitions(previous: &AbstractionStatus, current: &AbstractionStatus) -> Vec<KubeEvent> {
    let event = |type_: EventType, reason: &str, note: Option<String>, action: &str| KubeEvent {
        type_,
        reason: reason.to_string(),
        note,
        action: action.to_string(),
        secondary: None,
    };
    let flipped = |t: &str, to: &str| {
        let now = current.condition(t).map(|c| c.status.as_str());
        let before = previous.condition(t).map(|c| c.status.as_str());
        now == Some(to) && before != Some(to)
    };
    let message = |t: &str| current.condition(t).map(|c| c.message.clone());
    let mut events = Vec::new();
    if flipped("Rendered", "False") {
        events.push(event(
            EventType::Warning,
            "RenderFailed",
            message("Rendered"),
            "Render",
        ));
    }
    if flipped("PolicyPassed", "False") {
        events.push(event(
            EventType::Warning,
            "PolicyViolation",
            message("PolicyPassed"),
            "Render",
        ));
    }
    for (id, node) in &current.nodes {
        if previous.nodes.get(id).map(|n| n.phase) == Some(node.phase) {
            continue;
        }
        match node.phase {
            NodePhase::Error | NodePhase::Blocked => events.push(event(
                EventType::Warning,
                if node.phase == NodePhase::Error {
                    "NodeFailed"
                } else {
                    "NodeBlocked"
                },
                Some(format!(
                    "{id}: {}",
                    node.last_error.clone().unwrap_or_default()
                )),
                "Apply",
            )),
            _ => {}
        }
    }
    if flipped("Ready", "True") {
        events.push(event(
            EventType::Normal,
            "Ready",
            message("Ready"),
            "Reconcile",
        ));
    }
    if flipped("Stalled", "True") {
        events.push(event(
            EventType::Warning,
            "Stalled",
            message("Stalled"),
            "Reconcile",
        ));
    }
    events
}

/// The latest known status of an instance: what we last wrote, unless the cache is newer.
fn known_status(ctx: &Context, ws: &WebService) -> AbstractionStatus {
    let uid = ws.metadata.uid.clone().unwrap_or_default();
    let written = ctx
        .written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match (written.get(&uid), &ws.status) {
        (Some(ours), Some(cached)) if cached.observed_generation > ours.observed_generation => {
            cached.clone()
        }
        (Some(ours), _) => ours.clone(),
        (None, cached) => cached.clone().unwrap_or_default(),
    }
}

async fn write_status(
    ctx: &Context,
    api: &Api<WebService>,
    ws: &WebService,
    status: &AbstractionStatus,
) -> Result<(), ReconcileError> {
    let previous = known_status(ctx, ws);
    if &previous == status {
        return Ok(());
    }
    let reference = ws.object_ref(&());
    for event in transitions(&previous, status) {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "could not publish an event");
        }
    }
    let body = serde_json::json!({
        "apiVersion": WebService::api_version(&()),
        "kind": WebService::kind(&()),
        "status": status,
    });
    api.patch_status(
        &ws.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(ReconcileError::Status)?;
    ctx.written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(ws.metadata.uid.clone().unwrap_or_default(), status.clone());
    Ok(())
}

/// The instance cannot proceed until its spec or module changes: `failed` (Rendered or
/// PolicyPassed) is False, Ready and Progressing are False and Stalled is True, all with `reason`.
fn stop_before_apply(
    status: &mut AbstractionStatus,
    failed: &str,
    reason: &str,
    message: &str,
    next_step: &str,
    generation: Option<i64>,
    now: &str,
) {
    status.set_condition(failed, false, reason, message, generation, now);
    status.set_condition("Ready", false, reason, message, generation, now);
    status.set_condition("Progressing", false, reason, next_step, generation, now);
    status.set_condition("Stalled", true, reason, message, generation, now);
}

async fn apply(ws: Arc<WebService>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = ws.namespace().unwrap_or_else(|| "default".into());
    let api: Api<WebService> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = ws.metadata.generation;
    let now = now();
    let previous = known_status(&ctx, &ws);
    let mut status = previous.clone();
    status.observed_generation = generation;
    let capabilities = ctx.capabilities().await;
    let instance = Instance {
        kind: "WebService".into(),
        name: ws.name_any(),
        namespace: ns.clone(),
        generation,
    };

    // Observed exports come from the live objects of the inventory.
    let mut observed: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut last_exec = None;
    for _round in 0..3 {
        let input = crate::render::compile_input(&ws, capabilities.clone(), observed.clone());
        let graph = match ctx.compiler.compile(&input).await {
            Ok(g) => g,
            Err(e) => {
                stop_before_apply(
                    &mut status,
                    "Rendered",
                    e.reason(),
                    &e.to_string(),
                    "fix the spec or the module",
                    generation,
                    &now,
                );
                write_status(&ctx, &api, &ws, &status).await?;
                return Ok(Action::await_change());
            }
        };
        status.platform_ref_resolved = graph.metadata.platform_ref_resolved.clone();
        status.render_hash = graph.metadata.render_hash.clone();
        status.violations = graph.violations.clone();
        status.set_condition(
            "Rendered",
            true,
            "Rendered",
            format!("{} nodes", graph.nodes.len()),
            generation,
            &now,
        );
        if graph.has_blocking_violations() {
            let message = graph
                .violations
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            stop_before_apply(
                &mut status,
                "PolicyPassed",
                "PolicyViolation",
                &message,
                "nothing is applied while policy fails",
                generation,
                &now,
            );
            write_status(&ctx, &api, &ws, &status).await?;
            return Ok(Action::await_change());
        }
        status.set_condition("PolicyPassed", true, "PolicyPassed", "", generation, &now);

        // Read the exports a pending node waits for from the objects applied so far.
        let mut newly_observed = false;
        for export in graph.exports.iter().filter(|e| e.value.is_none()) {
            let live = match last_exec
                .as_ref()
                .and_then(|o: &cuebe::executor::Outcome| o.live.get(&export.node).cloned())
            {
                Some(l) => Some(l),
                None => match status.inventory_entry(&export.node) {
                    Some(entry) => ctx.executor.live(entry).await.ok().flatten(),
                    None => None,
                },
            };
            if let Some(live) = live
                && !observed.contains_key(&export.node)
            {
                observed.insert(export.node.clone(), live);
                newly_observed = true;
            }
        }
        if newly_observed && last_exec.is_none() {
            // Re-render with the values before applying anything.
            continue;
        }
        let outcome = ctx
            .executor
            .execute(&instance, &graph, &status, &now, &|t| age_of(t))
            .await;
        status.nodes = outcome.nodes.clone();
        status.inventory = outcome.inventory.clone();
        let pending_export = graph.nodes.iter().any(|n| n.is_pending());
        let export_now_visible = graph.exports.iter().filter(|e| e.value.is_none()).any(|e| {
            outcome
                .live
                .get(&e.node)
                .and_then(|o| e.path.split('.').try_fold(o, |cur, k| cur.get(k)))
                .is_some_and(|v| !v.is_null())
        });
        last_exec = Some(outcome);
        if pending_export && export_now_visible {
            if let Some(o) = &last_exec {
                for e in &graph.exports {
                    if let Some(live) = o.live.get(&e.node) {
                        observed.insert(e.node.clone(), live.clone());
                    }
                }
            }
            continue;
        }
        break;
    }
    let Some(outcome) = last_exec else {
        write_status(&ctx, &api, &ws, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    };
    let total = status.nodes.len();
    let ready = status
        .nodes
        .values()
        .filter(|n| n.phase == NodePhase::Ready)
        .count();
    status.ready_nodes = format!("{ready}/{total}");
    let failing = |phase: NodePhase| -> Vec<String> {
        status
            .nodes
            .iter()
            .filter(|(_, n)| n.phase == phase)
            .map(|(id, n)| format!("{id}: {}", n.last_error.clone().unwrap_or_default()))
            .collect()
    };
    let blocked = failing(NodePhase::Blocked);
    let retrying = failing(NodePhase::Error);
    if let Some(stalled) = &outcome.stalled {
        status.set_condition(
            "Ready",
            false,
            "NodeFailed",
            stalled.clone(),
            generation,
            &now,
        );
        status.set_condition(
            "Progressing",
            false,
            "NodeFailed",
            stalled.clone(),
            generation,
            &now,
        );
        status.set_condition(
            "Stalled",
            true,
            "NodeFailed",
            stalled.clone(),
            generation,
            &now,
        );
    } else if outcome.ready {
        status.set_condition(
            "Ready",
            true,
            "AllNodesReady",
            format!("{ready}/{total} nodes ready"),
            generation,
            &now,
        );
        status.set_condition("Progressing", false, "AllNodesReady", "", generation, &now);
        status.clear_condition("Stalled");
    } else if !retrying.is_empty() {
        // API errors (a full service range, a webhook outage) are retried, not terminal.
        let message = retrying.join("; ");
        status.set_condition(
            "Ready",
            false,
            "ApplyFailed",
            message.clone(),
            generation,
            &now,
        );
        status.set_condition("Progressing", true, "Retrying", message, generation, &now);
        status.clear_condition("Stalled");
    } else if !blocked.is_empty() {
        status.set_condition(
            "Ready",
            false,
            "NodeBlocked",
            blocked.join("; "),
            generation,
            &now,
        );
        status.set_condition(
            "Progressing",
            false,
            "NodeBlocked",
            blocked.join("; "),
            generation,
            &now,
        );
        status.clear_condition("Stalled");
    } else {
        let waiting: Vec<String> = status
            .nodes
            .iter()
            .filter(|(_, n)| n.phase != NodePhase::Ready)
            .map(|(id, n)| format!("{id}: {}", n.ready_details.clone().unwrap_or_default()))
            .collect();
        status.set_condition(
            "Ready",
            false,
            "Progressing",
            waiting.join("; "),
            generation,
            &now,
        );
        status.set_condition(
            "Progressing",
            true,
            "Progressing",
            format!("{ready}/{total} nodes ready"),
            generation,
            &now,
        );
        status.clear_condition("Stalled");
    }
    write_status(&ctx, &api, &ws, &status).await?;
    Ok(if outcome.ready {
        Action::requeue(Duration::from_secs(300))
    } else if outcome.stalled.is_some() {
        Action::requeue(Duration::from_secs(60))
    } else {
        Action::requeue(Duration::from_secs(5))
    })
}

async fn cleanup(ws: Arc<WebService>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let inventory = ws
        .status
        .as_ref()
        .map(|s| s.inventory.clone())
        .unwrap_or_default();
    let done = ctx
        .executor
        .teardown(&inventory, deletion_policy(&ws))
        .await
        .map_err(|e| ReconcileError::Teardown(e.to_string()))?;
    if done {
        Ok(Action::await_change())
    } else {
        // Returning an error keeps the finalizer until every object is gone.
        Err(ReconcileError::Teardown(
            "waiting for managed objects to be deleted".into(),
        ))
    }
}

async fn reconcile(ws: Arc<WebService>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = ws.namespace().unwrap_or_else(|| "default".into());
    let api: Api<WebService> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, ws, |event| async {
        match event {
            Event::Apply(ws) => apply(ws, ctx.clone()).await,
            Event::Cleanup(ws) => cleanup(ws, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer(other.to_string()),
    })
}

fn error_policy(_ws: Arc<WebService>, error: &ReconcileError, _ctx: Arc<Context>) -> Action {
    match error {
        ReconcileError::Teardown(_) => Action::requeue(Duration::from_millis(500)),
        _ => {
            tracing::warn!(%error, "reconcile failed");
            Action::requeue(Duration::from_secs(2))
        }
    }
}

fn owner_of(obj: &DynamicObject) -> Option<ObjectRef<WebService>> {
    let labels = obj.metadata.labels.as_ref()?;
    if labels.get(KIND_LABEL).map(String::as_str) != Some("WebService") {
        return None;
    }
    let name = labels.get(INSTANCE_LABEL)?;
    Some(ObjectRef::new(name).within(obj.metadata.namespace.as_deref().unwrap_or("default")))
}

/// Runs the controller until the stream ends (on SIGINT/SIGTERM when `shutdown_on_signal`).
/// With `namespace`, it watches only that namespace (tests run one controller per namespace).
pub async fn run(client: Client, namespace: Option<String>, shutdown_on_signal: bool) {
    let ctx = Arc::new(Context::new(client.clone()));
    let capabilities = ctx.capabilities().await;
    tracing::info!(?capabilities, "starting the WebService controller");
    let api: Api<WebService> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let children = watcher::Config::default().labels(&format!("{KIND_LABEL}=WebService"));
    let mut kinds = vec![
        ("apps", "v1", "Deployment"),
        ("", "v1", "ServiceAccount"),
        ("", "v1", "Service"),
        ("autoscaling", "v2", "HorizontalPodAutoscaler"),
        ("policy", "v1", "PodDisruptionBudget"),
        ("networking.k8s.io", "v1", "NetworkPolicy"),
        ("networking.k8s.io", "v1", "Ingress"),
    ];
    if capabilities.has(Capabilities::ACK_IAM) {
        kinds.push(("iam.services.k8s.aws", "v1alpha1", "Role"));
        kinds.push(("iam.services.k8s.aws", "v1alpha1", "Policy"));
    }
    if capabilities.has(Capabilities::GATEWAY_API) {
        kinds.push(("gateway.networking.k8s.io", "v1", "HTTPRoute"));
    }
    let mut controller = Controller::new(api, watcher::Config::default());
    if shutdown_on_signal {
        controller = controller.shutdown_on_signal();
    }
    for (group, version, kind) in kinds {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let child_api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        controller = controller.watches_with(child_api, ar, children.clone(), |obj| owner_of(&obj));
    }
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile error");
            }
        })
        .await;
}
