//! # cuebe
//!
//! A Rust SDK for Kubernetes operators whose platform logic is written in CUE.
//!
//! Start with [`compiler::CueCompiler`]: give it a platform module ([`module::ModuleSet`]) and an
//! instance ([`compiler::CompileInput`]) and it returns a [`graph::Graph`], the artifact the
//! executor applies. Every part is usable on its own:
//!
//! - [`module`]: platform modules as in-memory files with an immutable digest.
//! - [`cue`]: the in-process CUE evaluator (a pool of built modules, time limits, structured errors).
//! - [`compiler`]: the module protocol, caching and the `renderHash`.
//! - [`graph`]: the Graph artifact, its validation and its drawings (DOT, Mermaid).
//! - [`controller`]: the generic operator; [`metrics`]: what it reports on `/metrics`.
#![deny(unsafe_code)]

pub mod abstraction;
pub mod cli;
pub mod compiler;
pub mod controller;
#[allow(unsafe_code)]
pub mod cue;
pub mod dev;
pub mod diff;
pub mod executor;
pub mod explain;
pub mod graph;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod module;
pub mod readiness;
pub mod render;
pub mod status;

pub use abstraction::Abstraction;
pub use compiler::{CompileError, CompileInput, Compiler, CueCompiler, InstanceMeta};
/// `#[derive(Abstraction)]`: see [`cuebe_macros::Abstraction`].
pub use cuebe_macros::Abstraction;
pub use cuebe_macros::embed_module;
pub use graph::{Graph, Node, ReadinessPredicate, Violation};
pub use module::{ModuleSet, ModuleSource, PlatformRef};
