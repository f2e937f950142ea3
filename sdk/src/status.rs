//! The standard status every abstraction embeds: conditions, per-node state, violations and the
//! inventory of what the instance manages.
//!
//! kstatus-compatible: `observedGeneration`, and conditions `Rendered`, `PolicyPassed`,
//! `Progressing`, `Ready`, plus `Stalled` on a terminal failure, so
//! `kubectl wait --for=condition=Ready` works.
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::graph::{DeletionPolicy, Violation};

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
}

/// How an inventory entry is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum InventoryMode {
    /// Created and kept by this instance.
    Managed,
    /// Taken over from an existing object.
    Adopted,
    /// Left in place, no longer managed.
    Orphaned,
}

/// One object the instance manages (no manifest: identity and bookkeeping only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEntry {
    /// The node that rendered it.
    pub node_id: String,
    /// `apiVersion` of the object.
    pub api_version: String,
    /// `kind` of the object.
    pub kind: String,
    /// Namespace (empty for cluster-scoped objects).
    #[serde(default)]
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID, for delete preconditions.
    #[serde(default)]
    pub uid: String,
    /// Managed, Adopted or Orphaned.
    pub mode: InventoryMode,
    /// Hash of the last applied object.
    #[serde(default)]
    pub last_applied_hash: String,
    /// `resourceVersion` right after the last apply (to skip writes when nothing changed).
    #[serde(default)]
    pub last_applied_resource_version: String,
    /// `metadata.generation` right after the last apply: status updates by the object's own
    /// controller do not change it, so they do not cause a re-apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_generation: Option<i64>,
    /// When the node last turned Ready (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ready_transition: Option<String>,
    /// The node's own `deletionPolicy` when it was last applied. Recorded here because teardown
    /// and pruning run when there may be no render to read it from: an `Orphan` node's object is
    /// released (our labels removed) instead of deleted, whatever the instance's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
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
}

impl AbstractionStatus {
    /// The condition of this type.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Sets a condition, keeping `lastTransitionTime` when the status does not change.
    pub fn set_condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
        now: &str,
    ) {
        let status = if status { "True" } else { "False" }.to_string();
        let message = message.into();
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
    pub fn clear_condition(&mut self, type_: &str) {
        self.conditions.retain(|c| c.type_ != type_);
    }

    /// The inventory entry of a node.
    pub fn inventory_entry(&self, node_id: &str) -> Option<&InventoryEntry> {
        self.inventory.iter().find(|e| e.node_id == node_id)
    }

    /// True when the `Ready` condition is True.
    pub fn is_ready(&self) -> bool {
        self.condition("Ready").is_some_and(|c| c.status == "True")
    }
}
