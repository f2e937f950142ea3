//! The standard status every abstraction embeds: conditions, per-node state, violations and the
//! inventory of what the instance manages.
//!
//! kstatus-compatible: `observedGeneration`, and conditions `Rendered`, `PolicyPassed`,
//! `Progressing`, `Ready`, plus `Stalled` on a terminal failure, so
//! `kubectl wait --for=condition=Ready` works.
//!
//! [`summarize`] is the condition matrix: a pure function from what a pass did to the
//! conditions; [`transitions`] says which events a status change is worth. The controller only
//! writes what they return.
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::graph::Violation;
use crate::inventory::InventoryEntry;
use crate::plan::Outcome;

/// The condition types of the standard status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// The spec rendered into a Graph (False: the spec or the module is wrong).
    Rendered,
    /// No policy violation blocks the apply.
    PolicyPassed,
    /// The operator is still working towards Ready.
    Progressing,
    /// Every node is Ready.
    Ready,
    /// The instance cannot proceed until its spec, its module or the cluster changes.
    Stalled,
    /// The published module `spec.platformRef.oci` names was fetched and its digests checked
    /// (only set for published modules).
    ModuleResolved,
    /// The published module passed the operator's verification policy (only set for
    /// published modules; `False`/`Unverified` when no policy is configured).
    ModuleVerified,
}

impl ConditionType {
    /// The type as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rendered => "Rendered",
            Self::PolicyPassed => "PolicyPassed",
            Self::Progressing => "Progressing",
            Self::Ready => "Ready",
            Self::Stalled => "Stalled",
            Self::ModuleResolved => "ModuleResolved",
            Self::ModuleVerified => "ModuleVerified",
        }
    }
}

impl std::fmt::Display for ConditionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Rendered`, `PolicyPassed`, `Progressing`, `Ready` or `Stalled`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(default)]
    pub last_transition_time: String,
    /// The generation this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Where a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NodePhase {
    /// Waiting for dependencies or exports.
    Pending,
    /// Applied; its readiness gate has not passed yet.
    Applied,
    /// Its readiness gate passed.
    Ready,
    /// Cannot proceed without a change (conflict under `Fail`, policy).
    Blocked,
    /// Failed: apply error, readiness timeout or terminal failure.
    Error,
}

/// How a node's object is doing apart from readiness (a CronJob's last run). Health never
/// gates readiness: an unhealthy node can be Ready, and the instance stays Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Health {
    /// Its last outcome was good (a CronJob's last run succeeded, or it has not run yet).
    Healthy,
    /// Its last outcome was bad (a CronJob's last run did not succeed).
    Unhealthy,
    /// Not judged yet (a CronJob's first run is in progress).
    Unknown,
}

/// The state of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Where the node is.
    pub phase: NodePhase,
    /// What it waits for: node ids or `export:<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_on: Vec<String>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the readiness gate says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_details: Option<String>,
    /// When the node was first applied without being ready (for predicate timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<String>,
    /// How its object is doing apart from readiness, for kinds that have a notion of it (a
    /// CronJob: its last run); absent for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Why it is (un)healthy, e.g. `the last run (scheduled …) did not succeed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_details: Option<String>,
}

impl NodeStatus {
    fn with(phase: NodePhase) -> Self {
        Self {
            phase,
            blocked_on: vec![],
            last_error: None,
            ready_details: None,
            waiting_since: None,
            health: None,
            health_details: None,
        }
    }

    /// Waiting for `blocked_on` (node ids, or `export:<name>`), with a human reason.
    pub fn pending(blocked_on: Vec<String>, details: impl Into<String>) -> Self {
        Self {
            blocked_on,
            ready_details: Some(details.into()),
            ..Self::with(NodePhase::Pending)
        }
    }

    /// Applied, its readiness gate not passed yet, waiting since `since` (RFC 3339).
    pub fn applied(details: impl Into<String>, since: impl Into<String>) -> Self {
        Self {
            ready_details: Some(details.into()),
            waiting_since: Some(since.into()),
            ..Self::with(NodePhase::Applied)
        }
    }

