//! Readiness: judging a live object against a node's `readyWhen` predicates, and its health.
//!
//! Owns: the [`Readiness`] trait and [`DefaultReadiness`], a pure function of (predicate, live
//! object). No cluster client here; the executor fetches the object and asks.
//!
//! A node without `readyWhen` is judged by its kind ([`kind_default`]): a Deployment,
//! StatefulSet, DaemonSet or ReplicaSet by its rollout, a Job by `Complete`, a CronJob once it
//! exists (it is accepted), a PVC by `Bound`, a Pod by `Ready`, any other kind by its kstatus
//! conditions (`Reconciling`, `Ready`, `Stalled`) when it has them, else by existing.
//!
//! **Health** is judged apart from readiness and never gates it ([`HealthVerdict`]): a CronJob
//! is Ready once accepted and healthy while its last run succeeded, so a failed run is reported
//! without the instance turning not-Ready and back on every run.
//!
//! Invariants:
//! - No predicate passes on an object whose controller has not observed its current generation
//!   (`status.observedGeneration < metadata.generation`, or a condition's own
//!   `observedGeneration` behind it).
//! - A terminal failure reported by the object's controller (`Stalled=True`, or a `*.Terminal`
//!   condition such as ACK's `ACK.Terminal=True`) is reported as terminal with its message, so the
//!   node goes to Error at once instead of waiting for its timeout.
use serde_json::Value;

use crate::graph::ReadinessPredicate;

/// The result of judging one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Every predicate passed.
    pub ready: bool,
    /// Why (or why not), for `status.nodes[id].readyDetails`.
    pub details: String,
    /// The object's controller reports a failure it will not recover from.
    pub terminal: Option<String>,
    /// How the object is doing apart from readiness, for kinds that have a notion of it (a
    /// CronJob's last run); `None` for the others.
    pub health: Option<HealthVerdict>,
}

/// How an object is doing apart from readiness, as judged from the object alone.
///
/// [`Health::Unknown`] means the object cannot tell right now (a CronJob's run is in progress):
/// the node keeps its last judgement ([`crate::plan::judge`]), so a CronJob whose last run
/// failed stays unhealthy while the next one runs, instead of flapping on every run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthVerdict {
    /// Healthy, unhealthy, or unknown for now.
    pub health: Health,
    /// Why, for `status.nodes[id].healthDetails`.
    pub details: String,
}

pub use crate::status::Health;

/// A readiness predicate ready to evaluate: its timeout parsed and, for `Cel`, its expression
/// compiled once (when the plan is built), so a malformed one fails at compile time.
#[derive(Debug, Clone)]
pub struct CompiledPredicate {
    /// The predicate as the Graph has it.
    pub predicate: ReadinessPredicate,
    /// Its timeout, parsed.
    pub timeout: Option<std::time::Duration>,
    program: Option<std::sync::Arc<cel::Program>>,
}

impl CompiledPredicate {
    /// Parses the timeout and compiles a CEL expression. The error names what is wrong.
    ///
    /// ```
    /// use cuebe_core::graph::ReadinessPredicate;
    /// use cuebe_core::readiness::CompiledPredicate;
    /// let bad = ReadinessPredicate::Cel { expression: "self.(".into(), message: None, timeout: None };
    /// assert!(CompiledPredicate::compile(&bad).unwrap_err().contains("does not compile"));
    /// ```
    pub fn compile(predicate: &ReadinessPredicate) -> Result<Self, String> {
        let timeout = predicate.timeout().map_err(|e| format!("timeout: {e}"))?;
        let program = match predicate {
            ReadinessPredicate::Cel { expression, .. } => Some(std::sync::Arc::new(
                cel::Program::compile(expression)
                    .map_err(|e| format!("expression: does not compile: {e}"))?,
            )),
            _ => None,
        };
        Ok(Self {
            predicate: predicate.clone(),
            timeout,
            program,
        })
    }

    /// Compiles a list (for callers holding predicates outside a plan).
    pub fn compile_all(predicates: &[ReadinessPredicate]) -> Result<Vec<Self>, String> {
        predicates.iter().map(Self::compile).collect()
    }
}

/// A predicate that cannot be evaluated (a CEL expression that is not a boolean).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("readiness predicate {predicate}: {message}")]
pub struct ReadinessError {
    /// The predicate's label.
    pub predicate: String,
    /// What is wrong.
    pub message: String,
}

