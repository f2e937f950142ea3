//! `Worker`: a queue consumer, built only on cuebe's public API.
//!
//! A Worker renders a ServiceAccount, a Deployment, a NetworkPolicy that denies all ingress and,
//! as the spec asks, an HPA, a PodDisruptionBudget (two or more pods) and an ACK IAM Role for
//! IRSA; with `queueCredentials` it reads an existing Secret (a reference node: never written,
//! adopted or deleted) and the Deployment waits for it. The CUE module is `cue/` next to this file; this crate is the CRD and a `main`.
use cuebe::Abstraction;
use cuebe::lifecycle::{AdoptSpec, DeletionPolicy};
use cuebe::module::PlatformRef;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The sample `dev` applies.
pub const SAMPLE: &str = include_str!("../samples/worker.yaml");

/// A queue consumer: one container image, no inbound traffic.
#[derive(
    CustomResource, Abstraction, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema,
)]
#[kube(
    group = "example.com",
    version = "v1alpha1",
    kind = "Worker",
    namespaced,
    shortname = "wk",
    status = "cuebe::status::AbstractionStatus"
)]
#[abstraction(
    module = "cue",
    package = "./worker",
    version = "1.0.0",
    watches = [
        "apps/v1/Deployment",
        "v1/ServiceAccount",
        "networking.k8s.io/v1/NetworkPolicy",
        "autoscaling/v2/HorizontalPodAutoscaler",
        "policy/v1/PodDisruptionBudget",
        "iam.services.k8s.aws/v1alpha1/Role",
    ]
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerSpec {
    /// Container image, from an allowed registry, pinned to a tag or digest.
    pub image: String,
    /// The queue URL the worker consumes (given to the container as `QUEUE_URL`).
    pub queue: String,
    /// An existing Secret in the Worker's namespace holding the queue's credentials: its keys
    /// become the container's environment (`envFrom`), and a change to it rolls the pods. The
    /// Worker waits (Pending, naming it) until it exists, and never writes or deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_credentials: Option<String>,
    /// Overrides the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Replicas when autoscaling is off (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// CPU and memory (default 100m / 128Mi); limits are set equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Horizontal autoscaling on CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// An AWS IAM role for the pods (IRSA through ACK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam: Option<Iam>,
    /// Pins the module version (default: the newest embedded one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[abstraction(platform_ref)]
    pub platform_ref: Option<PlatformRef>,
    /// What happens to the rendered objects when the Worker is deleted (default Delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[abstraction(deletion_policy)]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Existing objects to take over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[abstraction(adopt)]
    pub adopt: Option<AdoptSpec>,
}

/// CPU and memory.
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

/// CPU autoscaling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscaling {
    /// Lower bound (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,
    /// Upper bound.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent (default 70).
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
    #[serde(default, rename = "policyARNs")]
    #[schemars(inner(regex(pattern = "^arn:aws[a-z-]*:iam::")))]
    pub policy_arns: Vec<String>,
}
