//! Platform changes rolled out across a fleet: the `PlatformChannel` custom resource.
//!
//! A channel (cluster-scoped, group `cuebe.dev`) names an abstraction, the module its instances
//! render with and a rollout strategy. Instances follow it with `platformRef: {channel: NAME}`;
//! changing `spec.module` starts a rollout — a preview of every instance first, then steps gated
//! on the moved instances being Ready, halted and rolled back when they are not. The decisions
//! are [`cuebe_core::rollout`]'s; the [`crate::controller::Operator`] drives every channel of its
//! abstraction while it leads.
//!
//! ```
//! use cuebe::rollout::{PlatformChannel, PlatformChannelSpec};
//! use cuebe::rollout::{AbstractionRef, ChannelSpec};
//! use cuebe::module::PlatformRef;
//! let mut spec = ChannelSpec::for_module(PlatformRef::embedded("1.0.0"));
//! spec.abstraction = AbstractionRef { group: "platform.example.com".into(), kind: "WebService".into() };
//! let stable = PlatformChannel::new("stable", PlatformChannelSpec { channel: spec });
//! assert_eq!(stable.spec.channel.strategy.steps, ["1", "10%", "50%", "100%"]);
//! ```
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use cuebe_core::rollout::*;

use crate::abstraction::Abstraction;
use crate::status::{AbstractionStatus, ConditionType};

/// The spec of a [`PlatformChannel`]: a [`ChannelSpec`].
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cuebe.dev",
    version = "v1alpha1",
    kind = "PlatformChannel",
    plural = "platformchannels",
    shortname = "pch",
    status = "ChannelStatus",
    printcolumn = r#"{"name":"Module","type":"string","jsonPath":".status.module"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Updated","type":"string","jsonPath":".status.updated"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct PlatformChannelSpec {
    /// The channel.
    #[serde(flatten)]
    pub channel: ChannelSpec,
}

/// The `PlatformChannel` CRD, as `crd` prints it and `dev` installs it.
pub fn channel_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    <PlatformChannel as kube::CustomResourceExt>::crd()
}

impl PlatformChannel {
    /// Whether this channel serves abstraction `A`.
    pub fn serves<A: Abstraction>(&self) -> bool {
        let wanted = &self.spec.channel.abstraction;
        wanted.kind == A::kind(&()) && wanted.group == A::group(&())
    }
}

/// How an instance with `status` looks to its channel's driver.
pub fn member_of<A: Abstraction>(
    channel: &str,
    object: &A,
    status: Option<&AbstractionStatus>,
) -> Member {
    use kube::ResourceExt as _;
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let condition = |t: ConditionType| status.and_then(|s| s.condition(t));
    let generation = object.meta().generation;
    let current = |t: ConditionType| {
        condition(t)
            .filter(|c| c.observed_generation.is_none() || c.observed_generation == generation)
    };
    let ready = current(ConditionType::Ready).is_some_and(|c| c.status == "True");
    let failing = [
        (ConditionType::Stalled, "True"),
        (ConditionType::Rendered, "False"),
        (ConditionType::PolicyPassed, "False"),
    ]
    .into_iter()
    .find_map(|(t, bad)| {
        current(t)
            // The channel itself could not be read: nothing to say about its module.
            .filter(|c| c.status == bad && !c.reason.starts_with("Channel"))
            .map(|c| (c.reason.clone(), c.message.clone()))
    });
    Member {
        instance: format!("{namespace}/{name}"),
        bucket: bucket(channel, &namespace, &name),
        module: status.map(|s| s.module_ref.clone()).unwrap_or_default(),
        ready,
        failing,
    }
}

