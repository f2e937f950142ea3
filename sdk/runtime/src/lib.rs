//! # cuebe
//!
//! A Rust SDK for Kubernetes operators whose platform logic is written in CUE: the runtime that
//! turns an [`Abstraction`]'s instances into objects in a cluster.
//!
//! Start with [`controller::Operator`] (or, for a whole binary, `cuebe_cli::App`). The layers:
//!
//! - `cuebe-core` (re-exported here as [`module`], [`graph`], [`plan`], [`readiness`],
//!   [`status`], [`clock`]): everything that needs no cluster — platform modules, the renderer,
//!   the Graph and its plan, readiness predicates, the decisions of a pass, the condition matrix.
//! - this crate: what talks to the API server — [`discovery`], the async [`renderer`], the
//!   [`executor`] (Server-Side Apply, prune, teardown) and the watch caches it reads children
//!   from ([`child_cache`]), [`lifecycle`] (inventory storage,
//!   explicit adoption), the generic [`controller`] and [`ops`] (leader election, metrics).
//! - `cuebe-cli`: the operator's command line (`run`, `dev`, `crd`, `render`, `diff`, `explain`).
//!
//! All `unsafe` lives in `cuebe-cue-sys`, the bridge to CUE.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abstraction;
pub mod access;
pub mod admission;
#[cfg(feature = "remote-modules")]
pub mod approval;
pub mod child_cache;
pub mod controller;
pub mod discovery;
pub mod executor;
pub mod instance_store;
pub mod inventory;
pub mod lifecycle;
pub mod ops;
#[cfg(feature = "remote-modules")]
pub mod remote;
pub mod renderer;
pub mod rollout;
pub mod spans;
mod store_ready;

pub use cuebe_core::{clock, cue, graph, instance, module, plan, readiness, status, stdlib, trust};

pub use abstraction::Abstraction;
/// `#[derive(Abstraction)]`: see [`cuebe_macros::Abstraction`].
pub use cuebe_macros::Abstraction;
pub use cuebe_macros::embed_module;
pub use graph::{Graph, Node, ReadinessPredicate, Violation};
pub use module::{ModuleSet, ModuleSource, PlatformRef};
pub use renderer::{CueRenderer, RenderError, RenderInput, Renderer};
