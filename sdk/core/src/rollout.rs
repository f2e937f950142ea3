//! Platform changes rolled out across a fleet: the decisions of a `PlatformChannel`.
//!
//! A channel names an abstraction, the module its instances render with, and a strategy. When
//! the channel's module changes, the change is a **rollout**: every instance on the channel is
//! first rendered with the new module without writing anything (the *preview*; any render error
//! or policy violation halts before step one), then the instances are moved in steps (`"1"`,
//! `"10%"`, `"50%"`, `"100%"`), each step only after the instances already moved are Ready on
//! the new module's render, with a pause between steps. A step whose instances are not healthy
//! by the deadline (or that stall, or fail to render) halts the rollout; with automatic
//! rollback the moved instances go back to the previous module.
//!
//! Which instances a step reaches is decided by a stable **bucket** per instance (a hash of the
//! channel and the instance's namespace/name): a step moves every instance whose bucket lies
//! below the rollout's **threshold**, which only grows. The threshold lives in the channel's
//! status, so an operator restarted mid-rollout resumes the same plan, never moves an instance
//! twice and never skips a gate; the instances derive their module from it alone
//! ([`module_for`]).
//!
//! Everything here is a function over data ([`drive`]): the runtime lists the instances, reads
//! their status, renders the preview and writes what `drive` returns.
//!
//! ```
//! use cuebe_core::module::PlatformRef;
//! use cuebe_core::rollout::{ChannelSpec, ChannelStatus, Member, Phase, drive};
//! let now: cuebe_core::clock::Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
//! let mut spec = ChannelSpec::for_module(PlatformRef::embedded("1.0.0"));
//! // A new channel starts on its module: nothing to roll out.
//! let first = drive(&spec, &ChannelStatus::default(), &[], None, now).unwrap();
//! assert_eq!(first.status.current, Some(PlatformRef::embedded("1.0.0")));
//! // A new module starts a rollout with a preview.
//! spec.module = PlatformRef::embedded("1.1.0");
//! let next = drive(&spec, &first.status, &[], None, now).unwrap();
//! assert_eq!(next.status.rollout.as_ref().map(|r| r.phase), Some(Phase::Previewing));
//! assert!(next.needs_preview);
//! # let _ = Member::default();
//! ```
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{Timestamp, elapsed_since};
use crate::module::PlatformRef;

/// Buckets run from 0 (inclusive) to this bound (exclusive); a threshold of `ALL` reaches every
/// instance, including ones created later.
pub const ALL: u64 = 1 << 32;

/// How many instances a status lists by name (preview failures, a halted step's instances):
/// enough to act on, small enough for etcd at any fleet size.
pub const LISTED: usize = 20;

/// How many finished rollouts a channel's status keeps.
pub const HISTORY: usize = 5;

/// The abstraction a channel serves (`WebService` in `platform.example.com`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbstractionRef {
    /// The API group of the abstraction's custom resource.
    pub group: String,
    /// Its kind.
    pub kind: String,
}

/// How a rollout advances. The API server checks the shape of each field at admission;
/// [`RolloutStrategy::parse`] also checks that the steps grow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.steps.all(s, s.matches('^([1-9][0-9]*|([1-9][0-9]?|100)%)$'))",
        "message": "spec.strategy.steps: each step is a count of instances (\"1\") or a percentage from 1% to 100% (\"10%\")"
    },
    {
        "rule": "self.healthDeadline.matches('^([0-9]+(ms|s|m|h))+$') && self.pause.matches('^([0-9]+(ms|s|m|h))+$')",
        "message": "spec.strategy.healthDeadline and pause are durations with a unit: 90s, 5m, 1h30m"
    }
]))]
pub struct RolloutStrategy {
    /// How many instances have moved when each step ends: a count (`"1"`) or a percentage of
    /// the instances on the channel (`"10%"`), growing; a last `"100%"` is implied.
    // Bounded so that the API server can cost the CEL rules above (it refuses the CRD otherwise).
    #[serde(default = "default_steps")]
    #[schemars(length(max = 20), inner(length(max = 8)))]
    pub steps: Vec<String>,
    /// How long a step's instances have to become Ready on the new module (`90s`, `5m`).
    #[serde(default = "default_deadline")]
    #[schemars(length(max = 32))]
    pub health_deadline: String,
    /// How long every moved instance stays Ready before the next step starts.
    #[serde(default = "default_pause")]
    #[schemars(length(max = 32))]
    pub pause: String,
    /// Move the instances of a halted rollout back to the previous module.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
}