/// `cuebe_rollout_*`: what the channels' drivers did, per channel.
#[derive(Debug, Clone, Default)]
pub struct RolloutMetrics {
    steps: Family<ChannelLabels, Counter>,
    halts: Family<ChannelLabels, Counter>,
    rollbacks: Family<ChannelLabels, Counter>,
    completed: Family<ChannelLabels, Counter>,
    step: Family<ChannelLabels, Gauge>,
    moved: Family<ChannelLabels, Gauge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

impl RolloutMetrics {
    /// Registers the families (`cuebe_rollout_steps_total`, `_halts_total`,
    /// `_rollbacks_total`, `_completed_total`, `cuebe_rollout_step`, `cuebe_rollout_moved`).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("rollout");
        r.register("steps", "Rollout steps started", self.steps.clone());
        r.register("halts", "Rollouts halted", self.halts.clone());
        r.register(
            "rollbacks",
            "Rollouts rolled back (automatically or by spec.undo)",
            self.rollbacks.clone(),
        );
        r.register(
            "completed",
            "Rollouts that reached every instance",
            self.completed.clone(),
        );
        r.register(
            "step",
            "The step under way (1-based; 0 when no rollout moves instances)",
            self.step.clone(),
        );
        r.register(
            "moved",
            "Instances on the channel rendering with the rollout's new module",
            self.moved.clone(),
        );
    }

    /// Counts what one pass of a channel's driver did and sets its gauges.
    pub fn observe(&self, channel: &str, events: &[RolloutEvent], status: &ChannelStatus) {
        let labels = ChannelLabels {
            channel: channel.to_string(),
        };
        for event in events {
            let family = match event {
                RolloutEvent::StepStarted { .. } => &self.steps,
                RolloutEvent::Halted { .. } => &self.halts,
                RolloutEvent::RolledBack { .. } => &self.rollbacks,
                RolloutEvent::Completed { .. } => &self.completed,
                _ => continue,
            };
            family.get_or_create(&labels).inc();
        }
        let step = match &status.rollout {
            Some(r) if matches!(r.phase, Phase::Progressing | Phase::Paused) => {
                i64::from(r.step) + 1
            }
            _ => 0,
        };
        self.step.get_or_create(&labels).set(step);
        // `updated` counts the instances on the rollout's module while one is under way.
        let moved = match &status.rollout {
            Some(r) if r.phase.is_active() || r.phase == Phase::Halted => status
                .updated
                .split_once('/')
                .and_then(|(m, _)| m.parse::<i64>().ok())
                .unwrap_or(0),
            _ => 0,
        };
        self.moved.get_or_create(&labels).set(moved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::OperatorMetrics;

    #[test]
    fn every_step_halt_rollback_and_completion_is_counted_per_channel() {
        let rollouts = RolloutMetrics::default();
        let metrics = OperatorMetrics::new("WebService", None).with_rollouts(&rollouts);
        let mut status = ChannelStatus {
            updated: "5/20".into(),
            rollout: Some(Rollout {
                phase: Phase::Progressing,
                step: 1,
                ..Rollout::default()
            }),
            ..ChannelStatus::default()
        };
        let step = |n| RolloutEvent::StepStarted {
            step: n,
            instances: 1,
            total: 20,
        };
        rollouts.observe("stable", &[step(1)], &status);
        rollouts.observe("stable", &[step(2)], &status);
        let text = metrics.encode().expect("encodes");
        let line = |name: &str| format!("{name}{{kind=\"WebService\",channel=\"stable\"}}");
        assert!(
            text.contains(&format!("{} 2", line("cuebe_rollout_steps_total"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 2", line("cuebe_rollout_step"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 5", line("cuebe_rollout_moved"))),
            "{text}"
        );

        status.rollout = Some(Rollout {
            phase: Phase::RolledBack,
            ..Rollout::default()
        });
        let halt = RolloutEvent::Halted {
            reason: "deadline".into(),
        };
        let back = RolloutEvent::RolledBack {
            reason: "deadline".into(),
        };
        rollouts.observe("stable", &[halt, back], &status);
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(&format!("{} 1", line("cuebe_rollout_halts_total"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 1", line("cuebe_rollout_rollbacks_total"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 0", line("cuebe_rollout_step"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 0", line("cuebe_rollout_moved"))),
            "{text}"
        );
    }
}