/// Judges live objects. Swap it to add predicate semantics of your own.
///
/// ```
/// use cuebe_core::readiness::{CompiledPredicate, DefaultReadiness, Readiness};
/// use cuebe_core::graph::ReadinessPredicate;
/// let live = serde_json::json!({"metadata": {"name": "x"}});
/// let exists = CompiledPredicate::compile(&ReadinessPredicate::Exists { timeout: None }).unwrap();
/// let v = DefaultReadiness.evaluate(&[exists], &live).unwrap();
/// assert!(v.ready);
/// ```
pub trait Readiness: Send + Sync {
    /// Judges `live` against all `predicates` (empty means the kind's built-in judgement,
    /// [`kind_default`]), and its health.
    fn evaluate(
        &self,
        predicates: &[CompiledPredicate],
        live: &Value,
    ) -> Result<Verdict, ReadinessError>;
}

/// The built-in predicate semantics.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultReadiness;

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn int_at(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

fn conditions(live: &Value) -> &[Value] {
    live.pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn condition<'a>(live: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions(live)
        .iter()
        .find(|c| str_at(c, "/type") == Some(type_))
}

/// `Some(reason)` when the controller has not observed the current generation.
fn generation_lag(live: &Value) -> Option<String> {
    let generation = int_at(live, "/metadata/generation")?;
    match int_at(live, "/status/observedGeneration") {
        Some(observed) if observed < generation => Some(format!(
            "its controller has observed generation {observed}, not the current {generation}"
        )),
        _ => None,
    }
}

fn terminal(live: &Value) -> Option<String> {
    let is_job =
        str_at(live, "/apiVersion") == Some("batch/v1") && str_at(live, "/kind") == Some("Job");
    conditions(live).iter().find_map(|c| {
        let type_ = str_at(c, "/type")?;
        let is_terminal = type_ == "Stalled"
            || type_.ends_with(".Terminal")
            || type_ == "Terminal"
            || (is_job && type_ == "Failed");
        (is_terminal && str_at(c, "/status") == Some("True")).then(|| {
            let message = str_at(c, "/message").unwrap_or("no message");
            format!("{type_}: {message}")
        })
    })
}

fn deployment_available(live: &Value) -> Result<String, String> {
    // Before the deployment controller reports, the message is the one it reads just after
    // (no replica available yet): a new Deployment then changes the instance's status twice
    // (applied, Ready) rather than three times, one status write less per instance.
    let want = int_at(live, "/spec/replicas").unwrap_or(1);
    let updated = int_at(live, "/status/updatedReplicas").unwrap_or(0);
    let available = int_at(live, "/status/availableReplicas").unwrap_or(0);
    let total = int_at(live, "/status/replicas").unwrap_or(0);
    let available_cond =
        condition(live, "Available").and_then(|c| str_at(c, "/status")) == Some("True");
    if !available_cond {
        return Err(format!(
            "Available is not True ({available}/{want} replicas available)"
        ));
    }
    if updated < want || available < want || total > updated {
        return Err(format!(
            "rollout in progress: {updated} updated, {available} available, {total} total of {want}"
        ));
    }
    Ok(format!("{available}/{want} replicas available"))
}

/// The judgement of a node without `readyWhen`: the built-in one for its kind, or, for a kind
/// without one and without kstatus conditions, that it exists.
///
/// | kind | Ready when |
/// |------|------------|
/// | Deployment | `Available=True` and the rollout complete (updated = available = desired, no old replicas) |
/// | StatefulSet | all replicas ready and at the update revision (`currentRevision == updateRevision`; `OnDelete` or a partition: ready only) |
/// | DaemonSet | every scheduled pod updated, available and ready |
/// | ReplicaSet | all replicas available |
/// | Job | `Complete=True` (`Failed=True` is a terminal failure) |
/// | CronJob | it exists: the API server accepted its schedule; its runs are its health |
/// | PersistentVolumeClaim | phase `Bound` |
/// | Pod | `Ready=True`, or phase `Succeeded` |
/// | any other | not `Reconciling=True`; `Ready=True` where it has a `Ready` condition (`Stalled=True` is terminal) |
///
/// Every kind also waits while its controller has not observed the current generation.
///
/// ```
/// use cuebe_core::readiness::kind_default;
/// let claim = serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
///     "metadata": {"name": "data"}, "status": {"phase": "Pending"}});
/// assert!(kind_default(&claim).unwrap_err().contains("waiting for Bound"));
/// let config = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
/// assert_eq!(kind_default(&config), Ok("exists".to_string()));
/// ```
pub fn kind_default(live: &Value) -> Result<String, String> {
    builtin(live).unwrap_or_else(|| Ok("exists".into()))
}

/// kstatus-style "current" for the built-in kinds, each by its own status fields; any other
/// kind by its `Reconciling`/`Ready` conditions (the generation guard runs before this). `None`
/// for a kind without built-in judgement and without those conditions.
fn builtin(live: &Value) -> Option<Result<String, String>> {
    let kind = str_at(live, "/kind").unwrap_or_default();
    let api_version = str_at(live, "/apiVersion").unwrap_or_default();
    let int = |p: &str| int_at(live, p).unwrap_or(0);
    let reported = || int_at(live, "/status/observedGeneration").is_some();
    Some(match (api_version, kind) {
        ("apps/v1", "Deployment") => deployment_available(live),
        ("apps/v1", "StatefulSet") => {
            if !reported() {
                return Some(Err(
                    "the statefulset controller has not reported status yet".into(),
                ));
            }
            let want = int_at(live, "/spec/replicas").unwrap_or(1);
            let ready = int("/status/readyReplicas");
            let updated = int("/status/updatedReplicas");
            let total = int("/status/replicas");
            let rolling = str_at(live, "/spec/updateStrategy/type") != Some("OnDelete");
            let partition = int("/spec/updateStrategy/rollingUpdate/partition");
            if total > want {
                Err(format!("scaling down: {total} replicas, want {want}"))
            } else if ready < want {
                Err(format!("{ready}/{want} replicas ready"))
            } else if rolling
                && partition == 0
                && (updated < want || {
                    let update = str_at(live, "/status/updateRevision");
                    update.is_some() && update != str_at(live, "/status/currentRevision")
                })
            {
                Err(format!(
                    "rollout in progress: {updated}/{want} replicas at the update revision"
                ))
            } else {
                Ok(format!("{ready}/{want} replicas ready"))
            }
        }
        ("apps/v1", "DaemonSet") => {
            if !reported() {
                return Some(Err(
                    "the daemonset controller has not reported status yet".into()
                ));
            }
            let desired = int("/status/desiredNumberScheduled");
            let updated = int("/status/updatedNumberScheduled");
            let available = int("/status/numberAvailable");
            let ready = int("/status/numberReady");
            if updated < desired {
                Err(format!(
                    "rollout in progress: {updated}/{desired} pods updated"
                ))
            } else if available < desired || ready < desired {
                Err(format!(
                    "{available}/{desired} pods available, {ready} ready"
                ))
            } else {
                Ok(format!("{available}/{desired} pods available"))
            }
        }
        ("apps/v1", "ReplicaSet") => {
            if !reported() {
                return Some(Err(
                    "the replicaset controller has not reported status yet".into()
                ));
            }
            let want = int_at(live, "/spec/replicas").unwrap_or(1);
            let available = int("/status/availableReplicas");
            let ready = int("/status/readyReplicas");
            if available < want || ready < want {
                Err(format!("{available}/{want} replicas available"))
            } else {
                Ok(format!("{available}/{want} replicas available"))
            }
        }
        ("batch/v1", "Job") => {
            let is_true =
                |t: &str| condition(live, t).and_then(|c| str_at(c, "/status")) == Some("True");
            if is_true("Complete") {
                Ok(format!("complete ({} succeeded)", int("/status/succeeded")))
            } else if is_true("Failed") {
                // Also reported as terminal by `terminal()`: a failed Job will not become
                // complete by waiting.
                Err(format!(
                    "failed: {}",
                    condition(live, "Failed")
                        .and_then(|c| str_at(c, "/message"))
                        .unwrap_or("no message")
                ))
            } else if is_true("Suspended") {
                Err("suspended".into())
            } else {
                Err(format!(
                    "running: {} active, {} succeeded, {} failed",
                    int("/status/active"),
                    int("/status/succeeded"),
                    int("/status/failed")
                ))
            }
        }
        // A CronJob has no status to converge: once the API server accepted it (its schedule
        // validated), it is what was asked for. How its runs go is its health.
        ("batch/v1", "CronJob") => {
            let schedule = str_at(live, "/spec/schedule").unwrap_or("?");
            if live.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
                Ok(format!("accepted, schedule {schedule:?}, suspended"))
            } else {
                Ok(format!("accepted, schedule {schedule:?}"))
            }
        }
        ("v1", "PersistentVolumeClaim") => match str_at(live, "/status/phase") {
            Some("Bound") => Ok("Bound".into()),
            Some("Lost") => Err("phase is Lost: the volume it was bound to is gone".into()),
            // The object cannot say which storage class binding mode applies, so the message
            // names the one case that never binds without a consumer.
            other => Err(format!(
                "phase is {}, waiting for Bound (a claim of a WaitForFirstConsumer storage \
                 class binds only once a pod using it is scheduled: give this node \
                 readyWhen [{{type: Exists}}] if a node that runs that pod depends on it)",
                other.unwrap_or("unset")
            )),
        },
        ("v1", "Pod") => match str_at(live, "/status/phase") {
            Some("Succeeded") => Ok("Succeeded".into()),
            _ => match condition(live, "Ready").and_then(|c| str_at(c, "/status")) {
                Some("True") => Ok("Ready=True".into()),
                other => Err(format!("Ready is {}", other.unwrap_or("Unknown"))),
            },
        },
        _ => return kstatus_conditions(live),
    })
}