fn default_steps() -> Vec<String> {
    ["1", "10%", "50%", "100%"].map(String::from).to_vec()
}
fn default_deadline() -> String {
    "5m".into()
}
fn default_pause() -> String {
    "30s".into()
}
fn default_true() -> bool {
    true
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            health_deadline: default_deadline(),
            pause: default_pause(),
            auto_rollback: true,
        }
    }
}

/// One step: how many instances have moved when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many instances (at most all).
    Instances(u32),
    /// This percentage of the instances, rounded up (at least one when there are any).
    Percent(u8),
}

impl Step {
    /// Parses `"3"` or `"25%"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is neither a count (\"1\") nor a percentage (\"10%\")");
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Self::Percent(p)),
                _ => Err(format!("{s:?}: a percentage runs from 1% to 100%")),
            },
            None => match s.parse::<u32>() {
                Ok(0) => Err(format!("{s:?}: a step moves at least one instance")),
                Ok(n) => Ok(Self::Instances(n)),
                Err(_) => Err(bad()),
            },
        }
    }

    /// How many of `total` instances have moved when this step ends.
    pub fn count(self, total: usize) -> usize {
        match self {
            Self::Instances(n) => (n as usize).min(total),
            Self::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

/// A strategy with its steps and durations parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedStrategy {
    /// The steps, the last one `100%`.
    pub steps: Vec<Step>,
    /// [`RolloutStrategy::health_deadline`].
    pub health_deadline: Duration,
    /// [`RolloutStrategy::pause`].
    pub pause: Duration,
    /// [`RolloutStrategy::auto_rollback`].
    pub auto_rollback: bool,
}

/// A strategy that cannot be used, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidStrategy {
    /// The field, e.g. `spec.strategy.steps[1]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl RolloutStrategy {
    /// Parses and checks the strategy: steps that parse and grow (a count after a percentage
    /// cannot be compared, so counts come first), durations that parse.
    pub fn parse(&self) -> Result<ParsedStrategy, InvalidStrategy> {
        let mut steps = Vec::with_capacity(self.steps.len() + 1);
        for (i, text) in self.steps.iter().enumerate() {
            let field = format!("spec.strategy.steps[{i}]");
            let step = Step::parse(text).map_err(|message| InvalidStrategy {
                field: field.clone(),
                message,
            })?;
            let grows = match (steps.last(), step) {
                (None, _) => true,
                (Some(Step::Instances(a)), Step::Instances(b)) => b > *a,
                (Some(Step::Instances(_)), Step::Percent(_)) => true,
                (Some(Step::Percent(a)), Step::Percent(b)) => b > *a,
                (Some(Step::Percent(_)), Step::Instances(_)) => false,
            };
            if !grows {
                return Err(InvalidStrategy {
                    field,
                    message: format!(
                        "{text:?} does not move more instances than the step before it (steps grow, counts before percentages)"
                    ),
                });
            }
            steps.push(step);
        }
        if steps.last() != Some(&Step::Percent(100)) {
            steps.push(Step::Percent(100));
        }
        let duration = |field: &str, text: &str| {
            crate::graph::parse_duration(text).map_err(|message| InvalidStrategy {
                field: format!("spec.strategy.{field}"),
                message,
            })
        };
        Ok(ParsedStrategy {
            steps,
            health_deadline: duration("healthDeadline", &self.health_deadline)?,
            pause: duration("pause", &self.pause)?,
            auto_rollback: self.auto_rollback,
        })
    }
}