    /// Its readiness gate passed.
    pub fn ready(details: impl Into<String>) -> Self {
        Self {
            ready_details: Some(details.into()),
            ..Self::with(NodePhase::Ready)
        }
    }

    /// Cannot proceed without a change; `error` says why, `details` what was (not) done.
    pub fn blocked(error: impl Into<String>, details: Option<String>) -> Self {
        Self {
            last_error: Some(error.into()),
            ready_details: details,
            ..Self::with(NodePhase::Blocked)
        }
    }

    /// Failed with `error`.
    pub fn error(error: impl Into<String>) -> Self {
        Self {
            last_error: Some(error.into()),
            ..Self::with(NodePhase::Error)
        }
    }

    /// Adds what the readiness gate says.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.ready_details = Some(details.into());
        self
    }

    /// Adds since when the node waits (for timeouts).
    pub fn waiting_since(mut self, since: impl Into<String>) -> Self {
        self.waiting_since = Some(since.into());
        self
    }

    /// Adds how its object is doing apart from readiness.
    pub fn with_health(mut self, health: Health, details: impl Into<String>) -> Self {
        self.health = Some(health);
        self.health_details = Some(details.into());
        self
    }
}

/// The status an abstraction's custom resource embeds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbstractionStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus-compatible conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Per-node state, by node id.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeStatus>,
    /// `ready/total` nodes, for `kubectl get`.
    #[serde(default)]
    pub ready_nodes: String,
    /// Policy violations (nothing is applied while any blocks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    /// What the instance manages.
    #[serde(default)]
    pub inventory: Vec<InventoryEntry>,
    /// Digest of the platform module that rendered the last graph.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub platform_ref_resolved: String,
    /// `renderHash` of the last graph.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub render_hash: String,
    /// The module reference the last graph was rendered with, as one string (`embedded:1.0.0`,
    /// `oci://…@sha256:…`, `git+…`): for an instance on a channel, the module the channel's
    /// rollout gave it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module_ref: String,
    /// The `PlatformChannel` the instance follows, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// The last few renders the instance applied, newest first (at most 5): going
    /// back to one re-renders it from its module and the spec, and an equal `renderHash` shows
    /// it is the same Graph.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<Revision>,
}

/// How many revisions an instance's status keeps: enough to see a rollout and its rollback,
/// small enough for etcd.
pub const REVISIONS: usize = 5;

/// One render an instance applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// The module it rendered with (as `moduleRef`).
    pub module_ref: String,
    /// The resolved module (as `platformRefResolved`).
    pub resolved: String,
    /// The Graph's `renderHash`.
    pub render_hash: String,
    /// When it was first applied.
    pub applied_at: String,
    /// How it went: the `Ready` condition's reason when it was last seen (`Ready`, `Stalled`,
    /// `PolicyViolation`, …).
    pub outcome: String,
}

impl AbstractionStatus {
    /// Records the render this pass applied in [`AbstractionStatus::revisions`]: a new entry
    /// when the module or the render hash changed, otherwise the latest entry's outcome.
    ///
    /// ```
    /// use cuebe_core::status::AbstractionStatus;
    /// let mut s = AbstractionStatus::default();
    /// s.record_revision("embedded:1.0.0", "sha256:a", "h1", "Progressing", "t0");
    /// s.record_revision("embedded:1.0.0", "sha256:a", "h1", "Ready", "t1");
    /// s.record_revision("embedded:1.1.0", "sha256:b", "h2", "Ready", "t2");
    /// assert_eq!(s.revisions.len(), 2);
    /// assert_eq!((s.revisions[1].outcome.as_str(), s.revisions[1].applied_at.as_str()), ("Ready", "t0"));
    /// ```
    pub fn record_revision(
        &mut self,
        module_ref: &str,
        resolved: &str,
        render_hash: &str,
        outcome: &str,
        now: &str,
    ) {
        match self.revisions.first_mut() {
            Some(latest) if latest.render_hash == render_hash && latest.resolved == resolved => {
                latest.outcome = outcome.to_string();
                latest.module_ref = module_ref.to_string();
            }
            _ => {
                self.revisions.insert(
                    0,
                    Revision {
                        module_ref: module_ref.to_string(),
                        resolved: resolved.to_string(),
                        render_hash: render_hash.to_string(),
                        applied_at: now.to_string(),
                        outcome: outcome.to_string(),
                    },
                );
                self.revisions.truncate(REVISIONS);
            }
        }
    }

