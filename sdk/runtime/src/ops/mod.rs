//! Running an operator in production: [`leader`] election (one replica reconciles) and
//! [`metrics`] (Prometheus metrics and health probes).
pub mod leader;
pub mod metrics;
