//! What applying an instance would change in the cluster, without changing anything: the
//! `diff` subcommand.
//!
//! The instance is rendered as the controller would render it (the cluster's capabilities, the
//! exports observed on the live instance's inventory), then each rendered object is sent as a
//! server-side apply with `dryRun=All` under the operator's field manager. The API server's
//! answer (its defaults and other managers' fields included) is compared with the live object,
//! so only real changes show. Inventory entries whose nodes left the graph are what the next
//! pass would prune. Nothing is written.
use std::collections::{BTreeMap, BTreeSet};

use cuebe::plan::prune_plan;
use cuebe::status::NodePhase;
use std::fmt::Write as _;

use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use cuebe::abstraction::{Abstraction, instance_of, observed_exports, render_input};
use cuebe::executor::SsaExecutor;
use cuebe::graph::Violation;
use cuebe::inventory::InventoryMode;
use cuebe::lifecycle::DeletionPolicy;
use cuebe::renderer::{RenderError, Renderer};
use cuebe::status::AbstractionStatus;

/// Why a diff could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The live instance could not be read.
    #[error("reading the live instance: {0}")]
    Instance(#[source] kube::Error),
    /// The API server could not be asked which optional APIs it serves.
    #[error("discovering the cluster's capabilities: {0}")]
    Discovery(#[source] kube::Error),
    /// The instance did not render.
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// What would happen to one node's object.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeChange {
    /// It does not exist: it would be created.
    Create,
    /// These fields would change.
    Update(Vec<FieldChange>),
    /// Nothing would change.
    Unchanged,
    /// The node waits for these exports: nothing would be applied yet.
    Pending(Vec<String>),
    /// Its node left the graph: the object would be deleted.
    Prune,
    /// Its node left the graph with `deletionPolicy: Orphan`: it would be let go, not deleted.
    Release,
    /// The dry run failed (the message says why, e.g. a kind the cluster does not serve).
    Failed(String),
}

/// One field that would change; `None` is an absent field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    /// Dotted path, e.g. `spec.replicas` or `metadata.labels["app.kubernetes.io/name"]`.
    pub path: String,
    /// The live value.
    pub before: Option<Value>,
    /// The value after the apply.
    pub after: Option<Value>,
}

/// One object of the diff.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffEntry {
    /// The node id.
    pub node_id: String,
    /// The object's kind (empty while pending).
    pub kind: String,
    /// The object's name (empty while pending).
    pub name: String,
    /// What would happen to it.
    pub change: NodeChange,
    /// It exists but the instance does not manage it yet: the apply needs it adopted
    /// (`spec.adopt`), or it stays Blocked.
    pub needs_adoption: bool,
}

/// What applying an instance would change.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffReport {
    /// `Kind namespace/name` of the instance.
    pub instance: String,
    /// The module that rendered it (`name@version`).
    pub module: String,
    /// Policy violations; when one is an Error nothing would be applied and `entries` is empty.
    pub violations: Vec<Violation>,
    /// One entry per node, then one per object that would be pruned or released.
    pub entries: Vec<DiffEntry>,
    /// Why objects that left the graph would not be pruned by this apply (the executor prunes
    /// only from a pass in which every node is applied).
    pub prune_held_back: Option<String>,
}

impl DiffReport {
    /// Whether applying would change anything in the cluster.
    pub fn has_changes(&self) -> bool {
        self.entries.iter().any(|e| {
            matches!(
                e.change,
                NodeChange::Create
                    | NodeChange::Update(_)
                    | NodeChange::Prune
                    | NodeChange::Release
            )
        })
    }