/// What a `PlatformChannel` asks for (its `spec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.module.channel)",
        "message": "spec.module: a channel points at a module (embedded, oci or git), not at another channel"
    },
    {
        "rule": "!has(self.module.git) || self.module.git.matches('[?&]ref=[0-9a-f]{40}(&|$)')",
        "message": "spec.module.git: a channel's module is pinned to a commit (ref=<40 hex>): a branch or tag would move every instance without a rollout"
    },
    {
        "rule": "self.strategy.healthDeadline.matches('[1-9]')",
        "message": "spec.strategy.healthDeadline: a step needs some time to become healthy (more than 0)"
    }
]))]
pub struct ChannelSpec {
    /// The abstraction whose instances may follow this channel.
    pub abstraction: AbstractionRef,
    /// The module the channel's instances render with. Changing it starts a rollout.
    pub module: PlatformRef,
    /// How a rollout advances.
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// Hold the rollout at its current step (nothing more is moved; `false` resumes).
    #[serde(default)]
    pub paused: bool,
    /// Roll the current rollout back: every moved instance returns to the previous module. It
    /// acts when it turns `true` during a rollout; a `true` left from an earlier rollout does
    /// not roll back the next one (set it to `false` and `true` again to undo that one too).
    #[serde(default)]
    pub undo: bool,
}

impl ChannelSpec {
    /// A channel on `module` with the default strategy.
    pub fn for_module(module: PlatformRef) -> Self {
        Self {
            module,
            ..Self::default()
        }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Rendering every instance with the new module; nothing is applied.
    #[default]
    Previewing,
    /// Moving instances step by step.
    Progressing,
    /// Held by `spec.paused`.
    Paused,
    /// Stopped: a step was not healthy in time, or the preview failed. Moved instances stay
    /// where they are (automatic rollback off).
    Halted,
    /// Every moved instance is back on the previous module.
    RolledBack,
    /// Every instance is on the new module; it is the channel's current module.
    Complete,
}

impl Phase {
    /// The phase as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Previewing => "Previewing",
            Self::Progressing => "Progressing",
            Self::Paused => "Paused",
            Self::Halted => "Halted",
            Self::RolledBack => "RolledBack",
            Self::Complete => "Complete",
        }
    }

    /// Whether the rollout still moves instances forward.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Previewing | Self::Progressing | Self::Paused)
    }
}

/// An instance and what went wrong with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceProblem {
    /// `namespace/name`.
    pub instance: String,
    /// A condition reason (`PolicyViolation`, `RenderFailed`, `NotReady`, `Stalled`).
    pub reason: String,
    /// The first violation or error, as the instance's status would say it.
    pub message: String,
}

/// What the preview found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// Instances rendered.
    pub instances: u32,
    /// Instances whose Graph the new module changes.
    pub changed: u32,
    /// Instances that would fail (render error or blocking policy violation).
    pub failed: u32,
    /// The first [`LISTED`] of them, with their first violation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<InstanceProblem>,
}

/// The rollout of one module on a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The module being rolled out.
    pub target: PlatformRef,
    /// The module instances not yet reached render with (the channel's current module).
    pub previous: PlatformRef,
    /// Where it is.
    pub phase: Phase,
    /// The step under way (0-based); equal to the number of steps once complete.
    pub step: u32,
    /// Instances whose bucket is below this render with `target`.
    pub threshold: u64,
    /// When the rollout started.
    pub started_at: String,
    /// When the step under way started.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step_started_at: String,
    /// Since when every moved instance has been Ready on `target` (the pause runs from here).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub healthy_since: String,
    /// What the preview found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
    /// Why it halted or rolled back: the instances (first [`LISTED`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<InstanceProblem>,
    /// What is happening, for people.
    #[serde(default)]
    pub message: String,
    /// Every instance of the step under way has been Ready on `target` at least once: from
    /// then on the deadline no longer applies to it (only failures halt).
    #[serde(default)]
    pub step_healthy: bool,
    /// `spec.undo` as the driver last saw it during this rollout: undo acts when it turns
    /// `true`, so a value left set from an earlier rollout does not roll this one back.
    #[serde(default)]
    pub undo_seen: bool,
}

