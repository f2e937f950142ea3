//! `__Kind__`: a small web page holding a message, rendered by the CUE module in `cue/` into a
//! ConfigMap and a Deployment that serves it.
use cuebe::Abstraction;
use cuebe::lifecycle::{AdoptSpec, DeletionPolicy};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The sample `dev` applies.
pub const SAMPLE: &str = include_str!("../samples/__kind__.yaml");

/// What an application developer writes: the message to serve and how many copies.
#[derive(CustomResource, Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "example.com",
    version = "v1alpha1",
    kind = "__Kind__",
    namespaced,
    status = "cuebe::status::AbstractionStatus"
)]
#[abstraction(
    module = "cue",
    package = "./__kind__",
    version = "1.0.0",
    watches = ["v1/ConfigMap", "apps/v1/Deployment"]
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct __Kind__Spec {
    /// The message the page shows (not blank).
    pub message: String,
    /// Pods serving it, 1 to 5 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// What happens to the rendered objects when the __Kind__ is deleted (default Delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[abstraction(deletion_policy)]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Existing objects to take over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[abstraction(adopt)]
    pub adopt: Option<AdoptSpec>,
}
