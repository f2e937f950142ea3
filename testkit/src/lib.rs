//! # cuebe-testkit
//!
//! Tools to test cuebe operators and their platform modules:
//!
//! - [`golden`]: one input file in, one snapshot of the rendered Graph out.
//! - [`cluster`]: a real control plane on loopback (etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler, kwok) built from pinned Go modules, and [`cluster::ack`], a stand-in for the
//!   ACK IAM controller.
//! - [`chaos`]: an operator process killed with SIGKILL and kube-apiserver and etcd restarted
//!   under it during a rollout, then its invariants checked from the cluster
//!   ([`cluster::TestCluster::restart_component`] stops and starts one component).
//! - [`dev`]: the control plane as the cluster of an operator's `dev` subcommand.
//! - [`fault`]: a relay in front of the API server that a test can freeze or cut.
//! - [`eventually()`](eventually::eventually): wait for a condition with a deadline, and say what
//!   was awaited when it does not come.
//! - [`oci_registry`]: a real OCI registry on loopback, and `cue mod publish` to it.
//! - [`cosign`]: signing a published module as `cosign sign --key` does.
//! - [`git_server`]: git repositories on this machine (`git+file://`, `git daemon` on loopback
//!   for `git://`, and `git http-backend` behind TLS from the testkit's PKI for `git+https://`),
//!   committing a platform module into one, and signing commits and tags with an SSH key.
//! - [`cue_cli`]: the official `cue` CLI at the bridge's pinned version, built once and cached.
//! - [`helm`]: the real `helm` at a pinned version, built from its Go module once and cached.
//! - [`crane`]: go-containerregistry's `crane`, to push, pull and unpack images.
//! - [`jaeger`]: a real OTLP receiver (Jaeger v2 at a pinned version, built from its Go module
//!   once and cached) and the traces it stored, as span trees.
//! - [`kro`]: kro's controller (at a pinned version, built from its Go module once and cached)
//!   run against a [`cluster::TestCluster`], with its request counts and memory, to measure cuebe
//!   side by side with a peer.
//! - [`metrics`]: the samples of one series in a `/metrics` page, to count requests.
//! - [`sharder`]: the sharder of kubernetes-controller-sharding (at a pinned version, built from
//!   its Go module once and cached), which spreads an operator's instances over its replicas.
pub mod chaos;
pub mod cluster;
pub mod cosign;
pub mod crane;
pub mod cue_cli;
pub mod dev;
pub mod eventually;
pub mod fault;
pub mod git_server;
mod go_install;
pub mod golden;
pub mod helm;
pub mod jaeger;
pub mod kro;
pub mod metrics;
pub mod oci_registry;
pub mod sharder;
pub mod spec;
