//! # cuebe-testkit
//!
//! Tools to test cuebe operators and their platform modules:
//!
//! - [`golden`]: one input file in, one snapshot of the rendered Graph out.
//! - [`cue_cli`]: the official `cue` CLI at the bridge's pinned version, built once and cached,
//!   to check in-process renders against it.
pub mod cue_cli;
pub mod golden;
