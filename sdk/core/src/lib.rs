//! # cuebe-core
//!
//! The Kubernetes-free core of cuebe: everything between an instance's spec and the decisions of
//! a reconcile pass, as functions over data. No cluster client, no async runtime: the runtime
//! crate (`cuebe`) does the I/O and asks this crate what to do.
//!
//! The data flows one way, and so do the modules:
//!
//! - [`instance`]: the custom resource as cuebe sees it (identity, what it asks to adopt).
//! - [`module`]: platform modules as in-memory files with an immutable digest (the spec's
//!   `platformRef` resolves to one).
//! - [`render`]: the module protocol, the render cache and the `renderHash`: spec → [`graph::Graph`].
//! - [`graph`]: the Graph artifact, its validation and its drawings (DOT, Mermaid).
//! - [`plan`]: a validated Graph as the executor walks it (id index, apply and teardown order,
//!   predicates compiled once), and the decisions of a pass: the frontier, each node's verdict,
//!   what may be pruned.
//! - [`readiness`]: judging a live object against a node's predicates.
//! - [`inventory`]: the entries recording what an instance manages.
//! - [`status`]: the standard status and [`status::summarize`], which turns a pass into
//!   conditions and events.
//! - [`stdlib`]: cuebe's standard CUE library (`cuebe.dev/lib`), the only dependency a
//!   platform module may have, shipped with the SDK and resolved offline.
//! - [`trust`]: which published modules are trusted (source policy, cosign signatures).
//! - [`clock`]: the time a pass judges timeouts against (a fixed one in tests).
//!
//! Start with [`render::CueRenderer`], then [`plan::Plan`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod clock;
pub mod graph;
pub mod instance;
pub mod inventory;
pub mod module;
pub mod plan;
pub mod readiness;
pub mod render;
pub mod rollout;
pub mod status;
pub mod stdlib;
pub mod trust;

/// Safe access to CUE through the in-process bridge (re-exported from `cuebe-cue-sys`).
pub use cuebe_cue_sys::module as cue;

/// Label naming the instance that manages an object.
pub const INSTANCE_LABEL: &str = "cuebe.dev/instance";
/// Label naming the instance's kind.
pub const KIND_LABEL: &str = "cuebe.dev/kind";
/// Label naming the instance's namespace, on cluster-scoped objects only (a namespaced object
/// is in its instance's namespace): two instances of one name in two namespaces must not take
/// a cluster-scoped object from each other.
pub const NAMESPACE_LABEL: &str = "cuebe.dev/namespace";