    /// The condition of this type.
    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_.as_str())
    }

    /// Sets a condition, keeping `lastTransitionTime` when the status does not change.
    pub fn set_condition(
        &mut self,
        type_: ConditionType,
        status: bool,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
        now: &str,
    ) {
        let status = if status { "True" } else { "False" }.to_string();
        let message = message.into();
        let type_ = type_.as_str();
        let previous = self.conditions.iter().position(|c| c.type_ == type_);
        let last_transition_time = match previous.map(|i| &self.conditions[i]) {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => now.to_string(),
        };
        let condition = Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time,
            observed_generation: generation,
        };
        match previous {
            Some(i) => self.conditions[i] = condition,
            None => self.conditions.push(condition),
        }
    }

    /// Drops a condition.
    pub fn clear_condition(&mut self, type_: ConditionType) {
        self.conditions.retain(|c| c.type_ != type_.as_str());
    }

    /// The inventory entry of a node.
    pub fn inventory_entry(&self, node_id: &str) -> Option<&InventoryEntry> {
        self.inventory.iter().find(|e| e.node_id == node_id)
    }

    /// True when the `Ready` condition is True.
    pub fn is_ready(&self) -> bool {
        self.condition(ConditionType::Ready)
            .is_some_and(|c| c.status == "True")
    }
}

/// What a pass amounted to, for the instance as a whole (the controller picks its requeue from
/// it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassVerdict {
    /// Every node is Ready.
    Ready,
    /// A node failed terminally; retrying will not help.
    Stalled,
    /// An API call failed; the next pass retries it.
    Retrying,
    /// A node cannot proceed without a change (a conflict, a refused adoption).
    Blocked,
    /// Nodes are on their way to Ready.
    Progressing,
    /// Every node is applied, but objects that left the graph wait for the fleet prune guard.
    PrunePaused,
}

impl AbstractionStatus {
    /// The instance cannot proceed until its spec or module changes: `failed` (Rendered or
    /// PolicyPassed) is False, Ready and Progressing are False and Stalled is True, all with
    /// `reason`.
    pub fn stop_before_apply(
        &mut self,
        failed: ConditionType,
        reason: &str,
        message: &str,
        next_step: &str,
        generation: Option<i64>,
        now: &str,
    ) {
        // Nothing is applied this pass: an error a node met in an earlier pass is no longer a
        // fact about it (it would read as the cause in `explain`). Nodes that failed are held;
        // nodes applied or Ready earlier still describe their live objects.
        for node in self.nodes.values_mut() {
            if matches!(node.phase, NodePhase::Error | NodePhase::Blocked) {
                *node = NodeStatus::pending(
                    Vec::new(),
                    format!("held: {reason} (nothing is applied until it is fixed)"),
                );
            }
        }
        self.set_condition(failed, false, reason, message, generation, now);
        self.set_condition(
            ConditionType::Ready,
            false,
            reason,
            message,
            generation,
            now,
        );
        self.set_condition(
            ConditionType::Progressing,
            false,
            reason,
            next_step,
            generation,
            now,
        );
        self.set_condition(
            ConditionType::Stalled,
            true,
            reason,
            message,
            generation,
            now,
        );
    }
}