/// A custom resource by the kstatus conventions: `Reconciling=True` is in progress, `Ready`
/// must be True and set for the current generation; `Stalled=True` is terminal (`terminal()`).
/// `None` when it has neither condition.
fn kstatus_conditions(live: &Value) -> Option<Result<String, String>> {
    if let Some(c) = condition(live, "Reconciling")
        && str_at(c, "/status") == Some("True")
    {
        return Some(Err(format!(
            "Reconciling: {}",
            str_at(c, "/message").unwrap_or("")
        )));
    }
    let c = condition(live, "Ready")?;
    let stale = matches!(
        (int_at(c, "/observedGeneration"), int_at(live, "/metadata/generation")),
        (Some(o), Some(g)) if o < g
    );
    Some(match str_at(c, "/status") {
        _ if stale => Err("Ready was set for an older generation".into()),
        Some("True") => Ok("Ready=True".into()),
        other => Err(match str_at(c, "/message").filter(|m| !m.is_empty()) {
            Some(m) => format!("Ready is {}: {m}", other.unwrap_or("Unknown")),
            None => format!("Ready is {}", other.unwrap_or("Unknown")),
        }),
    })
}

/// The health of the kinds that have one apart from readiness.
///
/// A CronJob's from its status alone: the executor reads the object anyway and its watch fires
/// when the status changes, whereas judging from the Jobs it owns would take a list per pass,
/// a watch on Jobs (which the graph does not render) and permission to read them. The CronJob
/// controller removes a finished Job from `status.active` and, when it succeeded, moves
/// `status.lastSuccessfulTime` to its completion in the same write, so:
/// - a run in progress (`active` not empty): unknown, the last judgement stands;
/// - never scheduled: healthy;
/// - `lastSuccessfulTime` at or after `lastScheduleTime`: the last run succeeded;
/// - otherwise the last scheduled run finished without succeeding (failed, or deleted).
fn health(live: &Value) -> Option<HealthVerdict> {
    let verdict = |health, details: String| Some(HealthVerdict { health, details });
    match (str_at(live, "/apiVersion"), str_at(live, "/kind")) {
        (Some("batch/v1"), Some("CronJob")) => {
            let active: Vec<&str> = live
                .pointer("/status/active")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|j| str_at(j, "/name")).collect())
                .unwrap_or_default();
            let scheduled = str_at(live, "/status/lastScheduleTime");
            let succeeded = str_at(live, "/status/lastSuccessfulTime");
            let parse = |t: Option<&str>| t.and_then(|t| t.parse::<crate::clock::Timestamp>().ok());
            if !active.is_empty() {
                return verdict(
                    Health::Unknown,
                    format!("a run is in progress ({})", active.join(", ")),
                );
            }
            let Some(scheduled) = scheduled else {
                return verdict(Health::Healthy, "no run yet".into());
            };
            match (parse(Some(scheduled)), parse(succeeded)) {
                (Some(s), Some(ok)) if ok >= s => verdict(
                    Health::Healthy,
                    format!("the last run (scheduled {scheduled}) succeeded"),
                ),
                (Some(_), _) => verdict(
                    Health::Unhealthy,
                    format!(
                        "the last run (scheduled {scheduled}) did not succeed; last success: {} \
                         (its Jobs say why: kubectl describe cronjob {})",
                        succeeded.unwrap_or("never"),
                        str_at(live, "/metadata/name").unwrap_or_default()
                    ),
                ),
                (None, _) => verdict(
                    Health::Unknown,
                    format!("status.lastScheduleTime {scheduled:?} is not a time"),
                ),
            }
        }
        _ => None,
    }
}