/// A finished rollout, kept in the channel's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    /// The module rolled out.
    pub target: String,
    /// The module before it.
    pub previous: String,
    /// `Complete`, `RolledBack` or `Halted` (replaced by a newer module).
    pub outcome: String,
    /// When it ended.
    pub finished_at: String,
}

/// The state of a channel (its `status`): everything a restarted operator needs to resume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// The generation of the channel this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The module every instance renders with outside a rollout (and instances not yet reached
    /// during one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<PlatformRef>,
    /// The rollout under way, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Finished rollouts, newest first (at most [`HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RolloutRecord>,
    /// For `kubectl get`: the module being rolled out, or the current one.
    #[serde(default)]
    pub module: String,
    /// For `kubectl get`: the rollout's phase (`Complete` with no rollout).
    #[serde(default)]
    pub phase: String,
    /// For `kubectl get`: `moved/total` instances on the new module.
    #[serde(default)]
    pub updated: String,
    /// Instances Ready (on whichever module they should be on).
    #[serde(default)]
    pub ready: u32,
    /// Instances failing (Stalled, not rendering, or refused by policy).
    #[serde(default)]
    pub failed: u32,
    /// Why the channel cannot be used (an invalid strategy), if so.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// An instance on a channel, as the driver sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    /// `namespace/name`.
    pub instance: String,
    /// Its [`bucket`].
    pub bucket: u64,
    /// The module its last pass rendered with (the `Display` of a [`PlatformRef`]); empty
    /// before its first pass.
    pub module: String,
    /// Ready on that module's render (for the instance's current generation).
    pub ready: bool,
    /// Stalled, or its render or policy failed: `(reason, message)`.
    pub failing: Option<(String, String)>,
}

/// The instance's stable place in every rollout of `channel`.
///
/// ```
/// use cuebe_core::rollout::{ALL, bucket};
/// let b = bucket("stable", "shop", "cart");
/// assert_eq!(b, bucket("stable", "shop", "cart"));
/// assert!(b < ALL);
/// ```
pub fn bucket(channel: &str, namespace: &str, name: &str) -> u64 {
    let digest = Sha256::digest(format!("{channel}/{namespace}/{name}").as_bytes());
    u64::from(u32::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3],
    ]))
}

/// The module an instance in `bucket` renders with, from the channel's status alone; `None`
/// before the channel has a module.
pub fn module_for(status: &ChannelStatus, bucket: u64) -> Option<&PlatformRef> {
    match &status.rollout {
        Some(r) if matches!(r.phase, Phase::Progressing | Phase::Paused | Phase::Halted) => {
            Some(if bucket < r.threshold {
                &r.target
            } else {
                &r.previous
            })
        }
        _ => status.current.as_ref(),
    }
}

/// The threshold that reaches the first `count` of these buckets (sorted ascending).
pub fn threshold_for(count: usize, sorted_buckets: &[u64]) -> u64 {
    match count {
        0 => 0,
        n if n >= sorted_buckets.len() => ALL,
        n => sorted_buckets[n - 1] + 1,
    }
}

/// Something that happened, for an event and a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutEvent {
    /// The channel took its first module.
    Adopted {
        /// The module.
        module: String,
    },
    /// A rollout of a new module began (with its preview).
    Started {
        /// The new module.
        target: String,
    },
    /// The preview found instances that would fail: nothing was applied.
    PreviewFailed {
        /// How many.
        failed: u32,
    },
    /// A step began.
    StepStarted {
        /// 1-based step.
        step: u32,
        /// Instances moved once it ends.
        instances: usize,
        /// Instances on the channel.
        total: usize,
    },
    /// The rollout halted.
    Halted {
        /// Why.
        reason: String,
    },
    /// The moved instances are going back to the previous module.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// Every instance is on the new module.
    Completed {
        /// The module.
        target: String,
    },
    /// Held by `spec.paused`.
    Paused,
    /// `spec.paused` cleared.
    Resumed,
}