/// The condition matrix: sets `Ready`, `Progressing` and `Stalled` (and `readyNodes`) from the
/// node states of a pass (`status.nodes`, already the pass's) and what it found terminal.
///
/// | the pass                     | Ready            | Progressing      | Stalled     |
/// |------------------------------|------------------|------------------|-------------|
/// | a node failed terminally     | False NodeFailed | False NodeFailed | True        |
/// | every node Ready             | True             | False            | (removed)   |
/// | an API call failed           | False ApplyFailed| True Retrying    | (removed)   |
/// | a node Blocked               | False NodeBlocked| False NodeBlocked| (removed)   |
/// | otherwise                    | False Progressing| True Progressing | (removed)   |
///
/// ```
/// use cuebe_core::plan::Outcome;
/// use cuebe_core::status::{AbstractionStatus, ConditionType, NodeStatus, PassVerdict, summarize};
/// let mut status = AbstractionStatus::default();
/// status.nodes.insert("web".into(), NodeStatus::ready("exists"));
/// let outcome = Outcome { ready: true, ..Default::default() };
/// let verdict = summarize(&mut status, &outcome, Some(1), "2026-01-01T00:00:00Z");
/// assert_eq!(verdict, PassVerdict::Ready);
/// assert!(status.is_ready());
/// assert_eq!(status.ready_nodes, "1/1");
/// ```
pub fn summarize(
    status: &mut AbstractionStatus,
    outcome: &Outcome,
    generation: Option<i64>,
    now: &str,
) -> PassVerdict {
    use ConditionType::{Progressing, Ready, Stalled};
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
    // Health never gates Ready, but a Ready instance with an unhealthy node says so where
    // people look first (the Ready condition: `kubectl get -o wide`, `kubectl describe`).
    let unhealthy: Vec<String> = status
        .nodes
        .iter()
        .filter(|(_, n)| n.health == Some(Health::Unhealthy))
        .map(|(id, n)| format!("{id}: {}", n.health_details.clone().unwrap_or_default()))
        .collect();
    let all_ready = if unhealthy.is_empty() {
        format!("{ready}/{total} nodes ready")
    } else {
        format!(
            "{ready}/{total} nodes ready; unhealthy: {}",
            unhealthy.join("; ")
        )
    };
    if let Some(stalled) = &outcome.stalled {
        for type_ in [Ready, Progressing] {
            status.set_condition(type_, false, "NodeFailed", stalled.clone(), generation, now);
        }
        status.set_condition(
            Stalled,
            true,
            "NodeFailed",
            stalled.clone(),
            generation,
            now,
        );
        return PassVerdict::Stalled;
    }
    if let Some(guard) = &outcome.prune_guard {
        for type_ in [Ready, Progressing] {
            status.set_condition(type_, false, "PruneGuard", guard.clone(), generation, now);
        }
        status.set_condition(Stalled, true, "PruneGuard", guard.clone(), generation, now);
        return PassVerdict::Stalled;
    }
    if let Some(paused) = outcome.prune_paused.as_ref().filter(|_| outcome.ready) {
        status.set_condition(Ready, true, "AllNodesReady", all_ready, generation, now);
        status.set_condition(
            Progressing,
            true,
            "PrunePaused",
            paused.clone(),
            generation,
            now,
        );
        status.clear_condition(Stalled);
        return PassVerdict::PrunePaused;
    }
    let verdict = if outcome.ready {
        status.set_condition(Ready, true, "AllNodesReady", all_ready, generation, now);
        status.set_condition(Progressing, false, "AllNodesReady", "", generation, now);
        PassVerdict::Ready
    } else if !retrying.is_empty() {
        // API errors (a full service range, a webhook outage) are retried, not terminal.
        let message = retrying.join("; ");
        status.set_condition(
            Ready,
            false,
            "ApplyFailed",
            message.clone(),
            generation,
            now,
        );
        status.set_condition(Progressing, true, "Retrying", message, generation, now);
        PassVerdict::Retrying
    } else if !blocked.is_empty() {
        let message = blocked.join("; ");
        status.set_condition(
            Ready,
            false,
            "NodeBlocked",
            message.clone(),
            generation,
            now,
        );
        status.set_condition(Progressing, false, "NodeBlocked", message, generation, now);
        PassVerdict::Blocked
    } else {
        let waiting: Vec<String> = status
            .nodes
            .iter()
            .filter(|(_, n)| n.phase != NodePhase::Ready)
            .map(|(id, n)| format!("{id}: {}", n.ready_details.clone().unwrap_or_default()))
            .collect();
        status.set_condition(
            Ready,
            false,
            "Progressing",
            waiting.join("; "),
            generation,
            now,
        );
        status.set_condition(
            Progressing,
            true,
            "Progressing",
            format!("{ready}/{total} nodes ready"),
            generation,
            now,
        );
        PassVerdict::Progressing
    };
    status.clear_condition(Stalled);
    verdict
}