    /// The report as text, one object a line, changed fields indented below it.
    ///
    /// ```
    /// use cuebe_cli::diff::{DiffEntry, DiffReport, FieldChange, NodeChange};
    /// let report = DiffReport {
    ///     instance: "WebService apps/web".into(),
    ///     module: "webservice@1.0.0".into(),
    ///     violations: vec![],
    ///     entries: vec![DiffEntry {
    ///         node_id: "deployment".into(),
    ///         kind: "Deployment".into(),
    ///         name: "web".into(),
    ///         change: NodeChange::Update(vec![FieldChange {
    ///             path: "spec.replicas".into(),
    ///             before: Some(2.into()),
    ///             after: Some(3.into()),
    ///         }]),
    ///         needs_adoption: false,
    ///     }],
    ///     prune_held_back: None,
    /// };
    /// assert!(report.to_text().contains("    spec.replicas: 2 -> 3\n"));
    /// assert!(report.has_changes());
    /// ```
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} (module {})", self.instance, self.module);
        for v in &self.violations {
            let _ = writeln!(out, "  violation: {v}");
        }
        let show = |v: &Option<Value>| match v {
            Some(v) => v.to_string(),
            None => "(absent)".into(),
        };
        for e in &self.entries {
            let what = match &e.change {
                NodeChange::Create => "create".to_string(),
                NodeChange::Update(changes) => format!("update ({} fields)", changes.len()),
                NodeChange::Unchanged => "unchanged".to_string(),
                NodeChange::Pending(on) => format!("pending on {}", on.join(", ")),
                NodeChange::Prune => "prune (delete: left the graph)".to_string(),
                NodeChange::Release => {
                    "release (left the graph, deletionPolicy Orphan)".to_string()
                }
                NodeChange::Failed(message) => format!("error: {message}"),
            };
            let object = format!("{} {}", e.kind, e.name);
            let _ = writeln!(out, "  {:<16} {:<40} {what}", e.node_id, object.trim());
            if e.needs_adoption {
                let _ = writeln!(
                    out,
                    "    exists but is not managed by this instance: list it in spec.adopt, or the node stays Blocked"
                );
            }
            if let NodeChange::Update(changes) = &e.change {
                for c in changes {
                    let _ = writeln!(
                        out,
                        "    {}: {} -> {}",
                        c.path,
                        show(&c.before),
                        show(&c.after)
                    );
                }
            }
        }
        if let Some(reason) = &self.prune_held_back {
            let _ = writeln!(out, "  objects that left the graph stay for now: {reason}");
        }
        let count = |wanted: fn(&NodeChange) -> bool| {
            self.entries.iter().filter(|e| wanted(&e.change)).count()
        };
        let _ = writeln!(
            out,
            "{} to create, {} to update, {} to prune or release, {} unchanged",
            count(|c| matches!(c, NodeChange::Create)),
            count(|c| matches!(c, NodeChange::Update(_))),
            count(|c| matches!(c, NodeChange::Prune | NodeChange::Release)),
            count(|c| matches!(c, NodeChange::Unchanged)),
        );
        out
    }
}

/// Renders `desired` (the instance as the user would apply it; its namespace set) and asks the
/// API server what applying it would change. Writes nothing. `module` is a published module to
/// render with instead of the embedded one (what `platformRef.oci`, `platformRef.git` or
/// `--module` names).
///
/// ```no_run
/// # async fn f<A: cuebe::Abstraction>(client: kube::Client, desired: A) -> Result<(), cuebe_cli::diff::DiffError> {
/// let renderer = cuebe::CueRenderer::new(A::modules());
/// let executor = cuebe::executor::SsaExecutor::new(client.clone(), A::FIELD_MANAGER);
/// let report = cuebe_cli::diff::diff::<A>(client, &renderer, &executor, &desired, None).await?;
/// print!("{}", report.to_text());
/// # Ok(()) }
/// ```
pub async fn diff<A: Abstraction>(
    client: Client,
    renderer: &dyn Renderer,
    executor: &SsaExecutor,
    desired: &A,
    module: Option<std::sync::Arc<cuebe::ModuleSource>>,
) -> Result<DiffReport, DiffError> {
    let namespace = desired.namespace().unwrap_or_else(|| "default".into());
    let api: Api<A> = Api::namespaced(client.clone(), &namespace);
    let live = api
        .get_opt(&desired.name_any())
        .await
        .map_err(DiffError::Instance)?;
    let status: AbstractionStatus = live
        .as_ref()
        .and_then(|l| l.abstraction_status().cloned())
        .unwrap_or_default();
    // The executor's discovery cache: the groups asked for here serve its previews too.
    let capabilities = executor
        .discovery()
        .capabilities(&client, &A::capability_probes())
        .await
        .map_err(DiffError::Discovery)?;
    let observed = observed_exports(executor, &status.inventory).await;
    let plan = renderer
        .render(&{
            let mut input = render_input(desired, capabilities, observed);
            input.module = module;
            input
        })
        .await?;
    let graph = plan.graph();
    let mut report = DiffReport {
        instance: format!("{} {namespace}/{}", A::kind(&()), desired.name_any()),
        module: graph.metadata.module.clone(),
        violations: graph.violations.clone(),
        entries: Vec::new(),
        prune_held_back: None,
    };
    if graph.has_blocking_violations() {
        return Ok(report);
    }
    let instance = instance_of(desired);
    for node in &graph.nodes {
        let Some(object) = &node.object else {
            report.entries.push(DiffEntry {
                node_id: node.id.clone(),
                kind: String::new(),
                name: String::new(),
                change: NodeChange::Pending(node.pending_on.clone()),
                needs_adoption: false,
            });
            continue;
        };
        let text = |p: &str| {
            object
                .pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let managed = status
            .inventory_entry(&node.id)
            .is_some_and(|e| e.mode != InventoryMode::Orphaned);
        let (change, needs_adoption) = match executor.preview(&instance, object).await {
            Ok(preview) => match preview.live {
                None => (NodeChange::Create, false),
                Some(live) => {
                    let mut changes = Vec::new();
                    field_changes(
                        "",
                        Some(&comparable(live)),
                        Some(&comparable(preview.applied)),
                        &mut changes,
                    );
                    let change = if changes.is_empty() {
                        NodeChange::Unchanged
                    } else {
                        NodeChange::Update(changes)
                    };
                    (change, !managed)
                }
            },
            Err(e) => (NodeChange::Failed(e.to_string()), false),
        };
        report.entries.push(DiffEntry {
            node_id: node.id.clone(),
            kind: text("/kind"),
            name: text("/metadata/name"),
            change,
            needs_adoption,
        });
    }
    // The executor's own prune rule: only a pass in which every node would be applied prunes.
    // Predict each node's state from the preview (pending, failed, or blocked on adoption).
    let predicted: BTreeMap<&str, NodePhase> = report
        .entries
        .iter()
        .map(|e| {
            let phase = match &e.change {
                NodeChange::Pending(_) => NodePhase::Pending,
                NodeChange::Failed(_) => NodePhase::Error,
                _ if e.needs_adoption => NodePhase::Blocked,
                _ => NodePhase::Applied,
            };
            (e.node_id.as_str(), phase)
        })
        .collect();
    let ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
    // The instance's prune threshold, as the executor reads it (the guard's message says what
    // the apply would leave in place).
    let prune = prune_plan(
        &ids,
        &cuebe::plan::starting_inventory(&plan, &status.inventory),
        |id| predicted.get(id).copied(),
        &cuebe::instance::PruneThreshold::of(&instance),
    );
    report.prune_held_back = prune.held_back;
    for (entry, policy) in prune.entries {
        report.entries.push(DiffEntry {
            node_id: entry.node_id.clone(),
            kind: entry.kind.clone(),
            name: entry.name.clone(),
            change: match policy {
                DeletionPolicy::Orphan => NodeChange::Release,
                DeletionPolicy::Delete => NodeChange::Prune,
            },
            needs_adoption: false,
        });
    }
    Ok(report)
}

/// The object without what the API server maintains on every write.
fn comparable(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "managedFields",
                "resourceVersion",
                "generation",
                "uid",
                "creationTimestamp",
                "selfLink",
            ] {
                meta.remove(field);
            }
        }
    }
    object
}

