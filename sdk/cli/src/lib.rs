//! # cuebe-cli
//!
//! The command line of a cuebe operator: one [`App`] gives an abstraction's binary `run`,
//! `dev`, `crd`, `render`, `diff`, `explain`, `rbac` and `rollout`.
//!
//! ```no_run
//! # fn f<A: cuebe::Abstraction>() -> std::process::ExitCode {
//! cuebe_cli::App::<A>::new("my-operator").main()
//! # }
//! ```
//!
//! Every part is usable on its own: [`render`] (a manifest to its Graph, no cluster), [`diff`]
//! (what an apply would change, asked of the API server), [`explain`] (why an instance is where
//! it is), [`dev`] (the operator on a local cluster). Exit codes are one scheme for every
//! command: [`exit`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod dev;
pub mod diff;
pub mod exit;
pub mod explain;
pub mod kubectl_plugin;
pub mod published;
pub mod rbac;
pub mod render;
pub mod rollout;
mod rollout_command;
pub mod telemetry;
pub mod webhook;

pub use cli::App;
