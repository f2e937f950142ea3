//! Readiness: judging a live object against a node's `readyWhen` predicates.
//!
//! Owns: the [`Readiness`] trait and [`DefaultReadiness`], a pure function of (predicate, live
//! object). No cluster client here; the executor fetches the object and asks.
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
}

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
    /// let bad = ReadinessPredicate::Cel { expression: "self.(".into(), timeout: None };
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
    /// Judges `live` against all `predicates` (empty means "exists").
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
    if int_at(live, "/status/observedGeneration").is_none() {
        return Err("the deployment controller has not reported status yet".into());
    }
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

/// kstatus-style "current" for the built-in workload kinds, each by its own rollout fields; any
/// other kind by its `Reconciling`/`Ready` conditions (the generation guard runs before this).
fn current(live: &Value) -> Result<String, String> {
    let kind = str_at(live, "/kind").unwrap_or_default();
    let api_version = str_at(live, "/apiVersion").unwrap_or_default();
    let int = |p: &str| int_at(live, p).unwrap_or(0);
    let reported = || int_at(live, "/status/observedGeneration").is_some();
    match (api_version, kind) {
        ("apps/v1", "Deployment") => deployment_available(live),
        ("apps/v1", "StatefulSet") => {
            if !reported() {
                return Err("the statefulset controller has not reported status yet".into());
            }
            let want = int_at(live, "/spec/replicas").unwrap_or(1);
            let ready = int("/status/readyReplicas");
            let updated = int("/status/updatedReplicas");
            let total = int("/status/replicas");
            let rolling = str_at(live, "/spec/updateStrategy/type") != Some("OnDelete");
            let partition = int("/spec/updateStrategy/rollingUpdate/partition");
            if total > want {
                return Err(format!("scaling down: {total} replicas, want {want}"));
            }
            if ready < want {
                return Err(format!("{ready}/{want} replicas ready"));
            }
            if rolling && partition == 0 {
                let update = str_at(live, "/status/updateRevision");
                let current = str_at(live, "/status/currentRevision");
                if updated < want || (update.is_some() && update != current) {
                    return Err(format!(
                        "rollout in progress: {updated}/{want} replicas at the update revision"
                    ));
                }
            }
            Ok(format!("{ready}/{want} replicas ready"))
        }
        ("apps/v1", "DaemonSet") => {
            if !reported() {
                return Err("the daemonset controller has not reported status yet".into());
            }
            let desired = int("/status/desiredNumberScheduled");
            let updated = int("/status/updatedNumberScheduled");
            let available = int("/status/numberAvailable");
            let ready = int("/status/numberReady");
            if updated < desired {
                return Err(format!(
                    "rollout in progress: {updated}/{desired} pods updated"
                ));
            }
            if available < desired || ready < desired {
                return Err(format!(
                    "{available}/{desired} pods available, {ready} ready"
                ));
            }
            Ok(format!("{available}/{desired} pods available"))
        }
        ("apps/v1", "ReplicaSet") => {
            if !reported() {
                return Err("the replicaset controller has not reported status yet".into());
            }
            let want = int_at(live, "/spec/replicas").unwrap_or(1);
            let available = int("/status/availableReplicas");
            let ready = int("/status/readyReplicas");
            if available < want || ready < want {
                return Err(format!("{available}/{want} replicas available"));
            }
            Ok(format!("{available}/{want} replicas available"))
        }
        ("batch/v1", "Job") => {
            let is_true =
                |t: &str| condition(live, t).and_then(|c| str_at(c, "/status")) == Some("True");
            if is_true("Complete") {
                Ok(format!("complete ({} succeeded)", int("/status/succeeded")))
            } else if is_true("Failed") {
                // `terminal()` does not know Job's Failed condition; a failed Job will not
                // become complete by waiting.
                Err(format!(
                    "failed: {}",
                    condition(live, "Failed")
                        .and_then(|c| str_at(c, "/message"))
                        .unwrap_or("no message")
                ))
            } else {
                Err(format!(
                    "running: {} active, {} succeeded",
                    int("/status/active"),
                    int("/status/succeeded")
                ))
            }
        }
        ("v1", "PersistentVolumeClaim") => match str_at(live, "/status/phase") {
            Some("Bound") => Ok("Bound".into()),
            other => Err(format!(
                "phase is {}, waiting for Bound",
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
        _ => {
            if let Some(c) = condition(live, "Reconciling")
                && str_at(c, "/status") == Some("True")
            {
                Err(format!(
                    "Reconciling: {}",
                    str_at(c, "/message").unwrap_or("")
                ))
            } else if let Some(c) = condition(live, "Ready") {
                if str_at(c, "/status") == Some("True") {
                    Ok("Ready=True".into())
                } else {
                    Err(format!(
                        "Ready is {}",
                        str_at(c, "/status").unwrap_or("Unknown")
                    ))
                }
            } else {
                Ok("current".into())
            }
        }
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
        ReadinessPredicate::Current { .. } => current(live),
        ReadinessPredicate::Cel { expression, .. } => {
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
                Ok(cel::Value::Bool(false)) => Err(format!("{expression} is false")),
                // A missing field is "not yet", not a broken predicate.
                Err(e) => Err(format!("{expression}: {e}")),
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
        if let Some(lag) = generation_lag(live) {
            return Ok(Verdict {
                ready: false,
                details: lag,
                terminal,
            });
        }
        let mut passed = Vec::new();
        for p in predicates {
            match check(p, live)? {
                Ok(detail) => passed.push(detail),
                Err(waiting) => {
                    return Ok(Verdict {
                        ready: false,
                        details: waiting,
                        terminal,
                    });
                }
            }
        }
        Ok(Verdict {
            ready: terminal.is_none(),
            details: if passed.is_empty() {
                "exists".into()
            } else {
                passed.join("; ")
            },
            terminal,
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
        let fresh = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"generation": 1}, "spec": {}});
        assert!(!eval(p(), fresh).ready);
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
}
