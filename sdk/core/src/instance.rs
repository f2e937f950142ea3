//! The instance: the custom resource an abstraction's user writes, as the rest of cuebe sees it.
//!
//! [`Instance`] is its identity (kind, name, namespace, labels, generation) and what it asks to
//! take over ([`AdoptSpec`]); the renderer reads the identity, the executor all of it.
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The instance a graph belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    /// Kind of the custom resource, e.g. `WebService`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its `metadata.labels` (the platform module sees them as `input.instance.labels`).
    pub labels: BTreeMap<String, String>,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// Existing objects the instance asks to take over (`spec.adopt.resources`).
    pub adopt: Vec<AdoptRef>,
}

/// Objects an instance asks to take over, as a custom resource embeds it (`spec.adopt`).
///
/// ```
/// let adopt: cuebe_core::instance::AdoptSpec = serde_json::from_value(serde_json::json!({
///     "resources": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "legacy-web"}]
/// })).unwrap();
/// assert_eq!(adopt.resources[0].name, "legacy-web");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdoptSpec {
    /// The existing objects (in the instance's namespace) to take over.
    #[serde(default)]
    pub resources: Vec<AdoptRef>,
}

/// One object to adopt, by identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdoptRef {
    /// `apiVersion` of the object, e.g. `apps/v1`.
    pub api_version: String,
    /// `kind` of the object, e.g. `Deployment`.
    pub kind: String,
    /// Its name.
    pub name: String,
}