/// What [`drive`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The channel's new status.
    pub status: ChannelStatus,
    /// Render every member with the rollout's target (no writes) and call [`drive`] again
    /// with the result.
    pub needs_preview: bool,
    /// Look again this soon (`None`: when something changes).
    pub requeue: Option<Duration>,
    /// What happened.
    pub events: Vec<RolloutEvent>,
}

/// One step of the driver: from the channel's spec and status, its members and (while
/// previewing) the preview's result, the next status. Pure; idempotent for unchanged input.
///
/// An invalid strategy is an error naming the field; the runtime writes it to the status and
/// moves nothing.
pub fn drive(
    spec: &ChannelSpec,
    status: &ChannelStatus,
    members: &[Member],
    preview: Option<Preview>,
    now: Timestamp,
) -> Result<Decision, InvalidStrategy> {
    let strategy = spec.strategy.parse()?;
    let now_text = now.to_string();
    let mut next = status.clone();
    next.error.clear();
    let mut events = Vec::new();
    let mut needs_preview = false;
    let mut requeue = None;

    let Some(current) = next.current.clone() else {
        // A new channel starts on its module: there is nothing to roll out from.
        next.current = Some(spec.module.clone());
        events.push(RolloutEvent::Adopted {
            module: spec.module.to_string(),
        });
        summarize(&mut next, members);
        return Ok(Decision {
            status: next,
            needs_preview,
            requeue,
            events,
        });
    };

    let rollout_target = next.rollout.as_ref().map(|r| r.target.clone());
    if rollout_target.as_ref() != Some(&spec.module) {
        // The module changed (or was set back): whatever was under way ends. A finished
        // rollout is in the history already; kept as `rollout`, a rolled-back one whose module
        // the spec left would match the spec again when that module is set once more, and
        // that module would never roll out again.
        if let Some(r) = next.rollout.take()
            && (r.phase.is_active() || r.phase == Phase::Halted)
        {
            events.push(RolloutEvent::RolledBack {
                reason: format!("spec.module changed to {}", spec.module),
            });
            record(&mut next, &r, "Replaced", &now_text);
        }
        if spec.module != current {
            next.rollout = Some(Rollout {
                target: spec.module.clone(),
                previous: current.clone(),
                phase: Phase::Previewing,
                step: 0,
                threshold: 0,
                started_at: now_text.clone(),
                message: format!(
                    "rendering every instance with {} before anything is applied",
                    spec.module
                ),
                undo_seen: spec.undo,
                ..Rollout::default()
            });
            events.push(RolloutEvent::Started {
                target: spec.module.to_string(),
            });
        }
    }

    let mut sorted: Vec<u64> = members.iter().map(|m| m.bucket).collect();
    sorted.sort_unstable();

    if let Some(mut r) = next.rollout.take() {
        let target = r.target.to_string();
        match r.phase {
            Phase::Complete | Phase::RolledBack => {}
            _ if spec.undo && !r.undo_seen => {
                r.phase = Phase::RolledBack;
                r.threshold = 0;
                r.message = "spec.undo: every moved instance returns to the previous module".into();
                events.push(RolloutEvent::RolledBack {
                    reason: "spec.undo".into(),
                });
                record(&mut next, &r, "RolledBack", &now_text);
            }
            Phase::Halted => {}
            Phase::Previewing => match preview {
                None => needs_preview = true,
                Some(p) if p.failed > 0 => {
                    r.phase = Phase::Halted;
                    r.message = format!(
                        "the preview found {} of {} instances that would fail with {target}; nothing was applied",
                        p.failed, p.instances
                    );
                    r.problems = p.failures.clone();
                    r.preview = Some(p.clone());
                    events.push(RolloutEvent::PreviewFailed { failed: p.failed });
                    events.push(RolloutEvent::Halted {
                        reason: "PreviewFailed".into(),
                    });
                    record(&mut next, &r, "Halted", &now_text);
                }
                Some(p) => {
                    r.preview = Some(p);
                    start_step(&mut r, 0, &strategy, &sorted, &now_text, &mut events);
                    requeue = Some(Duration::from_secs(2));
                }
            },
            Phase::Progressing | Phase::Paused => {
                if spec.paused && r.phase == Phase::Progressing {
                    r.phase = Phase::Paused;
                    events.push(RolloutEvent::Paused);
                } else if !spec.paused && r.phase == Phase::Paused {
                    r.phase = Phase::Progressing;
                    events.push(RolloutEvent::Resumed);
                }
                let reached: Vec<&Member> =
                    members.iter().filter(|m| m.bucket < r.threshold).collect();
                let failing: Vec<InstanceProblem> = reached
                    .iter()
                    .filter(|m| m.module == target)
                    .filter_map(|m| {
                        m.failing.as_ref().map(|(reason, message)| InstanceProblem {
                            instance: m.instance.clone(),
                            reason: reason.clone(),
                            message: message.clone(),
                        })
                    })
                    .collect();
                let unhealthy: Vec<&&Member> = reached
                    .iter()
                    .filter(|m| !(m.module == target && m.ready))
                    .collect();
                let step_age = elapsed_since(&r.step_started_at, now).unwrap_or_default();
                let step_no = r.step + 1;
                if !failing.is_empty() {
                    halt(
                        &mut r,
                        &mut next,
                        &strategy,
                        failing,
                        format!("instances moved to {target} fail on it (step {step_no})"),
                        &now_text,
                        &mut events,
                    );
                } else if !unhealthy.is_empty() {
                    r.healthy_since.clear();
                    // The deadline is for reaching health: once the step was healthy, a later dip
                    // (an edit, a rolling restart) waits rather than rolling the fleet back, and a
                    // paused rollout is held, not judged.
                    if !r.step_healthy
                        && r.phase == Phase::Progressing
                        && step_age >= strategy.health_deadline
                    {
                        let problems = unhealthy
                            .iter()
                            .map(|m| InstanceProblem {
                                instance: m.instance.clone(),
                                reason: "NotReady".into(),
                                message: if m.module == target {
                                    format!(
                                        "not Ready on {target} within {}",
                                        spec.strategy.health_deadline
                                    )
                                } else {
                                    format!(
                                        "has not rendered with {target} within {}",
                                        spec.strategy.health_deadline
                                    )
                                },
                            })
                            .collect();
                        halt(
                            &mut r,
                            &mut next,
                            &strategy,
                            problems,
                            format!(
                                "step {step_no} was not healthy within {}",
                                spec.strategy.health_deadline
                            ),
                            &now_text,
                            &mut events,
                        );
                    } else {
                        r.message = format!(
                            "step {} of {}: waiting for {} of {} moved instances to be Ready on {target}",
                            r.step + 1,
                            strategy.steps.len(),
                            unhealthy.len(),
                            reached.len()
                        );
                        requeue = Some(
                            strategy
                                .health_deadline
                                .saturating_sub(step_age)
                                .clamp(Duration::from_secs(1), Duration::from_secs(5)),
                        );
                    }
                } else {
                    if r.healthy_since.is_empty() {
                        r.healthy_since = now_text.clone();
                    }
                    r.step_healthy = true;
                    let healthy_for = elapsed_since(&r.healthy_since, now).unwrap_or_default();
                    let last = r.step as usize + 1 >= strategy.steps.len();
                    if r.phase == Phase::Paused {
                        r.message = format!(
                            "paused at step {} of {} ({} instances on {target}); set spec.paused to false to resume",
                            r.step + 1,
                            strategy.steps.len(),
                            reached.len()
                        );
                    } else if last {
                        r.phase = Phase::Complete;
                        r.step = strategy.steps.len() as u32;
                        r.threshold = ALL;
                        r.message = format!("every instance is on {target}");
                        next.current = Some(r.target.clone());
                        events.push(RolloutEvent::Completed {
                            target: target.clone(),
                        });
                        record(&mut next, &r, "Complete", &now_text);
                    } else if healthy_for >= strategy.pause {
                        let step = r.step as usize + 1;
                        start_step(&mut r, step, &strategy, &sorted, &now_text, &mut events);
                        requeue = Some(Duration::from_secs(2));
                    } else {
                        r.message = format!(
                            "step {} of {}: {} instances Ready on {target}; next step after the pause",
                            r.step + 1,
                            strategy.steps.len(),
                            reached.len()
                        );
                        requeue = Some(strategy.pause.saturating_sub(healthy_for));
                    }
                }
            }
        }
        r.undo_seen = spec.undo;
        next.rollout = Some(r);
    }
    summarize(&mut next, members);
    Ok(Decision {
        status: next,
        needs_preview,
        requeue,
        events,
    })
}