fn check(
    compiled: &CompiledPredicate,
    live: &Value,
) -> Result<Result<String, String>, ReadinessError> {
    let predicate = &compiled.predicate;
    Ok(match predicate {
        ReadinessPredicate::Exists { .. } => Ok("exists".into()),
        ReadinessPredicate::ConditionMatch {
            condition_type,
            status,
            reason,
            ..
        } => match condition(live, condition_type) {
            None => Err(format!("no {condition_type} condition yet")),
            Some(c) => {
                let got = str_at(c, "/status").unwrap_or("");
                let got_reason = str_at(c, "/reason");
                let stale = match (
                    int_at(c, "/observedGeneration"),
                    int_at(live, "/metadata/generation"),
                ) {
                    (Some(o), Some(g)) => o < g,
                    _ => false,
                };
                if stale {
                    Err(format!("{condition_type} was set for an older generation"))
                } else if got != status {
                    Err(format!("{condition_type} is {got}, waiting for {status}"))
                } else if let Some(r) = reason
                    && got_reason != Some(r.as_str())
                {
                    Err(format!(
                        "{condition_type} reason is {}, waiting for {r}",
                        got_reason.unwrap_or("empty")
                    ))
                } else {
                    Ok(format!("{condition_type}={status}"))
                }
            }
        },
        ReadinessPredicate::DeploymentAvailable { .. } => deployment_available(live),
        ReadinessPredicate::ServiceLoadBalancerReady { .. } => {
            if str_at(live, "/spec/type") != Some("LoadBalancer") {
                Ok("not a LoadBalancer service".into())
            } else {
                let ingress = live
                    .pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0);
                if ingress > 0 {
                    Ok("load balancer has an address".into())
                } else {
                    Err("waiting for a load balancer address".into())
                }
            }
        }
        ReadinessPredicate::Current { .. } => builtin(live).unwrap_or_else(|| Ok("current".into())),
        ReadinessPredicate::Cel {
            expression,
            message,
            ..
        } => {
            let err = |message: String| ReadinessError {
                predicate: predicate.label(),
                message,
            };
            // `CompiledPredicate::compile` is the only constructor and compiles every Cel.
            let Some(program) = &compiled.program else {
                return Err(err("was not compiled".into()));
            };
            let mut ctx = cel::Context::default();
            let value = cel::to_value(live).map_err(|e| err(e.to_string()))?;
            ctx.add_variable_from_value("self", value);
            match program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => Ok(format!("{expression} is true")),
                // The author's message is what people read; the expression is for them too
                // when there is none.
                Ok(cel::Value::Bool(false)) => Err(match message {
                    Some(m) => m.clone(),
                    None => format!("{expression} is false"),
                }),
                // A missing field is "not yet", not a broken predicate.
                Err(e) => Err(match message {
                    Some(m) => format!("{m} ({expression}: {e})"),
                    None => format!("{expression}: {e}"),
                }),
                Ok(other) => return Err(err(format!("must be a boolean, got {other:?}"))),
            }
        }
    })
}

