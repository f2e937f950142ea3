//! The controller's side of rollouts: which module an instance on a channel renders with, and
//! the driver that moves a channel's rollout forward (decisions in [`cuebe_core::rollout`]).
//!
//! The driver runs next to the instance controller, only while this replica leads. It reads the
//! channel's instances from the instance controller's cache (no second watch of the fleet),
//! previews a new module by rendering every instance with it (renders are cached by input, so
//! an unchanged module costs nothing), and writes only the channel's status. The instances pick
//! up their module from that status: a status change wakes exactly the instances whose module
//! it changes.
use std::collections::HashMap;

use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Abstraction, Api, Arc, Context, Duration, EventNote, Patch, PatchParams, ResourceExt};
use crate::module::PlatformRef;
use crate::rollout::{
    ChannelStatus, InstanceProblem, LISTED, PlatformChannel, Preview, RolloutEvent, bucket, drive,
    member_of, module_for,
};

/// The channels the instance controller has seen, newest object per name: read by every pass
/// of an instance on a channel, updated before that pass is queued.
#[derive(Default)]
pub(super) struct ChannelBook {
    latest: std::sync::Mutex<HashMap<String, Arc<PlatformChannel>>>,
}

impl ChannelBook {
    fn get(&self, name: &str) -> Option<Arc<PlatformChannel>> {
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Remembers `channel`; returns the status it had before.
    fn remember(&self, channel: Arc<PlatformChannel>) -> Option<ChannelStatus> {
        let name = channel.name_any();
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, channel)
            .and_then(|old| old.status.clone())
    }
}

/// Why an instance on a channel has no module to render with.
pub(super) struct NoModule {
    pub reason: &'static str,
    pub message: String,
    pub hint: String,
}

/// The module `object` renders with: what it pins, or what its channel gives it.
pub(super) async fn effective_ref<A: Abstraction>(
    ctx: &Context<A>,
    object: &A,
) -> Result<Option<PlatformRef>, NoModule> {
    let pinned = object.platform_ref();
    let Some(name) = pinned.as_ref().and_then(|r| r.channel.clone()) else {
        return Ok(pinned);
    };
    let channel = match ctx.channels.get(&name) {
        Some(c) => c,
        None => {
            let api: Api<PlatformChannel> = Api::all(ctx.client.clone());
            match api.get_opt(&name).await {
                Ok(Some(c)) => {
                    let c = Arc::new(c);
                    ctx.channels.remember(c.clone());
                    c
                }
                Ok(None) => {
                    return Err(NoModule {
                        reason: "ChannelNotFound",
                        message: format!("spec.platformRef.channel: no PlatformChannel {name:?}"),
                        hint: format!("create the PlatformChannel {name}, or pin a module"),
                    });
                }
                Err(e) => {
                    return Err(NoModule {
                        reason: "ChannelNotFound",
                        message: format!("spec.platformRef.channel: reading PlatformChannel {name:?}: {e}"),
                        hint: "install the PlatformChannel CRD (the operator's `crd` command prints it) and grant get on platformchannels".into(),
                    });
                }
            }
        }
    };
    if !channel.serves::<A>() {
        let serves = &channel.spec.channel.abstraction;
        return Err(NoModule {
            reason: "ChannelMismatch",
            message: format!(
                "spec.platformRef.channel: PlatformChannel {name} serves {}.{}, not {}.{}",
                serves.kind,
                serves.group,
                A::kind(&()),
                A::group(&())
            ),
            hint: "name a channel of this kind".into(),
        });
    }
    let status = channel.status.clone().unwrap_or_default();
    let b = bucket(
        &name,
        &object.namespace().unwrap_or_default(),
        &object.name_any(),
    );
    match module_for(&status, b) {
        Some(module) => Ok(Some(module.clone())),
        None => Err(NoModule {
            reason: "ChannelNotReady",
            message: format!("PlatformChannel {name} has no module yet"),
            hint: "the operator's leader gives a new channel its module within seconds; check that it runs".into(),
        }),
    }
}

