//! Running an operator in production: [`leader`] election (one replica reconciles),
//! [`shard`]ing (several replicas, each reconciling its part) and [`metrics`] (Prometheus
//! metrics and health probes).
pub mod leader;
pub mod metrics;
pub mod shard;