impl Readiness for DefaultReadiness {
    fn evaluate(
        &self,
        predicates: &[CompiledPredicate],
        live: &Value,
    ) -> Result<Verdict, ReadinessError> {
        let terminal = terminal(live);
        let health = health(live);
        let waiting = |details: String| Verdict {
            ready: false,
            details,
            terminal: terminal.clone(),
            health: health.clone(),
        };
        if let Some(lag) = generation_lag(live) {
            return Ok(waiting(lag));
        }
        let mut passed = Vec::new();
        if predicates.is_empty() {
            match kind_default(live) {
                Ok(detail) => passed.push(detail),
                Err(details) => return Ok(waiting(details)),
            }
        }
        for p in predicates {
            match check(p, live)? {
                Ok(detail) => passed.push(detail),
                Err(details) => return Ok(waiting(details)),
            }
        }
        Ok(Verdict {
            ready: terminal.is_none(),
            details: passed.join("; "),
            terminal,
            health,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(p: ReadinessPredicate, live: Value) -> Verdict {
        DefaultReadiness
            .evaluate(&[CompiledPredicate::compile(&p).unwrap()], &live)
            .unwrap()
    }

    fn deployment(
        generation: i64,
        observed: i64,
        available: &str,
        updated: i64,
        ready: i64,
    ) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "generation": generation},
            "spec": {"replicas": 2},
            "status": {
                "observedGeneration": observed, "replicas": updated, "updatedReplicas": updated,
                "availableReplicas": ready,
                "conditions": [{"type": "Available", "status": available}]
            }
        })
    }

    #[test]
    fn deployment_available_needs_the_current_generation_and_a_complete_rollout() {
        let p = || ReadinessPredicate::DeploymentAvailable { timeout: None };
        assert!(eval(p(), deployment(2, 2, "True", 2, 2)).ready);
        let stale = eval(p(), deployment(3, 2, "True", 2, 2));
        assert!(!stale.ready);
        assert!(
            stale.details.contains("not the current 3"),
            "{}",
            stale.details
        );
        assert!(!eval(p(), deployment(2, 2, "True", 1, 1)).ready);
        assert!(!eval(p(), deployment(2, 2, "False", 2, 0)).ready);
        let fresh = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"generation": 1}, "spec": {"replicas": 2}});
        let fresh = eval(p(), fresh);
        assert!(!fresh.ready);
        // Reported but not available yet reads the same: no status write in between.
        assert_eq!(
            fresh.details,
            eval(p(), deployment(1, 1, "False", 2, 0)).details
        );
        assert!(
            fresh.details.contains("0/2 replicas available"),
            "{}",
            fresh.details
        );
    }

    #[test]
    fn condition_match_checks_status_reason_and_generation() {
        let p = |reason: Option<&str>| ReadinessPredicate::ConditionMatch {
            condition_type: "ACK.ResourceSynced".into(),
            status: "True".into(),
            reason: reason.map(str::to_string),
            timeout: None,
        };
        let role = |status: &str| json!({"metadata": {"generation": 1}, "status": {"conditions": [{"type": "ACK.ResourceSynced", "status": status, "reason": "Synced"}]}});
        assert!(eval(p(None), role("True")).ready);
        assert!(!eval(p(None), role("False")).ready);
        assert!(eval(p(Some("Synced")), role("True")).ready);
        assert!(!eval(p(Some("Other")), role("True")).ready);
        assert!(!eval(p(None), json!({"metadata": {}})).ready);
    }

    #[test]
    fn ack_terminal_is_terminal_with_its_message() {
        let live = json!({"status": {"conditions": [
            {"type": "ACK.Terminal", "status": "True", "message": "AccessDenied: nope"},
            {"type": "ACK.ResourceSynced", "status": "False"}
        ]}});
        let v = eval(ReadinessPredicate::Exists { timeout: None }, live);
        assert!(!v.ready);
        assert_eq!(
            v.terminal.as_deref(),
            Some("ACK.Terminal: AccessDenied: nope")
        );
    }

    #[test]
    fn cel_over_the_live_object() {
        let p = |e: &str| ReadinessPredicate::Cel {
            expression: e.into(),
            message: None,
            timeout: None,
        };
        let pvc = json!({"status": {"phase": "Bound"}});
        assert!(eval(p("self.status.phase == 'Bound'"), pvc.clone()).ready);
        assert!(!eval(p("self.status.phase == 'Pending'"), pvc.clone()).ready);
        assert!(!eval(p("self.status.missing == 1"), pvc.clone()).ready);
        let compiled = CompiledPredicate::compile(&p("self.status.phase")).unwrap();
        assert!(DefaultReadiness.evaluate(&[compiled], &pvc).is_err());
        assert!(CompiledPredicate::compile(&p("self.(")).is_err());
    }

    #[test]
    fn load_balancer_and_current() {
        let svc = |ingress: Value| json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": ingress}}});
        assert!(
            !eval(
                ReadinessPredicate::ServiceLoadBalancerReady { timeout: None },
                svc(json!([]))
            )
            .ready
        );
        assert!(
            eval(
                ReadinessPredicate::ServiceLoadBalancerReady { timeout: None },
                svc(json!([{"ip": "1.2.3.4"}]))
            )
            .ready
        );
        let cr = |ready: &str| json!({"metadata": {"generation": 4}, "status": {"observedGeneration": 4, "conditions": [{"type": "Ready", "status": ready}]}});
        assert!(eval(ReadinessPredicate::Current { timeout: None }, cr("True")).ready);
        assert!(!eval(ReadinessPredicate::Current { timeout: None }, cr("False")).ready);
    }

    #[test]
    fn current_judges_each_workload_kind_by_its_own_rollout() {
        let current = || ReadinessPredicate::Current { timeout: None };
        let sts = |ready: i64, updated: i64, update_rev: &str| {
            json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"generation": 2}, "spec": {"replicas": 3},
                "status": {"observedGeneration": 2, "replicas": 3, "readyReplicas": ready,
                           "updatedReplicas": updated, "currentRevision": "r1", "updateRevision": update_rev}
            })
        };
        let ds = |updated: i64, available: i64| {
            json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"generation": 1},
                "status": {"observedGeneration": 1, "desiredNumberScheduled": 2,
                           "updatedNumberScheduled": updated, "numberAvailable": available, "numberReady": available}
            })
        };
        let job = |condition: &str| {
            json!({
                "apiVersion": "batch/v1", "kind": "Job", "metadata": {"generation": 1},
                "status": {"active": 1, "conditions": [{"type": condition, "status": "True", "message": "BackoffLimitExceeded"}]}
            })
        };
        let cases = [
            // Before the fix a generation-current StatefulSet counted as Ready at once.
            ("statefulset rolling", sts(3, 1, "r2"), false),
            ("statefulset not ready", sts(1, 3, "r1"), false),
            ("statefulset done", sts(3, 3, "r1"), true),
            ("daemonset rolling", ds(1, 2), false),
            ("daemonset unavailable", ds(2, 1), false),
            ("daemonset done", ds(2, 2), true),
            ("job running", job("Suspended"), false),
            ("job complete", job("Complete"), true),
            (
                "pvc pending",
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Pending"}}),
                false,
            ),
            (
                "pvc bound",
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Bound"}}),
                true,
            ),
            (
                "custom, no conditions",
                json!({"apiVersion": "x/v1", "kind": "Thing", "metadata": {"generation": 1}, "status": {"observedGeneration": 1}}),
                true,
            ),
            (
                "custom, Ready False",
                json!({"apiVersion": "x/v1", "kind": "Thing", "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
                false,
            ),
            (
                "statefulset without status",
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"generation": 1}, "spec": {}}),
                false,
            ),
        ];
        for (name, live, ready) in cases {
            assert_eq!(eval(current(), live).ready, ready, "{name}");
        }
        let failed = eval(current(), job("Failed"));
        assert!(!failed.ready);
        assert_eq!(
            failed.terminal.as_deref(),
            Some("Failed: BackoffLimitExceeded")
        );
    }

    #[test]
    fn a_cel_message_is_what_people_read_while_the_expression_is_false() {
        let p = |e: &str, m: Option<&str>| ReadinessPredicate::Cel {
            expression: e.into(),
            message: m.map(str::to_string),
            timeout: None,
        };
        let queue = json!({"status": {"consumers": 0}});
        let said = "the queue has no consumer yet";
        let cases = [
            (p("self.status.consumers > 0", Some(said)), said.to_string()),
            (
                p("self.status.consumers > 0", None),
                "self.status.consumers > 0 is false".to_string(),
            ),
        ];
        for (predicate, details) in cases {
            let v = eval(predicate, queue.clone());
            assert!(!v.ready);
            assert_eq!(v.details, details);
        }
        // A field that is not there yet: the message, and the expression's error after it.
        let missing = eval(
            p("self.status.lag < 10", Some("lag unknown")),
            queue.clone(),
        );
        assert!(
            missing
                .details
                .starts_with("lag unknown (self.status.lag < 10: "),
            "{}",
            missing.details
        );
        // True: the expression, as before.
        let ok = eval(p("self.status.consumers == 0", Some(said)), queue);
        assert!(ok.ready);
        assert_eq!(ok.details, "self.status.consumers == 0 is true");
    }

    /// A node without `readyWhen`: what each kind needs to be Ready.
    #[test]
    fn without_ready_when_each_kind_is_judged_by_its_own_status() {
        let judge = |live: Value| DefaultReadiness.evaluate(&[], &live).unwrap();
        let job = |conditions: Value| {
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "generation": 1},
                   "status": {"active": 1, "conditions": conditions}})
        };
        let sts = |ready: i64, updated: i64, current: &str, observed: i64| {
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "generation": 2},
                   "spec": {"replicas": 3},
                   "status": {"observedGeneration": observed, "replicas": 3, "readyReplicas": ready,
                              "updatedReplicas": updated, "currentRevision": current, "updateRevision": "db-2"}})
        };
        let ds = |desired: i64, ready: i64, updated: i64| {
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "generation": 1},
                   "status": {"observedGeneration": 1, "desiredNumberScheduled": desired, "numberReady": ready,
                              "numberAvailable": ready, "updatedNumberScheduled": updated}})
        };
        let pvc = |phase: &str| {
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                   "status": {"phase": phase}})
        };
        let custom = |conditions: Value| {
            json!({"apiVersion": "example.com/v1", "kind": "Queue", "metadata": {"name": "q", "generation": 3},
                   "status": {"observedGeneration": 3, "conditions": conditions}})
        };
        let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "report", "generation": 4},
                          "spec": {"schedule": "0 * * * *"}, "status": {}});
        // (case, object, ready, details contain, terminal)
        let cases: Vec<(&str, Value, bool, &str, bool)> = vec![
            (
                "configmap exists",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
                true,
                "exists",
                false,
            ),
            (
                "deployment rolling out",
                deployment(2, 2, "True", 1, 1),
                false,
                "rollout in progress",
                false,
            ),
            (
                "deployment available",
                deployment(2, 2, "True", 2, 2),
                true,
                "2/2 replicas available",
                false,
            ),
            (
                "job running",
                job(json!([])),
                false,
                "running: 1 active",
                false,
            ),
            (
                "job suspended",
                job(json!([{"type": "Suspended", "status": "True"}])),
                false,
                "suspended",
                false,
            ),
            (
                "job complete",
                job(json!([{"type": "Complete", "status": "True"}])),
                true,
                "complete",
                false,
            ),
            (
                "job failed is terminal",
                job(
                    json!([{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]),
                ),
                false,
                "failed: BackoffLimitExceeded",
                true,
            ),
            (
                "cronjob accepted",
                cron.clone(),
                true,
                "accepted, schedule \"0 * * * *\"",
                false,
            ),
            (
                "statefulset controller behind",
                sts(3, 3, "db-2", 1),
                false,
                "observed generation 1",
                false,
            ),
            (
                "statefulset not all ready",
                sts(2, 3, "db-2", 2),
                false,
                "2/3 replicas ready",
                false,
            ),
            (
                "statefulset old revision",
                sts(3, 3, "db-1", 2),
                false,
                "rollout in progress",
                false,
            ),
            (
                "statefulset done",
                sts(3, 3, "db-2", 2),
                true,
                "3/3 replicas ready",
                false,
            ),
            (
                "daemonset updating",
                ds(3, 3, 2),
                false,
                "2/3 pods updated",
                false,
            ),
            (
                "daemonset not ready",
                ds(3, 2, 3),
                false,
                "2/3 pods available",
                false,
            ),
            (
                "daemonset done",
                ds(3, 3, 3),
                true,
                "3/3 pods available",
                false,
            ),
            (
                "pvc pending names WaitForFirstConsumer",
                pvc("Pending"),
                false,
                "WaitForFirstConsumer",
                false,
            ),
            ("pvc lost", pvc("Lost"), false, "Lost", false),
            ("pvc bound", pvc("Bound"), true, "Bound", false),
            (
                "custom, no conditions",
                custom(json!([])),
                true,
                "exists",
                false,
            ),
            (
                "custom reconciling",
                custom(
                    json!([{"type": "Reconciling", "status": "True", "message": "creating"}, {"type": "Ready", "status": "True"}]),
                ),
                false,
                "Reconciling: creating",
                false,
            ),
            (
                "custom not ready says why",
                custom(json!([{"type": "Ready", "status": "False", "message": "no broker"}])),
                false,
                "Ready is False: no broker",
                false,
            ),
            (
                "custom Ready for an older generation",
                custom(json!([{"type": "Ready", "status": "True", "observedGeneration": 2}])),
                false,
                "older generation",
                false,
            ),
            (
                "custom ready",
                custom(json!([{"type": "Ready", "status": "True", "observedGeneration": 3}])),
                true,
                "Ready=True",
                false,
            ),
            (
                "custom stalled is terminal",
                custom(json!([{"type": "Stalled", "status": "True", "message": "bad config"}])),
                false,
                "",
                true,
            ),
        ];
        for (name, live, ready, details, terminal) in cases {
            let v = judge(live);
            assert_eq!(v.ready, ready, "{name}: {v:?}");
            assert!(v.details.contains(details), "{name}: {}", v.details);
            assert_eq!(v.terminal.is_some(), terminal, "{name}: {v:?}");
        }
        // An explicit Exists still means only that.
        let exists =
            CompiledPredicate::compile(&ReadinessPredicate::Exists { timeout: None }).unwrap();
        assert!(
            DefaultReadiness
                .evaluate(&[exists], &pvc("Pending"))
                .unwrap()
                .ready
        );
    }

    #[test]
    fn a_cronjob_is_healthy_by_its_last_run_whatever_its_ready_when() {
        let cron = |status: Value| {
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "report"},
                   "spec": {"schedule": "*/5 * * * *"}, "status": status})
        };
        let running = json!([{"kind": "Job", "name": "report-29000005"}]);
        // (case, status, health, details contain)
        let cases = [
            ("never run", json!({}), Health::Healthy, "no run yet"),
            (
                "last run succeeded",
                json!({"lastScheduleTime": "2026-12-02T10:05:00Z", "lastSuccessfulTime": "2026-12-02T10:05:12Z"}),
                Health::Healthy,
                "succeeded",
            ),
            (
                "succeeded within the second it was scheduled",
                json!({"lastScheduleTime": "2026-12-02T10:05:00Z", "lastSuccessfulTime": "2026-12-02T10:05:00Z"}),
                Health::Healthy,
                "succeeded",
            ),
            (
                "last run failed after an earlier success",
                json!({"lastScheduleTime": "2026-12-02T10:05:00Z", "lastSuccessfulTime": "2026-12-02T10:00:09Z"}),
                Health::Unhealthy,
                "did not succeed; last success: 2026-12-02T10:00:09Z",
            ),
            (
                "first run failed",
                json!({"lastScheduleTime": "2026-12-02T10:05:00Z"}),
                Health::Unhealthy,
                "last success: never",
            ),
            (
                "a run in progress cannot tell",
                json!({"active": running, "lastScheduleTime": "2026-12-02T10:05:00Z"}),
                Health::Unknown,
                "report-29000005",
            ),
        ];
        let accepted = |p: Option<ReadinessPredicate>, live: &Value| {
            let compiled: Vec<CompiledPredicate> = p
                .iter()
                .map(|p| CompiledPredicate::compile(p).unwrap())
                .collect();
            DefaultReadiness.evaluate(&compiled, live).unwrap()
        };
        for (name, status, health, details) in cases {
            let live = cron(status);
            for p in [None, Some(ReadinessPredicate::Exists { timeout: None })] {
                let v = accepted(p.clone(), &live);
                assert!(
                    v.ready,
                    "{name}: a CronJob is Ready whatever its runs do: {v:?}"
                );
                let h = v.health.expect("a CronJob has a health");
                assert_eq!(h.health, health, "{name} ({p:?})");
                assert!(h.details.contains(details), "{name}: {}", h.details);
            }
        }
        // Other kinds have no health of their own.
        assert_eq!(
            eval(
                ReadinessPredicate::Exists { timeout: None },
                deployment(1, 1, "True", 2, 2)
            )
            .health,
            None
        );
    }
}