fn start_step(
    r: &mut Rollout,
    step: usize,
    strategy: &ParsedStrategy,
    sorted: &[u64],
    now: &str,
    events: &mut Vec<RolloutEvent>,
) {
    let count = strategy.steps[step].count(sorted.len());
    // The last step reaches everyone, including instances created from now on; earlier steps
    // never move an instance back (the threshold only grows).
    let threshold = if step + 1 == strategy.steps.len() {
        ALL
    } else {
        threshold_for(count, sorted)
    };
    r.threshold = r.threshold.max(threshold);
    r.phase = Phase::Progressing;
    r.step = step as u32;
    r.step_started_at = now.to_string();
    r.healthy_since.clear();
    r.step_healthy = false;
    r.message = format!(
        "step {} of {}: moving {} of {} instances to {}",
        step + 1,
        strategy.steps.len(),
        count,
        sorted.len(),
        r.target
    );
    events.push(RolloutEvent::StepStarted {
        step: step as u32 + 1,
        instances: count,
        total: sorted.len(),
    });
}

#[allow(clippy::too_many_arguments)]
fn halt(
    r: &mut Rollout,
    next: &mut ChannelStatus,
    strategy: &ParsedStrategy,
    mut problems: Vec<InstanceProblem>,
    why: String,
    now: &str,
    events: &mut Vec<RolloutEvent>,
) {
    problems.sort_by(|a, b| a.instance.cmp(&b.instance));
    problems.truncate(LISTED);
    r.problems = problems;
    events.push(RolloutEvent::Halted {
        reason: why.clone(),
    });
    if strategy.auto_rollback {
        r.phase = Phase::RolledBack;
        r.threshold = 0;
        r.message = format!(
            "{why}: halted and rolled back; every moved instance returns to {}",
            r.previous
        );
        events.push(RolloutEvent::RolledBack { reason: why });
        record(next, r, "RolledBack", now);
    } else {
        r.phase = Phase::Halted;
        r.message = format!(
            "{why}: halted; moved instances stay on {} (set spec.undo to move them back)",
            r.target
        );
        record(next, r, "Halted", now);
    }
}