/// The module sees the module reference it renders with in `spec.platformRef`: for an
/// instance on a channel, the channel's module instead of `{channel: NAME}` (a module knows
/// embedded, oci and git references; which channel gave it one is the operator's business);
/// for an instance kept on its last good module, that module's reference.
pub(super) fn show_module_ref<A: Abstraction>(
    input: &mut crate::renderer::RenderInput,
    module: Option<&PlatformRef>,
    object: &A,
) {
    let differs = module.is_some() && object.platform_ref().as_ref() != module;
    if let (true, Some(module), Some(spec)) = (differs, module, input.spec.as_object_mut())
        && let Ok(value) = serde_json::to_value(module)
    {
        spec.insert("platformRef".into(), value);
    }
}

/// The instances a channel's new object concerns: those whose module it changes (all of the
/// channel's instances the first time it is seen).
pub(super) fn instances_moved_by<A: Abstraction>(
    ctx: &Context<A>,
    instances: &Store<A>,
    channel: PlatformChannel,
) -> Vec<ObjectRef<A>> {
    let name = channel.name_any();
    let new_status = channel.status.clone().unwrap_or_default();
    let old_status = ctx.channels.remember(Arc::new(channel));
    instances
        .state()
        .into_iter()
        .filter(|o| o.platform_ref().and_then(|r| r.channel).as_deref() == Some(name.as_str()))
        .filter(|o| {
            let b = bucket(&name, &o.namespace().unwrap_or_default(), &o.name_any());
            match &old_status {
                Some(old) => module_for(old, b) != module_for(&new_status, b),
                None => true,
            }
        })
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Why the driver could not finish a pass.
#[derive(Debug, thiserror::Error)]
pub(super) enum DriveError {
    #[error("writing the status of PlatformChannel {0}: {1}")]
    Status(String, #[source] kube::Error),
}

/// What the driver needs besides the controller's context.
pub(super) struct Driver<A: Abstraction> {
    pub ctx: Arc<Context<A>>,
    pub instances: Store<A>,
    /// Becomes true once `instances` has had its first list (after the store has it).
    pub instances_listed: tokio::sync::watch::Receiver<bool>,
    /// The status this driver last wrote per channel. Only the leader's driver writes a
    /// channel's status, so it is newer than a watch cache that has not seen the write yet: a
    /// pass never starts from a status older than its own last decision.
    pub written: std::sync::Mutex<HashMap<String, ChannelStatus>>,
}

/// One pass of the driver over one channel.
pub(super) async fn drive_channel<A: Abstraction>(
    channel: Arc<PlatformChannel>,
    driver: Arc<Driver<A>>,
) -> Result<Action, DriveError> {
    if !channel.serves::<A>() {
        return Ok(Action::await_change());
    }
    let ctx = &driver.ctx;
    let name = channel.name_any();
    // An empty cache (just after a start, a change of leader or of the cluster's APIs) would
    // look like a channel with no instances: every gate open, nothing to preview.
    // Not `Store::wait_until_ready`: kube's applier waits on that store's readiness too, and
    // it wakes only the last of its waiters (see `store_ready`); this channel wakes them all.
    let mut listed = driver.instances_listed.clone();
    if listed.wait_for(|listed| *listed).await.is_err() {
        // The instance watch is gone (the controller is stopping).
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let on_channel: Vec<Arc<A>> = driver
        .instances
        .state()
        .into_iter()
        .filter(|o| o.platform_ref().and_then(|r| r.channel).as_deref() == Some(name.as_str()))
        .collect();
    let members: Vec<_> = on_channel
        .iter()
        .map(|o| {
            let status = driver.ctx.statuses.status_of(o.as_ref());
            member_of(&name, o.as_ref(), status.as_ref())
        })
        .collect();
    let status = driver
        .written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&name)
        .cloned()
        .unwrap_or_else(|| channel.status.clone().unwrap_or_default());
    let now = ctx.clock.now();
    let decision = match drive(&channel.spec.channel, &status, &members, None, now) {
        Ok(d) if d.needs_preview => {
            let target = d
                .status
                .rollout
                .as_ref()
                .map(|r| (r.target.clone(), r.previous.clone()));
            let preview = match target {
                Some((target, previous)) => preview(ctx, &on_channel, &target, &previous).await,
                None => Preview::default(),
            };
            // A module that could not be fetched or a render that timed out says nothing about
            // the module: preview again later rather than halting for good.
            if let Some(transient) = preview
                .failures
                .iter()
                .find(|f| f.reason == "ModuleUnavailable" || f.reason == "Timeout")
            {
                let mut waiting = d.status.clone();
                if let Some(r) = waiting.rollout.as_mut() {
                    r.message = format!(
                        "previewing again in 15 s: {}: {}",
                        transient.instance, transient.message
                    );
                }
                waiting.observed_generation = channel.metadata.generation;
                write_channel_status(&driver, &name, &status, &waiting).await?;
                return Ok(Action::requeue(Duration::from_secs(15)));
            }
            drive(
                &channel.spec.channel,
                &d.status,
                &members,
                Some(preview),
                now,
            )
            .map(|mut p| {
                let mut events = d.events;
                events.append(&mut p.events);
                p.events = events;
                p
            })
        }
        other => other,
    };
    let (mut next, events, requeue) = match decision {
        Ok(d) => (d.status, d.events, d.requeue),
        Err(invalid) => {
            let mut next = status.clone();
            next.error = invalid.to_string();
            (next, Vec::new(), None)
        }
    };
    next.observed_generation = channel.metadata.generation;
    write_channel_status(&driver, &name, &status, &next).await?;
    // Counted once the status that says so is stored (a failed write is retried, not counted).
    ctx.rollout_metrics.observe(&name, &events, &next);
    if !next.error.is_empty() && next.error != status.error {
        tracing::warn!(channel = %name, error = %next.error, "the channel's strategy is invalid: nothing moves");
        publish_on_channel(
            ctx,
            &channel,
            EventNote {
                warning: true,
                reason: "InvalidStrategy".into(),
                note: Some(next.error.clone()),
                action: "Rollout".into(),
            },
        )
        .await;
    }
    for event in &events {
        let (warning, reason, note) = describe(event);
        tracing::info!(channel = %name, %reason, %note, "rollout");
        publish_on_channel(
            ctx,
            &channel,
            EventNote {
                warning,
                reason: reason.into(),
                note: Some(note),
                action: "Rollout".into(),
            },
        )
        .await;
    }
    let active = next.rollout.as_ref().is_some_and(|r| r.phase.is_active());
    Ok(match requeue {
        Some(d) => Action::requeue(d.max(Duration::from_millis(500))),
        // The moved instances' readiness is read from the cache, not watched: look again soon
        // while a rollout is under way.
        None if active => Action::requeue(Duration::from_secs(5)),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Writes a channel's status when it changed, and remembers it (see [`Driver::written`]).
async fn write_channel_status<A: Abstraction>(
    driver: &Driver<A>,
    name: &str,
    before: &ChannelStatus,
    next: &ChannelStatus,
) -> Result<(), DriveError> {
    if next == before {
        return Ok(());
    }
    let api: Api<PlatformChannel> = Api::all(driver.ctx.client.clone());
    let body = serde_json::json!({
        "apiVersion": "cuebe.dev/v1alpha1",
        "kind": "PlatformChannel",
        "status": next,
    });
    api.patch_status(
        name,
        &PatchParams::apply(A::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| DriveError::Status(name.to_string(), e))?;
    driver
        .written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(name.to_string(), next.clone());
    Ok(())
}

fn describe(event: &RolloutEvent) -> (bool, &'static str, String) {
    match event {
        RolloutEvent::Adopted { module } => (
            false,
            "ChannelReady",
            format!("the channel starts on {module}"),
        ),
        RolloutEvent::Started { target } => (
            false,
            "RolloutStarted",
            format!("rolling out {target}: previewing every instance first"),
        ),
        RolloutEvent::PreviewFailed { failed } => (
            true,
            "PreviewFailed",
            format!("{failed} instances would fail with the new module; nothing was applied"),
        ),
        RolloutEvent::StepStarted {
            step,
            instances,
            total,
        } => (
            false,
            "StepStarted",
            format!("step {step}: {instances} of {total} instances on the new module"),
        ),
        RolloutEvent::Halted { reason } => (true, "RolloutHalted", reason.clone()),
        RolloutEvent::RolledBack { reason } => (
            true,
            "RolledBack",
            format!("{reason}: moved instances return to the previous module"),
        ),
        RolloutEvent::Completed { target } => (
            false,
            "RolloutComplete",
            format!("every instance is on {target}"),
        ),
        RolloutEvent::Paused => (false, "RolloutPaused", "spec.paused".into()),
        RolloutEvent::Resumed => (false, "RolloutResumed", "spec.paused cleared".into()),
    }
}

async fn publish_on_channel<A: Abstraction>(
    ctx: &Context<A>,
    channel: &PlatformChannel,
    note: EventNote,
) {
    use kube::Resource as _;
    let event = kube::runtime::events::Event {
        type_: if note.warning {
            kube::runtime::events::EventType::Warning
        } else {
            kube::runtime::events::EventType::Normal
        },
        reason: note.reason,
        note: note.note,
        action: note.action,
        secondary: None,
    };
    // kube's recorder folds an event into the one it published on the same object in the last
    // 6 minutes with the same type, reason and action, keeping that one's note: the second and
    // third StepStarted of a rollout read "step 1", a rollout to A then one to B reads
    // "rolling out A" twice. Every rollout event names what happened (the step, the module,
    // the reason) and the driver publishes one per transition, not per pass: each goes out as
    // an event of its own.
    let recorder = kube::runtime::events::Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &channel.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an event on the channel");
    }
}

/// Renders every instance with `target` (and, to count what changes, with `previous`):
/// nothing is written.
async fn preview<A: Abstraction>(
    ctx: &Arc<Context<A>>,
    instances: &[Arc<A>],
    target: &PlatformRef,
    previous: &PlatformRef,
) -> Preview {
    use futures::StreamExt as _;
    let Some(first) = instances.first() else {
        return Preview::default();
    };
    let capabilities = ctx.capabilities().await;
    // Published modules are fetched and verified once, as for an instance of the channel.
    let target_module = super::module_of_ref(ctx, first.as_ref(), target).await;
    let previous_module = super::module_of_ref(ctx, first.as_ref(), previous).await;
    // Per instance: whether the new module changes its Graph, or (reason, message).
    type Rendered = (String, Result<bool, (String, String)>);
    let results: Vec<Rendered> = futures::stream::iter(instances.iter().cloned())
        .map(|object| {
            let capabilities = capabilities.clone();
            let target_module = &target_module;
            let previous_module = &previous_module;
            async move {
                let key = format!(
                    "{}/{}",
                    object.namespace().unwrap_or_default(),
                    object.name_any()
                );
                let module = match target_module {
                    Ok(m) => m.clone(),
                    Err(e) => return (key, Err(("ModuleUnavailable".to_string(), e.clone()))),
                };
                let mut input = crate::abstraction::render_input(
                    object.as_ref(),
                    capabilities.clone(),
                    Default::default(),
                );
                input.platform_ref = Some(target.clone());
                show_module_ref(&mut input, Some(target), object.as_ref());
                input.module = module;
                let new = match ctx.renderer.render(&input).await {
                    Ok(plan) => plan,
                    Err(e) => return (key, Err((e.reason().to_string(), e.to_string()))),
                };
                let graph = new.graph();
                if graph.has_blocking_violations() {
                    let first = graph
                        .violations
                        .iter()
                        .map(ToString::to_string)
                        .next()
                        .unwrap_or_default();
                    return (key, Err(("PolicyViolation".to_string(), first)));
                }
                let changed = match previous_module {
                    Ok(m) => {
                        input.platform_ref = Some(previous.clone());
                        show_module_ref(&mut input, Some(previous), object.as_ref());
                        input.module = m.clone();
                        match ctx.renderer.render(&input).await {
                            Ok(old) => {
                                old.graph().metadata.render_hash != graph.metadata.render_hash
                            }
                            Err(_) => true,
                        }
                    }
                    Err(_) => true,
                };
                (key, Ok(changed))
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut preview = Preview {
        instances: results.len() as u32,
        ..Preview::default()
    };
    let mut failures = Vec::new();
    for (instance, result) in results {
        match result {
            Ok(changed) => preview.changed += u32::from(changed),
            Err((reason, message)) => {
                preview.failed += 1;
                failures.push(InstanceProblem {
                    instance,
                    reason,
                    message,
                });
            }
        }
    }
    failures.sort_by(|a, b| a.instance.cmp(&b.instance));
    failures.truncate(LISTED);
    preview.failures = failures;
    preview
}

pub(super) fn driver_error_policy<A: Abstraction>(
    channel: Arc<PlatformChannel>,
    error: &DriveError,
    _driver: Arc<Driver<A>>,
) -> Action {
    tracing::warn!(channel = %channel.name_any(), %error, "rollout driver pass failed");
    Action::requeue(Duration::from_secs(5))
}
