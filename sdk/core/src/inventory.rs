//! The inventory's entries: what an instance manages, by identity and bookkeeping (no manifests).
//!
//! Where the entries are kept is the runtime's `Inventory` trait (`cuebe::inventory`), which
//! re-exports these types beside it.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::graph::DeletionPolicy;

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