/// An event worth publishing on the instance (the runtime turns it into a Kubernetes Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    /// A Warning event (else Normal).
    pub warning: bool,
    /// CamelCase reason, e.g. `Ready`, `NodeFailed`, `Pruned`.
    pub reason: String,
    /// Human-readable detail.
    pub note: Option<String>,
    /// What the operator was doing: `Render`, `Apply`, `Prune`, `Adopt`, `Reconcile`.
    pub action: String,
}

impl EventNote {
    fn new(warning: bool, reason: &str, note: Option<String>, action: &str) -> Self {
        Self {
            warning,
            reason: reason.into(),
            note,
            action: action.into(),
        }
    }
}

/// Events for what changed between two statuses: the instance's Ready/Stalled/policy
/// transitions, each node failing or being blocked, and each node turning unhealthy (Warning
/// `NodeUnhealthy`) or healthy again after that (Normal `NodeHealthy`) — once per change, not
/// per pass, since the status keeps the last judgement. A node turning Ready is not an event of
/// its own (it is in the status, and at hundreds of instances the writes add up).
///
/// ```
/// use cuebe_core::status::{AbstractionStatus, ConditionType, transitions};
/// let before = AbstractionStatus::default();
/// let mut after = before.clone();
/// after.set_condition(ConditionType::Ready, true, "AllNodesReady", "3/3 nodes ready", Some(1), "2026-01-01T00:00:00Z");
/// let events = transitions(&before, &after);
/// assert_eq!(events.len(), 1);
/// assert_eq!(events[0].reason, "Ready");
/// ```
pub fn transitions(previous: &AbstractionStatus, current: &AbstractionStatus) -> Vec<EventNote> {
    use ConditionType::{PolicyPassed, Ready, Rendered, Stalled};
    let flipped = |t: ConditionType, to: &str| {
        let now = current.condition(t).map(|c| c.status.as_str());
        let before = previous.condition(t).map(|c| c.status.as_str());
        now == Some(to) && before != Some(to)
    };
    let message = |t: ConditionType| current.condition(t).map(|c| c.message.clone());
    let mut events = Vec::new();
    // The audit trail of published modules: every module put in use (source, digest, and how it
    // was verified) and every refusal, once per change.
    let module =
        |c: Option<&Condition>| c.map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    let resolved = module(current.condition(ConditionType::ModuleResolved));
    if let Some((state, reason, text)) = resolved
        .clone()
        .filter(|_| resolved != module(previous.condition(ConditionType::ModuleResolved)))
    {
        let verified = current
            .condition(ConditionType::ModuleVerified)
            .map(|c| format!("; {}: {}", c.reason, c.message))
            .unwrap_or_default();
        events.push(if state == "True" {
            EventNote::new(
                false,
                "ModuleLoaded",
                Some(format!("{text}{verified}")),
                "Resolve",
            )
        } else {
            EventNote::new(true, &reason, Some(text), "Resolve")
        });
    }
    if flipped(Rendered, "False") {
        events.push(EventNote::new(
            true,
            "RenderFailed",
            message(Rendered),
            "Render",
        ));
    }
    if flipped(PolicyPassed, "False") {
        events.push(EventNote::new(
            true,
            "PolicyViolation",
            message(PolicyPassed),
            "Render",
        ));
    }
    for (id, node) in &current.nodes {
        if previous.nodes.get(id).map(|n| n.phase) == Some(node.phase) {
            continue;
        }
        let reason = match node.phase {
            NodePhase::Error => "NodeFailed",
            NodePhase::Blocked => "NodeBlocked",
            _ => continue,
        };
        let note = format!("{id}: {}", node.last_error.clone().unwrap_or_default());
        events.push(EventNote::new(true, reason, Some(note), "Apply"));
    }
    for (id, node) in &current.nodes {
        let before = previous.nodes.get(id).and_then(|n| n.health);
        let (warning, reason) = match (before, node.health) {
            (Some(Health::Unhealthy), Some(Health::Unhealthy)) => continue,
            (_, Some(Health::Unhealthy)) => (true, "NodeUnhealthy"),
            (Some(Health::Unhealthy), Some(Health::Healthy)) => (false, "NodeHealthy"),
            _ => continue,
        };
        let note = format!("{id}: {}", node.health_details.clone().unwrap_or_default());
        events.push(EventNote::new(warning, reason, Some(note), "Reconcile"));
    }
    let progressing_reason = |s: &AbstractionStatus| {
        s.condition(ConditionType::Progressing)
            .filter(|c| c.status == "True")
            .map(|c| c.reason.clone())
    };
    if progressing_reason(current).as_deref() == Some("PrunePaused")
        && progressing_reason(previous).as_deref() != Some("PrunePaused")
    {
        events.push(EventNote::new(
            true,
            "PrunePaused",
            current
                .condition(ConditionType::Progressing)
                .map(|c| c.message.clone()),
            "Prune",
        ));
    }
    if flipped(Ready, "True") {
        events.push(EventNote::new(false, "Ready", message(Ready), "Reconcile"));
    }
    if flipped(Stalled, "True") {
        // The prune guard is worth its own reason: an alert can page on it.
        let guard = current
            .condition(Stalled)
            .is_some_and(|c| c.reason == "PruneGuard");
        events.push(EventNote::new(
            true,
            if guard { "PruneGuard" } else { "Stalled" },
            message(Stalled),
            "Reconcile",
        ));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn nodes(phases: &[(&str, NodePhase)]) -> AbstractionStatus {
        let mut status = AbstractionStatus::default();
        for (id, phase) in phases {
            let mut s = NodeStatus::ready("ok");
            s.phase = *phase;
            if matches!(phase, NodePhase::Error | NodePhase::Blocked) {
                s.last_error = Some("why".into());
            }
            status.nodes.insert(id.to_string(), s);
        }
        status
    }

    fn condition(status: &AbstractionStatus, t: ConditionType) -> Option<(String, String)> {
        status
            .condition(t)
            .map(|c| (c.status.clone(), c.reason.clone()))
    }

    #[test]
    fn a_status_read_back_from_the_api_equals_the_one_written() {
        // The controller drops its copy of a written status once the watch delivers an equal
        // one: a field that did not survive the JSON round trip would keep every copy.
        let mut status = nodes(&[
            ("deployment", NodePhase::Ready),
            ("hpa", NodePhase::Blocked),
            ("pdb", NodePhase::Pending),
        ]);
        status.observed_generation = Some(3);
        status.set_condition(
            ConditionType::Rendered,
            true,
            "Rendered",
            "3 nodes",
            Some(3),
            NOW,
        );
        status.set_condition(
            ConditionType::Ready,
            false,
            "Waiting",
            "pdb waits",
            Some(3),
            NOW,
        );
        status.record_revision("embedded:v1", "sha256:abc", "h1", "Ready", NOW);
        status.render_hash = "h1".into();
        status.inventory.push(InventoryEntry {
            node_id: "deployment".into(),
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: "team".into(),
            name: "web".into(),
            uid: "u-1".into(),
            mode: crate::inventory::InventoryMode::Managed,
            last_applied_hash: "x".into(),
            last_applied_resource_version: "12".into(),
            last_applied_generation: Some(1),
            last_ready_transition: Some(NOW.into()),
            deletion_policy: None,
        });
        let json = serde_json::to_value(&status).unwrap();
        let back: AbstractionStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn a_render_blocked_by_policy_drops_the_node_errors_of_an_earlier_pass() {
        // An apply error in one pass, then a spec the policy refuses: the error is not what
        // holds the instance now, so `explain` must not show it.
        let mut status = nodes(&[
            ("deployment", NodePhase::Error),
            ("service", NodePhase::Ready),
            ("hpa", NodePhase::Blocked),
            ("pdb", NodePhase::Applied),
        ]);
        status.stop_before_apply(
            ConditionType::PolicyPassed,
            "PolicyViolation",
            "spec.replicas: must be at most 10",
            "nothing is applied while policy fails",
            Some(2),
            NOW,
        );
        let phase = |id: &str| status.nodes[id].phase;
        assert_eq!(phase("deployment"), NodePhase::Pending);
        assert_eq!(phase("hpa"), NodePhase::Pending);
        assert_eq!(phase("service"), NodePhase::Ready);
        assert_eq!(phase("pdb"), NodePhase::Applied);
        assert!(status.nodes.values().all(|n| n.last_error.is_none()));
        assert_eq!(
            status.nodes["deployment"].ready_details.as_deref(),
            Some("held: PolicyViolation (nothing is applied until it is fixed)")
        );
        assert_eq!(
            condition(&status, ConditionType::Ready),
            Some(("False".into(), "PolicyViolation".into()))
        );
    }

    #[test]
    fn a_guarded_prune_stalls_and_a_paused_prune_stays_ready_and_progressing() {
        use ConditionType::{Progressing, Ready, Stalled};
        let t = |s: &str, r: &str| Some((s.to_string(), r.to_string()));
        let before = AbstractionStatus::default();

        let mut status = nodes(&[("a", NodePhase::Ready)]);
        let guarded = Outcome {
            ready: true,
            prune_guard: Some("would delete 3 of the 4 objects".into()),
            ..Default::default()
        };
        let verdict = summarize(&mut status, &guarded, Some(1), NOW);
        assert_eq!(verdict, PassVerdict::Stalled);
        assert_eq!(condition(&status, Stalled), t("True", "PruneGuard"));
        assert_eq!(condition(&status, Ready), t("False", "PruneGuard"));
        let events = transitions(&before, &status);
        let guard_event = events.iter().find(|e| e.reason == "PruneGuard");
        assert!(
            guard_event.is_some_and(
                |e| e.warning && e.note.as_deref().is_some_and(|n| n.contains("3 of the 4"))
            ),
            "{events:?}"
        );

        let mut status = nodes(&[("a", NodePhase::Ready)]);
        let paused = Outcome {
            ready: true,
            prune_paused: Some("pruning is paused".into()),
            ..Default::default()
        };
        let verdict = summarize(&mut status, &paused, Some(1), NOW);
        assert_eq!(verdict, PassVerdict::PrunePaused);
        assert_eq!(condition(&status, Ready), t("True", "AllNodesReady"));
        assert_eq!(condition(&status, Progressing), t("True", "PrunePaused"));
        assert_eq!(condition(&status, Stalled), None);
        let events = transitions(&before, &status);
        assert!(
            events
                .iter()
                .any(|e| e.reason == "PrunePaused" && e.warning),
            "{events:?}"
        );
        // Once per change: the next paused pass publishes no second event.
        let again = status.clone();
        assert!(
            !transitions(&again, &status)
                .iter()
                .any(|e| e.reason == "PrunePaused")
        );
    }

    #[test]
    fn the_condition_matrix() {
        use NodePhase::*;
        let t = |s: &str, r: &str| Some((s.to_string(), r.to_string()));
        type Row = (
            &'static [(&'static str, NodePhase)],
            bool,
            Option<&'static str>,
            PassVerdict,
            Option<(String, String)>,
            Option<(String, String)>,
            bool,
        );
        let rows: Vec<Row> = vec![
            (
                &[("a", Ready)],
                true,
                None,
                PassVerdict::Ready,
                t("True", "AllNodesReady"),
                t("False", "AllNodesReady"),
                false,
            ),
            (
                &[("a", Error)],
                false,
                Some("a: dead"),
                PassVerdict::Stalled,
                t("False", "NodeFailed"),
                t("False", "NodeFailed"),
                true,
            ),
            (
                &[("a", Error), ("b", Blocked)],
                false,
                None,
                PassVerdict::Retrying,
                t("False", "ApplyFailed"),
                t("True", "Retrying"),
                false,
            ),
            (
                &[("a", Blocked), ("b", Ready)],
                false,
                None,
                PassVerdict::Blocked,
                t("False", "NodeBlocked"),
                t("False", "NodeBlocked"),
                false,
            ),
            (
                &[("a", Applied), ("b", Pending)],
                false,
                None,
                PassVerdict::Progressing,
                t("False", "Progressing"),
                t("True", "Progressing"),
                false,
            ),
        ];
        for (phases, ready, stalled, verdict, ready_c, progressing_c, stalled_c) in rows {
            let mut status = nodes(phases);
            // A Stalled from an earlier pass must go when the instance recovers.
            status.set_condition(ConditionType::Stalled, true, "Old", "", Some(1), NOW);
            let outcome = Outcome {
                ready,
                stalled: stalled.map(str::to_string),
                ..Default::default()
            };
            assert_eq!(
                summarize(&mut status, &outcome, Some(2), NOW),
                verdict,
                "{phases:?}"
            );
            assert_eq!(
                condition(&status, ConditionType::Ready),
                ready_c,
                "{phases:?}"
            );
            assert_eq!(
                condition(&status, ConditionType::Progressing),
                progressing_c,
                "{phases:?}"
            );
            assert_eq!(
                status.condition(ConditionType::Stalled).is_some(),
                stalled_c,
                "{phases:?}"
            );
        }
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let mut status = AbstractionStatus::default();
        status.set_condition(
            ConditionType::Ready,
            false,
            "Progressing",
            "",
            Some(1),
            "t1",
        );
        status.set_condition(
            ConditionType::Ready,
            false,
            "NodeBlocked",
            "",
            Some(1),
            "t2",
        );
        assert_eq!(status.conditions[0].last_transition_time, "t1");
        status.set_condition(
            ConditionType::Ready,
            true,
            "AllNodesReady",
            "",
            Some(1),
            "t3",
        );
        assert_eq!(status.conditions[0].last_transition_time, "t3");
    }

    #[test]
    fn events_only_for_transitions() {
        let mut before = nodes(&[("a", NodePhase::Applied)]);
        before.stop_before_apply(
            ConditionType::PolicyPassed,
            "PolicyViolation",
            "spec.image",
            "",
            Some(1),
            NOW,
        );
        let mut after = before.clone();
        assert!(
            transitions(&before, &after).is_empty(),
            "no change, no event"
        );
        after.nodes.insert("a".into(), NodeStatus::error("quota"));
        after.set_condition(
            ConditionType::Ready,
            true,
            "AllNodesReady",
            "1/1",
            Some(1),
            NOW,
        );
        let reasons: Vec<String> = transitions(&before, &after)
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(reasons, ["NodeFailed", "Ready"]);
        let fresh = AbstractionStatus::default();
        let reasons: Vec<String> = transitions(&fresh, &before)
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(reasons, ["PolicyViolation", "Stalled"]);
    }

    #[test]
    fn each_module_put_in_use_or_refused_is_one_event() {
        let resolved = |status: &mut AbstractionStatus, ok: bool, reason: &str, message: &str| {
            status.set_condition(
                ConditionType::ModuleResolved,
                ok,
                reason,
                message,
                Some(1),
                NOW,
            );
        };
        let mut loaded = AbstractionStatus::default();
        resolved(
            &mut loaded,
            true,
            "Resolved",
            "oci://r/p@sha256:1 (module content sha256:c)",
        );
        loaded.set_condition(
            ConditionType::ModuleVerified,
            true,
            "Verified",
            "signed by key sha256:k",
            Some(1),
            NOW,
        );
        let events = transitions(&AbstractionStatus::default(), &loaded);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].warning, events[0].reason.as_str()),
            (false, "ModuleLoaded")
        );
        assert_eq!(
            events[0].note.as_deref(),
            Some("oci://r/p@sha256:1 (module content sha256:c); Verified: signed by key sha256:k")
        );
        // The same module again: nothing new to say.
        assert!(transitions(&loaded, &loaded.clone()).is_empty());
        // Refused: a warning with the refusal's reason.
        let mut refused = loaded.clone();
        resolved(
            &mut refused,
            false,
            "SignatureInvalid",
            "oci://r/p@sha256:2: no valid signature",
        );
        let events = transitions(&loaded, &refused);
        assert_eq!(
            (events[0].warning, events[0].reason.as_str()),
            (true, "SignatureInvalid")
        );
    }
}
