//! The reference cuebe operator: the `WebService` custom resource and its embedded platform
//! module (`cue/platform`).
//!
//! Application developers write a small `WebService`; the platform module renders the
//! Deployment, Service, ServiceAccount and, as the spec asks, HPA, PDB, NetworkPolicy, Ingress or
//! HTTPRoute and ACK IAM Role/Policy.
use cuebe::Abstraction;
use cuebe::lifecycle::{AdoptSpec, DeletionPolicy};
use cuebe::module::{ModuleSet, ModuleSource, PlatformRef};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The version of the embedded platform module.
pub const PLATFORM_VERSION: &str = "1.0.0";

/// The sample `dev` applies.
pub const SAMPLE: &str = include_str!("../../examples/webservices/simple.yaml");

/// The platform module compiled into this binary (newest version).
pub fn platform_module() -> ModuleSource {
    let modules = WebService::modules();
    modules
        .resolve(None)
        .map(|m| (*m.source).clone())
        .unwrap_or_else(|_| ModuleSource::new(Vec::<(String, String)>::new(), "./webservice"))
}

/// Every embedded platform module version, newest last.
pub fn platform_modules() -> ModuleSet {
    WebService::modules()
}

/// A web service: one container image served over HTTP.
///
/// Defaults and policy live in the platform module; the fields here only shape the API.
#[derive(
    CustomResource, Abstraction, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema,
)]
#[kube(
    group = "platform.example.com",
    version = "v1alpha1",
    kind = "WebService",
    namespaced,
    shortname = "ws",
    status = "cuebe::status::AbstractionStatus"
)]
#[abstraction(
    module = "../cue/platform",
    package = "./webservice",
    version = "1.0.0",
    field_manager = "cuebe-webservice",
    watches = [
        "apps/v1/Deployment",
        "v1/ServiceAccount",
        "v1/Service",
        "autoscaling/v2/HorizontalPodAutoscaler",
        "policy/v1/PodDisruptionBudget",
        "networking.k8s.io/v1/NetworkPolicy",
        "networking.k8s.io/v1/Ingress",
        "iam.services.k8s.aws/v1alpha1/Role",
        "iam.services.k8s.aws/v1alpha1/Policy",
        "gateway.networking.k8s.io/v1/HTTPRoute",
    ]
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebServiceSpec {
    /// Container image, from an allowed registry, pinned to a tag or digest.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Replicas when autoscaling is off (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Port the container listens on (default 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// CPU and memory requests (required by policy); limits are set equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Environment variables (at most 1,000: bulk configuration belongs in a ConfigMap; a huge
    /// list makes every render slow and memory-hungry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
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
    #[abstraction(platform_ref)]
    pub platform_ref: Option<PlatformRef>,
    /// What happens to rendered objects when the WebService is deleted (default Delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[abstraction(deletion_policy)]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Existing objects to take over (nothing is adopted otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[abstraction(adopt)]
    pub adopt: Option<AdoptSpec>,
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
    /// Variable name: letters, digits and `_`, not starting with a digit.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
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
    #[schemars(regex(pattern = "^/"))]
    pub readiness_path: Option<String>,
    /// Liveness probe path, e.g. `/livez`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^/"))]
    pub liveness_path: Option<String>,
}

/// Exposure of the service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exposure {
    /// `Internal` or `Public` (default Internal).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ExposureType>,
    /// DNS name of a Public service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix (default /).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^/"))]
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
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,
    /// Upper bound.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent (default 80).
    #[serde(
        default,
        rename = "targetCPUUtilization",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
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
    #[schemars(inner(regex(pattern = "^arn:aws[a-z-]*:iam::")))]
    pub policy_arns: Option<Vec<String>>,
    /// An IAM policy document (JSON), created as its own ACK Policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_policy: Option<String>,
}