/// Appends the differences between `before` and `after` under `path`. Objects are compared
/// field by field; lists and scalars as a whole.
/// The dotted paths at which `before` and `after` differ, as `diff` names them (for
/// `rollout plan`, which compares two renders rather than a render and a live object).
pub(crate) fn field_paths(
    path: &str,
    before: Option<&Value>,
    after: Option<&Value>,
    out: &mut Vec<String>,
) {
    let mut changes = Vec::new();
    field_changes(path, before, after, &mut changes);
    out.extend(changes.into_iter().map(|c| c.path));
}

fn field_changes(
    path: &str,
    before: Option<&Value>,
    after: Option<&Value>,
    out: &mut Vec<FieldChange>,
) {
    match (before, after) {
        (Some(Value::Object(b)), Some(Value::Object(a))) => {
            let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for key in keys {
                let child = if key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    }
                } else {
                    format!("{path}[{}]", Value::String(key.clone()))
                };
                field_changes(&child, b.get(key), a.get(key), out);
            }
        }
        (b, a) if b != a => out.push(FieldChange {
            path: path.to_string(),
            before: b.cloned(),
            after: a.cloned(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_added_and_removed_fields_are_listed_by_path() {
        let before = json!({"spec": {"replicas": 2, "old": true}, "metadata": {"labels": {"app.kubernetes.io/name": "web"}}});
        let after = json!({"spec": {"replicas": 3, "new": [1]}, "metadata": {"labels": {"app.kubernetes.io/name": "web2"}}});
        let mut changes = Vec::new();
        field_changes("", Some(&before), Some(&after), &mut changes);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                r#"metadata.labels["app.kubernetes.io/name"]"#,
                "spec.new",
                "spec.old",
                "spec.replicas"
            ]
        );
        assert_eq!(changes[1].before, None);
        assert_eq!(changes[2].after, None);
    }

    #[test]
    fn server_maintained_fields_do_not_count() {
        let live = json!({"metadata": {"name": "web", "resourceVersion": "1", "generation": 1}, "status": {"x": 1}});
        let applied = json!({"metadata": {"name": "web", "resourceVersion": "2", "generation": 2}});
        let mut changes = Vec::new();
        field_changes(
            "",
            Some(&comparable(live)),
            Some(&comparable(applied)),
            &mut changes,
        );
        assert!(changes.is_empty(), "{changes:?}");
    }
}
