//! The reference cuebe operator: the `WebService` custom resource and its embedded platform
//! module (`cue/platform`).
//!
//! Application developers write a small `WebService`; the platform module renders the
//! Deployment, Service, ServiceAccount and, as the spec asks, HPA, PDB, NetworkPolicy, Ingress or
//! HTTPRoute and ACK IAM Role/Policy.
use cuebe::module::{ModuleSet, ModuleSource, PlatformRef};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod controller;
pub mod dev;
pub mod explain;
pub mod render;

/// The version of the embedded platform module.
pub const PLATFORM_VERSION: &str = "1.0.0";

/// The platform module compiled into this binary.
pub fn platform_module() -> ModuleSource {
    cuebe_macros::embed_module!("../cue/platform", package = "./webservice")
}

/// Every embedded platform module version, newest last.
pub fn platform_modules() -> ModuleSet {
    ModuleSet::single(PLATFORM_VERSION, platform_module())
}

/// A web service: one container image served over HTTP.
///
/// Defaults and policy live in the platform module; the fields here only shape the API.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "platform.example.com",
    version = "v1alpha1",
    kind = "WebService",
    namespaced,
    shortname = "ws",
    status = "cuebe::status::AbstractionStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.readyNodes"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebServiceSpec {
    /// Container image, from an allowed registry, pinned to a tag or digest.
    pub image: String,
    /// Replicas when autoscaling is off (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Port the container listens on (default 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// CPU and memory requests (required by policy); limits are set equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Overrides the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// HTTP probes on the service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
    /// Who can reach the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Exposure>,
    /// Horizontal autoscaling on CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// An AWS IAM role for the pods (IRSA through ACK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam: Option<Iam>,
    /// Pins the platform module version (default: the newest embedded one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_ref: Option<PlatformRef>,
    /// What happens to rendered objects when the WebService is deleted (default Delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// CPU and memory requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// e.g. `250m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// e.g. `256Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// One environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// HTTP probe paths.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probes {
    /// Readiness probe path, e.g. `/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_path: Option<String>,
    /// Liveness probe path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_path: Option<String>,
}

/// Exposure of the service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exposure {
    /// `Internal` (default) or `Public`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ExposureType>,
    /// DNS name of a Public service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Exposure type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExposureType {
    /// Reachable inside the cluster only.
    Internal,
    /// Served on a public host through an Ingress or HTTPRoute.
    Public,
}

/// CPU autoscaling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscaling {
    /// Lower bound (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    /// Upper bound.
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent (default 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cpu_utilization: Option<i32>,
}

/// AWS IAM for the pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Iam {
    /// Managed policy ARNs to attach.
    #[serde(
        default,
        rename = "policyARNs",
        skip_serializing_if = "Option::is_none"
    )]
    pub policy_arns: Option<Vec<String>>,
    /// An IAM policy document (JSON), created as its own ACK Policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_policy: Option<String>,
}

/// Fate of rendered objects when the WebService is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete them.
    Delete,
    /// Leave them in place, unmanaged.
    Orphan,
}