fn record(next: &mut ChannelStatus, r: &Rollout, outcome: &str, now: &str) {
    next.history.insert(
        0,
        RolloutRecord {
            target: r.target.to_string(),
            previous: r.previous.to_string(),
            outcome: outcome.into(),
            finished_at: now.into(),
        },
    );
    next.history.truncate(HISTORY);
}

/// The `kubectl get` columns.
fn summarize(next: &mut ChannelStatus, members: &[Member]) {
    let current = next.current.as_ref().map(ToString::to_string);
    let (module, phase, wanted) = match &next.rollout {
        Some(r) if r.phase.is_active() || r.phase == Phase::Halted => (
            r.target.to_string(),
            r.phase.as_str(),
            Some(r.target.to_string()),
        ),
        Some(r) => (current.clone().unwrap_or_default(), r.phase.as_str(), None),
        None => (current.clone().unwrap_or_default(), "Complete", None),
    };
    let updated = match &wanted {
        Some(t) => members.iter().filter(|m| &m.module == t).count(),
        None => members
            .iter()
            .filter(|m| Some(&m.module) == current.as_ref())
            .count(),
    };
    next.module = module;
    next.phase = phase.into();
    next.updated = format!("{updated}/{}", members.len());
    next.ready = members.iter().filter(|m| m.ready).count() as u32;
    next.failed = members.iter().filter(|m| m.failing.is_some()).count() as u32;
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
