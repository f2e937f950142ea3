//! `rollout`: platform changes through `PlatformChannel`s, from the command line.
//!
//! `rollout plan` shows the blast radius of a candidate module before anyone publishes it to a
//! channel: every instance on the channel is rendered with the module it is on now and with
//! the candidate, and the two Graphs are compared object by object (kind, namespace, name and
//! content). Nothing is written; without a cluster it reads the channel and the instances from
//! files. `rollout pause|resume|undo` set the channel's `spec.paused` / `spec.undo` (what
//! `kubectl patch` does), `rollout status` prints the channel's status.
//!
//! Owns: comparing two renders of an instance ([`compare`]), the plan's report
//! ([`RolloutPlan`]) and the channel's status as text ([`status_text`]). The decisions of a
//! rollout are [`cuebe::rollout`]'s.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use cuebe::abstraction::{Abstraction, render_input};
use cuebe::graph::{Graph, Severity};
use cuebe::module::{ModuleSource, PlatformRef};
use cuebe::plan::Plan;
use cuebe::renderer::{Capabilities, CueRenderer, RenderError};
use cuebe::rollout::{ChannelStatus, PlatformChannel, Step, bucket, module_for};

/// What a candidate module does to one object of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Only the candidate renders it: it would be created.
    Create,
    /// Both render it, with different content: it would be updated.
    Update,
    /// Only the current module renders it: it would be pruned (deleted, or released when its
    /// node says `deletionPolicy: Orphan`).
    Prune,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Prune => "prune",
        }
    }
}

/// One object that the candidate module changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectChange {
    /// What would happen to it.
    pub action: Action,
    /// Its `apiVersion` (the candidate's, or the current one's when pruned).
    pub api_version: String,
    /// Its kind.
    pub kind: String,
    /// Its namespace (empty for a cluster-scoped object).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// For an update: the fields that differ, as dotted paths (`spec.replicas`,
    /// `metadata.labels["app.kubernetes.io/managed-by"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// The objects two renders of the same instance differ by, matched by kind, namespace and
/// name and compared by content: created (only in `new`), updated (in both, different) and
/// pruned (only in `old`), in kind/namespace/name order. A node still pending on an export
/// (no object yet) is compared once it has one.
///
/// ```
/// use cuebe_cli::rollout::{Action, compare};
/// let graph = |label: &str| cuebe::Graph::from_json(&serde_json::json!({
///     "graphVersion": "cuebe.dev/v1alpha1",
///     "metadata": {"platformRefResolved": "sha256:0", "module": "m@1", "renderHash": "sha256:0"},
///     "nodes": [{"id": "sa", "object": {"apiVersion": "v1", "kind": "ServiceAccount",
///         "metadata": {"name": "web", "namespace": "apps", "labels": {"team": label}}}}],
/// }).to_string()).unwrap();
/// let changes = compare(&graph("a"), &graph("b"));
/// assert_eq!(changes[0].action, Action::Update);
/// assert_eq!(changes[0].fields, ["metadata.labels.team"]);
/// assert!(compare(&graph("a"), &graph("a")).is_empty());
/// ```
pub fn compare(old: &Graph, new: &Graph) -> Vec<ObjectChange> {
    changes(&objects(old), &objects(new))
}

fn changes(
    before: &BTreeMap<ObjectKey, &Value>,
    after: &BTreeMap<ObjectKey, &Value>,
) -> Vec<ObjectChange> {
    let keys: BTreeSet<&ObjectKey> = before.keys().chain(after.keys()).collect();
    let mut changes = Vec::new();
    for key in keys {
        let (action, object, fields) = match (before.get(key), after.get(key)) {
            (None, Some(new)) => (Action::Create, *new, Vec::new()),
            (Some(old), None) => (Action::Prune, *old, Vec::new()),
            (Some(old), Some(new)) if old != new => {
                let mut fields = Vec::new();
                crate::diff::field_paths("", Some(old), Some(new), &mut fields);
                (Action::Update, *new, fields)
            }
            _ => continue,
        };
        changes.push(ObjectChange {
            action,
            api_version: text_at(object, &["apiVersion"]),
            kind: key.0.clone(),
            namespace: key.1.clone(),
            name: key.2.clone(),
            fields,
        });
    }
    changes
}

/// `(kind, namespace, name)`.
type ObjectKey = (String, String, String);

fn objects(graph: &Graph) -> BTreeMap<ObjectKey, &Value> {
    graph
        .nodes
        .iter()
        .filter_map(|n| n.object.as_ref())
        .map(|o| {
            let key = (
                text_at(o, &["kind"]),
                text_at(o, &["metadata", "namespace"]),
                text_at(o, &["metadata", "name"]),
            );
            (key, o)
        })
        .collect()
}

fn text_at(value: &Value, path: &[&str]) -> String {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// What the candidate module does to one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Some of its objects would be created, updated or pruned.
    Changes,
    /// Its objects stay as they are.
    Unchanged,
    /// It would fail: the candidate does not render it, or its policy refuses it. A rollout's
    /// preview halts on it with nothing applied.
    Fails,
}

/// Why an instance would fail with the candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// `PolicyViolation`, or the render error's reason (`InvalidSpec`, `ModuleError`, …).
    pub reason: String,
    /// The first blocking violation, or the render error.
    pub message: String,
    /// It fails with the module it is on now too: not the candidate's doing.
    pub fails_now: bool,
}

/// The plan for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstancePlan {
    /// `namespace/name`.
    pub instance: String,
    /// Where it was read from (a file, or `cluster`).
    pub source: String,
    /// The module it renders with now.
    pub current: String,
    /// The rollout step (1-based, of the channel's strategy) that would move it.
    pub step: u32,
    /// What the candidate does to it.
    pub outcome: Outcome,
    /// Why it would fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Why its render with the current module could not be compared (every object then
    /// counts as created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_error: Option<String>,
    /// The objects that would change.
    pub objects: Vec<ObjectChange>,
    /// Nodes of the candidate's Graph still waiting for an export (a role's ARN, …): their
    /// objects are not known until the live objects are, so they are not compared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

/// An instance given to the plan that a rollout of this channel would not move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotOnChannel {
    /// `namespace/name`.
    pub instance: String,
    /// Where it was read from.
    pub source: String,
    /// What it pins instead (`embedded:1.0.0`, `oci://…`, `channel:other`).
    pub pins: String,
}

/// Object actions, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Objects created.
    pub create: u32,
    /// Objects updated.
    pub update: u32,
    /// Objects pruned.
    pub prune: u32,
}

impl Counts {
    fn add(&mut self, action: Action) {
        match action {
            Action::Create => self.create += 1,
            Action::Update => self.update += 1,
            Action::Prune => self.prune += 1,
        }
    }
}

/// What a candidate module would do to a channel's instances: `rollout plan`'s report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPlan {
    /// The channel.
    pub channel: String,
    /// The candidate module, as the channel's `spec.module` would name it.
    pub candidate: String,
    /// How the candidate was found and trusted (`oci://…@sha256:… (Verified: …)`).
    pub candidate_described: String,
    /// Instances planned.
    pub instances: u32,
    /// Instances with changes.
    pub changed: u32,
    /// Instances without changes.
    pub unchanged: u32,
    /// Instances that would fail; any of them halts a rollout in its preview.
    pub failed: u32,
    /// Objects per action over every instance.
    pub actions: Counts,
    /// Objects per kind and action.
    pub kinds: BTreeMap<String, Counts>,
    /// One entry per instance, in the order a rollout would move them.
    pub plans: Vec<InstancePlan>,
    /// Instances given that pin a module or follow another channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_on_channel: Vec<NotOnChannel>,
}

impl RolloutPlan {
    /// Builds the totals from the per-instance plans (kept in the given order).
    pub fn new(
        channel: &str,
        candidate: &PlatformRef,
        candidate_described: String,
        plans: Vec<InstancePlan>,
        not_on_channel: Vec<NotOnChannel>,
    ) -> Self {
        let mut plan = Self {
            channel: channel.to_string(),
            candidate: candidate.to_string(),
            candidate_described,
            instances: plans.len() as u32,
            changed: 0,
            unchanged: 0,
            failed: 0,
            actions: Counts::default(),
            kinds: BTreeMap::new(),
            plans,
            not_on_channel,
        };
        for p in &plan.plans {
            match p.outcome {
                Outcome::Changes => plan.changed += 1,
                Outcome::Unchanged => plan.unchanged += 1,
                Outcome::Fails => plan.failed += 1,
            }
            for o in &p.objects {
                plan.actions.add(o.action);
                plan.kinds.entry(o.kind.clone()).or_default().add(o.action);
            }
        }
        plan
    }

    /// The exit code of `rollout plan`: 4 when the candidate does not render an instance, 3
    /// when its policy refuses one, 0 otherwise.
    pub fn exit(&self) -> crate::exit::Exit {
        let fails = |policy: bool| {
            self.plans.iter().any(|p| {
                p.failure
                    .as_ref()
                    .is_some_and(|f| (f.reason == "PolicyViolation") == policy)
            })
        };
        if fails(false) {
            crate::exit::Exit::Failed
        } else if fails(true) {
            crate::exit::Exit::PolicyViolation
        } else {
            crate::exit::Exit::Success
        }
    }

    /// The plan as text: a summary, counts per kind, then one block per instance.
    ///
    /// ```
    /// use cuebe_cli::rollout::{Action, InstancePlan, ObjectChange, Outcome, RolloutPlan};
    /// let web = InstancePlan {
    ///     instance: "apps/web".into(), source: "web.yaml".into(),
    ///     current: "embedded:1.0.0".into(), step: 1, outcome: Outcome::Changes,
    ///     failure: None, current_error: None, pending: vec![],
    ///     objects: vec![ObjectChange {
    ///         action: Action::Update, api_version: "apps/v1".into(), kind: "Deployment".into(),
    ///         namespace: "apps".into(), name: "web".into(), fields: vec!["spec.replicas".into()],
    ///     }],
    /// };
    /// let plan = RolloutPlan::new("stable", &cuebe::PlatformRef::embedded("1.1.0"),
    ///     "embedded:1.1.0".into(), vec![web], vec![]);
    /// let text = plan.to_text();
    /// assert!(text.contains("1 instances: 1 would change, 0 unchanged, 0 would fail"), "{text}");
    /// assert!(text.contains("update Deployment apps/web: spec.replicas"), "{text}");
    /// ```
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "channel {}: candidate {}",
            self.channel, self.candidate_described
        );
        let _ = writeln!(
            out,
            "{} instances: {} would change, {} unchanged, {} would fail",
            self.instances, self.changed, self.unchanged, self.failed
        );
        let _ = writeln!(
            out,
            "objects: {} to create, {} to update, {} to prune",
            self.actions.create, self.actions.update, self.actions.prune
        );
        for (kind, c) in &self.kinds {
            let _ = writeln!(
                out,
                "  {kind:<24} {} create, {} update, {} prune",
                c.create, c.update, c.prune
            );
        }
        if self.failed > 0 {
            let _ = writeln!(
                out,
                "a rollout of {} would halt in its preview, before anything is applied",
                self.candidate
            );
        }
        for p in &self.plans {
            let what = match (&p.outcome, &p.failure) {
                (Outcome::Fails, Some(f)) if f.fails_now => {
                    format!("FAILS ({}; it fails with {} too)", f.reason, p.current)
                }
                (Outcome::Fails, Some(f)) => format!("FAILS ({})", f.reason),
                (Outcome::Changes, _) => format!("{} objects change", p.objects.len()),
                _ => "unchanged".to_string(),
            };
            let _ = writeln!(
                out,
                "\n{} (step {}, on {}): {what}",
                p.instance, p.step, p.current
            );
            if let Some(f) = &p.failure {
                for line in f.message.lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
            if let Some(e) = &p.current_error {
                let _ = writeln!(
                    out,
                    "  does not render with {} now ({e}): every object counts as created",
                    p.current
                );
            }
            if !p.pending.is_empty() {
                let _ = writeln!(out, "  pending, not compared: {}", p.pending.join(", "));
            }
            for o in &p.objects {
                let at = if o.namespace.is_empty() {
                    o.name.clone()
                } else {
                    format!("{}/{}", o.namespace, o.name)
                };
                let fields = if o.fields.is_empty() {
                    String::new()
                } else {
                    format!(": {}", o.fields.join(", "))
                };
                let _ = writeln!(out, "  {} {} {at}{fields}", o.action.as_str(), o.kind);
            }
        }
        if !self.not_on_channel.is_empty() {
            let _ = writeln!(
                out,
                "\nnot on channel {} (never moved by it):",
                self.channel
            );
            for n in &self.not_on_channel {
                let _ = writeln!(out, "  {} ({}): pins {}", n.instance, n.source, n.pins);
            }
        }
        out
    }
}

/// A module to render with: its reference, its files when published (`None`: embedded, the
/// renderer resolves it) and how it was found and trusted.
#[derive(Debug, Clone)]
pub struct Module {
    /// As a channel names it.
    pub reference: PlatformRef,
    /// The fetched files of a published module.
    pub source: Option<Arc<ModuleSource>>,
    /// For people: the reference and its verification.
    pub described: String,
}

/// The module an instance of `channel` renders with now: what the channel's status gives its
/// bucket (during a rollout, the target below the threshold and the previous module above
/// it), else the channel's `spec.module` (a manifest without a status).
///
/// ```
/// use cuebe::rollout::{PlatformChannel, PlatformChannelSpec, ChannelSpec};
/// let channel = PlatformChannel::new("stable", PlatformChannelSpec {
///     channel: ChannelSpec::for_module(cuebe::PlatformRef::embedded("1.0.0")),
/// });
/// assert_eq!(cuebe_cli::rollout::current_ref(&channel, "apps", "web").to_string(), "embedded:1.0.0");
/// ```
pub fn current_ref(channel: &PlatformChannel, namespace: &str, name: &str) -> PlatformRef {
    use kube::ResourceExt as _;
    let status = channel.status.clone().unwrap_or_default();
    let b = bucket(&channel.name_any(), namespace, name);
    module_for(&status, b)
        .cloned()
        .unwrap_or_else(|| channel.spec.channel.module.clone())
}

/// `Err(what it pins)` when a rollout of `channel` would never move `object`: it pins a
/// module, or follows another channel. An instance that names no module is planned as if it
/// followed the channel.
pub fn pinned_elsewhere<A: Abstraction>(channel: &str, object: &A) -> Result<(), String> {
    match object.platform_ref() {
        None => Ok(()),
        Some(r) if r.channel.as_deref() == Some(channel) => Ok(()),
        Some(r) => Err(r.to_string()),
    }
}

fn render_with<A: Abstraction>(
    renderer: &CueRenderer,
    object: &A,
    module: &Module,
    capabilities: &Capabilities,
) -> Result<Arc<Plan>, RenderError> {
    let mut input = render_input(object, capabilities.clone(), BTreeMap::new());
    input.platform_ref = Some(module.reference.clone());
    input.module = module.source.clone();
    // As the operator renders an instance on a channel: the module sees the reference it
    // renders with in `spec.platformRef`, not `{channel: NAME}` (a module knows embedded, oci
    // and git references).
    if let (Some(spec), Ok(reference)) = (
        input.spec.as_object_mut(),
        serde_json::to_value(&module.reference),
    ) {
        spec.insert("platformRef".into(), reference);
    }
    renderer.render_blocking(&input)
}

/// Why a render is not usable: the render error, or the first blocking violation.
fn failure_of(result: &Result<Arc<Plan>, RenderError>) -> Option<(String, String)> {
    match result {
        Err(e) => Some((e.reason().to_string(), e.to_string())),
        Ok(plan) if plan.graph().has_blocking_violations() => {
            let first = plan
                .graph()
                .violations
                .iter()
                .find(|v| v.severity == Severity::Error)
                .map(ToString::to_string)
                .unwrap_or_default();
            Some(("PolicyViolation".into(), first))
        }
        Ok(_) => None,
    }
}

/// Plans `candidate` on `instances` (each with where it was read from) as a rollout of
/// `channel` would preview it: each instance on the channel is rendered with the module it is
/// on now (from `current`, keyed by the reference's text; see [`current_ref`]) and with the
/// candidate, and the Graphs' objects compared. Instances pinned elsewhere are listed, not
/// rendered. Writes nothing; renders are cached by the renderer, so a candidate equal to the
/// current module costs one render per instance.
///
/// ```no_run
/// # fn f<A: cuebe::Abstraction>(channel: cuebe::rollout::PlatformChannel, instances: Vec<(String, A)>) {
/// use cuebe_cli::rollout::{Module, plan};
/// let renderer = cuebe::CueRenderer::new(A::modules());
/// let module = |v: &str| Module { reference: cuebe::PlatformRef::embedded(v), source: None, described: v.into() };
/// let current = [("embedded:1.0.0".to_string(), Ok(module("1.0.0")))].into();
/// let report = plan(&renderer, &channel, &instances, &module("1.1.0"), &current, &Default::default());
/// print!("{}", report.to_text());
/// # }
/// ```
pub fn plan<A: Abstraction>(
    renderer: &CueRenderer,
    channel: &PlatformChannel,
    instances: &[(String, A)],
    candidate: &Module,
    current: &BTreeMap<String, Result<Module, String>>,
    capabilities: &Capabilities,
) -> RolloutPlan {
    use kube::ResourceExt as _;
    let name = channel.name_any();
    let mut not_on_channel = Vec::new();
    let mut planned = Vec::new();
    for (source, object) in instances {
        let namespace = object.namespace().unwrap_or_else(|| "default".into());
        let instance = format!("{namespace}/{}", object.name_any());
        match pinned_elsewhere(&name, object) {
            Err(pins) => not_on_channel.push(NotOnChannel {
                instance,
                source: source.clone(),
                pins,
            }),
            Ok(()) => planned.push((source, object, namespace, instance)),
        }
    }
    let buckets: Vec<u64> = planned
        .iter()
        .map(|(_, o, ns, _)| bucket(&name, ns, &o.name_any()))
        .collect();
    // The channel's steps were checked when it was read; a count the API server would refuse
    // puts every instance in the first step rather than hide the plan.
    let steps = steps_of(&channel.spec.channel.strategy.steps, &buckets)
        .unwrap_or_else(|_| vec![1; buckets.len()]);
    let mut plans: Vec<(u64, InstancePlan)> = Vec::new();
    for (((source, object, namespace, instance), b), step) in
        planned.into_iter().zip(buckets).zip(steps)
    {
        let now = current_ref(channel, &namespace, &object.name_any());
        let new = render_with(renderer, object, candidate, capabilities);
        let old = match current.get(&now.to_string()) {
            Some(Ok(module)) => {
                render_with(renderer, object, module, capabilities).map_err(|e| e.to_string())
            }
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("{now} was not loaded")),
        };
        // Not rendered, or refused by its policy: nothing of it is applied now.
        let old = match old {
            Ok(plan) => match failure_of(&Ok(plan.clone())) {
                Some((reason, message)) => Err(format!("{reason}: {message}")),
                None => Ok(plan),
            },
            Err(e) => Err(e),
        };
        let fails_now = old.is_err();
        let mut entry = InstancePlan {
            instance,
            source: source.clone(),
            current: now.to_string(),
            step,
            outcome: Outcome::Unchanged,
            failure: None,
            current_error: None,
            objects: Vec::new(),
            pending: Vec::new(),
        };
        if let Some((reason, message)) = failure_of(&new) {
            entry.outcome = Outcome::Fails;
            entry.failure = Some(Failure {
                reason,
                message,
                fails_now,
            });
        } else if let Ok(new) = &new {
            let before = match &old {
                Ok(plan) => objects(plan.graph()),
                Err(e) => {
                    entry.current_error = Some(e.clone());
                    BTreeMap::new()
                }
            };
            entry.objects = changes(&before, &objects(new.graph()));
            entry.pending = new
                .graph()
                .nodes
                .iter()
                .filter(|n| n.object.is_none())
                .map(|n| format!("{} (on {})", n.id, n.pending_on.join(", ")))
                .collect();
            if !entry.objects.is_empty() {
                entry.outcome = Outcome::Changes;
            }
        }
        plans.push((b, entry));
    }
    plans.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.instance.cmp(&b.1.instance)));
    RolloutPlan::new(
        &name,
        &candidate.reference,
        candidate.described.clone(),
        plans.into_iter().map(|(_, p)| p).collect(),
        not_on_channel,
    )
}

/// Parses a module reference as `rollout plan --module` takes it: `embedded:VERSION`,
/// `oci://REGISTRY/REPO@sha256:…`, or a git reference (`git+https://…?ref=…&dir=…`,
/// `git+file://…`, `git://…`).
///
/// ```
/// use cuebe_cli::rollout::parse_module_ref;
/// assert_eq!(parse_module_ref("embedded:1.1.0").unwrap(), cuebe::PlatformRef::embedded("1.1.0"));
/// assert!(parse_module_ref("1.1.0").is_err());
/// ```
pub fn parse_module_ref(text: &str) -> Result<PlatformRef, String> {
    let text = text.trim();
    if let Some(version) = text.strip_prefix("embedded:") {
        if version.is_empty() {
            return Err("--module embedded: names no version (embedded:1.0.0)".into());
        }
        return Ok(PlatformRef::embedded(version));
    }
    if text.starts_with("oci://") {
        return Ok(PlatformRef {
            oci: Some(text.to_string()),
            ..PlatformRef::default()
        });
    }
    if text.starts_with("git+") || text.starts_with("git://") {
        return Ok(PlatformRef {
            git: Some(text.to_string()),
            ..PlatformRef::default()
        });
    }
    Err(format!(
        "--module {text:?}: expected embedded:VERSION, oci://REGISTRY/REPO@sha256:<digest> or git+https://HOST/REPO?ref=REF&dir=PATH"
    ))
}

/// The 1-based step of `strategy` that moves each of `buckets` (in the order given), as the
/// driver picks them: the instances with the smallest buckets first, the step whose count
/// first reaches an instance's place.
///
/// ```
/// use cuebe_cli::rollout::steps_of;
/// let steps = ["1", "50%"].map(String::from).to_vec();
/// // 4 instances: 1, then 50% (2), then the implied 100%.
/// assert_eq!(steps_of(&steps, &[30, 10, 20, 40]).unwrap(), [3, 1, 2, 3]);
/// ```
pub fn steps_of(steps: &[String], buckets: &[u64]) -> Result<Vec<u32>, String> {
    let strategy = cuebe::rollout::RolloutStrategy {
        steps: steps.to_vec(),
        ..Default::default()
    };
    let parsed = strategy.parse().map_err(|e| e.to_string())?;
    let mut sorted: Vec<u64> = buckets.to_vec();
    sorted.sort_unstable();
    let counts: Vec<usize> = parsed
        .steps
        .iter()
        .map(|s: &Step| s.count(sorted.len()))
        .collect();
    Ok(buckets
        .iter()
        .map(|b| {
            let place = sorted.partition_point(|x| x < b) + 1;
            counts
                .iter()
                .position(|&c| c >= place)
                .map_or(counts.len() as u32, |i| i as u32 + 1)
        })
        .collect())
}

/// The channel's status as text: module, phase, step, updated/total, ready and failed, the
/// rollout's message, preview and problems, the spec's pause and undo, and the history.
///
/// ```
/// use cuebe::rollout::{PlatformChannel, PlatformChannelSpec, ChannelSpec, ChannelStatus};
/// let mut channel = PlatformChannel::new("stable", PlatformChannelSpec {
///     channel: ChannelSpec::for_module(cuebe::PlatformRef::embedded("1.0.0")),
/// });
/// channel.status = Some(ChannelStatus {
///     module: "embedded:1.0.0".into(), phase: "Complete".into(),
///     updated: "3/3".into(), ready: 3, ..ChannelStatus::default()
/// });
/// let text = cuebe_cli::rollout::status_text(&channel);
/// assert!(text.contains("phase: Complete"), "{text}");
/// assert!(text.contains("updated: 3/3"), "{text}");
/// ```
pub fn status_text(channel: &PlatformChannel) -> String {
    use kube::ResourceExt as _;
    let spec = &channel.spec.channel;
    let status = channel.status.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "channel {} ({}.{})",
        channel.name_any(),
        spec.abstraction.kind,
        spec.abstraction.group
    );
    if status.phase.is_empty() && status.current.is_none() {
        let _ = writeln!(
            out,
            "no status yet: the operator's leader has not seen this channel (spec.module: {})",
            spec.module
        );
        return out;
    }
    let _ = writeln!(out, "module: {}", status.module);
    let _ = writeln!(out, "phase: {}", status.phase);
    let steps = spec.strategy.parse().map(|s| s.steps.len()).ok();
    if let Some(r) = &status.rollout {
        let step = match (r.phase.is_active(), steps) {
            (true, Some(n)) => format!(", step {} of {n}", (r.step as usize + 1).min(n)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "rollout: {} -> {} ({}{step}, started {})",
            r.previous,
            r.target,
            r.phase.as_str(),
            r.started_at
        );
        if !r.message.is_empty() {
            let _ = writeln!(out, "  {}", r.message);
        }
        if let Some(p) = &r.preview {
            let _ = writeln!(
                out,
                "preview: {} instances, {} change, {} would fail",
                p.instances, p.changed, p.failed
            );
        }
    }
    let _ = writeln!(
        out,
        "updated: {}  ready: {}  failed: {}",
        status.updated, status.ready, status.failed
    );
    if spec.paused {
        let _ = writeln!(out, "spec.paused: true");
    }
    if spec.undo {
        let _ = writeln!(out, "spec.undo: true");
    }
    if !status.error.is_empty() {
        let _ = writeln!(out, "error: {}", status.error);
    }
    let problems: Vec<_> = status
        .rollout
        .iter()
        .flat_map(|r| {
            let preview = r.preview.iter().flat_map(|p| p.failures.iter());
            r.problems
                .iter()
                .chain(preview.filter(|f| !r.problems.contains(f)))
        })
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(out, "problems:");
        for p in problems {
            let _ = writeln!(out, "  {} {}: {}", p.instance, p.reason, p.message);
        }
    }
    if !status.history.is_empty() {
        let _ = writeln!(out, "history:");
        for h in &status.history {
            let _ = writeln!(
                out,
                "  {} {} -> {}: {}",
                h.finished_at, h.previous, h.target, h.outcome
            );
        }
    }
    out
}

/// The merge patch of `rollout pause|resume|undo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `spec.paused: true`: nothing more is moved.
    Pause,
    /// `spec.paused: false`.
    Resume,
    /// `spec.undo: true`: every moved instance returns to the previous module.
    Undo,
}

impl Control {
    /// The merge patch on the channel.
    ///
    /// ```
    /// use cuebe_cli::rollout::Control;
    /// assert_eq!(Control::Undo.patch(), serde_json::json!({"spec": {"undo": true}}));
    /// ```
    pub fn patch(self) -> Value {
        match self {
            Self::Pause => serde_json::json!({"spec": {"paused": true}}),
            Self::Resume => serde_json::json!({"spec": {"paused": false}}),
            Self::Undo => serde_json::json!({"spec": {"undo": true}}),
        }
    }
}

/// Patches the channel `name` with `control` (a merge patch on its spec) and returns it as
/// stored. Fails as the API server does (no such channel, no permission).
///
/// ```no_run
/// # async fn f(client: kube::Client) -> Result<(), kube::Error> {
/// let channel = cuebe_cli::rollout::control(client, "stable", cuebe_cli::rollout::Control::Pause).await?;
/// assert!(channel.spec.channel.paused);
/// # Ok(()) }
/// ```
pub async fn control(
    client: kube::Client,
    name: &str,
    control: Control,
) -> Result<PlatformChannel, kube::Error> {
    let api: kube::Api<PlatformChannel> = kube::Api::all(client);
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&control.patch()),
    )
    .await
}

/// The channel's status, or the default before the operator wrote one.
pub fn status_of(channel: &PlatformChannel) -> ChannelStatus {
    channel.status.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn graph(nodes: Value) -> Graph {
        Graph::from_json(
            &json!({
                "graphVersion": "cuebe.dev/v1alpha1",
                "metadata": {"platformRefResolved": "sha256:0", "module": "m@1", "renderHash": "sha256:0"},
                "nodes": nodes,
            })
            .to_string(),
        )
        .expect("a graph")
    }

    fn object(kind: &str, name: &str, extra: Value) -> Value {
        let mut o = json!({"apiVersion": "v1", "kind": kind,
            "metadata": {"name": name, "namespace": "apps"}});
        if let (Some(o), Some(extra)) = (o.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                o.insert(k.clone(), v.clone());
            }
        }
        o
    }

    #[test]
    fn objects_are_matched_by_kind_namespace_and_name_and_compared_by_content() {
        let old = graph(json!([
            {"id": "a", "object": object("ConfigMap", "kept", json!({"data": {"x": "1"}}))},
            {"id": "b", "object": object("ConfigMap", "changed", json!({"data": {"x": "1"}}))},
            {"id": "c", "object": object("Secret", "gone", json!({}))},
        ]));
        // Node ids may change between modules: objects are what the cluster sees.
        let new = graph(json!([
            {"id": "renamed", "object": object("ConfigMap", "kept", json!({"data": {"x": "1"}}))},
            {"id": "b", "object": object("ConfigMap", "changed", json!({"data": {"x": "2", "y": "3"}}))},
            {"id": "d", "object": object("Service", "new", json!({}))},
        ]));
        let changes = compare(&old, &new);
        let summary: Vec<(Action, &str, &str)> = changes
            .iter()
            .map(|c| (c.action, c.kind.as_str(), c.name.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (Action::Update, "ConfigMap", "changed"),
                (Action::Prune, "Secret", "gone"),
                (Action::Create, "Service", "new"),
            ]
        );
        assert_eq!(changes[0].fields, ["data.x", "data.y"]);
    }

    #[test]
    fn the_same_name_in_another_namespace_or_kind_is_another_object() {
        let mut other_ns = object("ConfigMap", "web", json!({}));
        other_ns["metadata"]["namespace"] = json!("team");
        let old = graph(json!([{"id": "a", "object": object("ConfigMap", "web", json!({}))}]));
        let new = graph(json!([
            {"id": "a", "object": other_ns},
            {"id": "b", "object": object("Secret", "web", json!({}))},
        ]));
        let actions: Vec<Action> = compare(&old, &new).iter().map(|c| c.action).collect();
        assert_eq!(actions, [Action::Prune, Action::Create, Action::Create]);
    }

    #[test]
    fn references_parse_by_scheme_and_anything_else_names_the_forms() {
        assert_eq!(
            parse_module_ref("oci://r.example/p@sha256:00").unwrap().oci,
            Some("oci://r.example/p@sha256:00".into())
        );
        assert!(
            parse_module_ref("git+https://h/r?ref=main")
                .unwrap()
                .git
                .is_some()
        );
        assert!(
            parse_module_ref("git://127.0.0.1/r?ref=main")
                .unwrap()
                .git
                .is_some()
        );
        let err = parse_module_ref("channel:stable").unwrap_err();
        assert!(err.contains("expected embedded:VERSION"), "{err}");
        assert!(parse_module_ref("embedded:").is_err());
    }

    #[test]
    fn steps_follow_the_buckets_and_the_strategy() {
        let steps = ["1", "10%", "50%", "100%"].map(String::from).to_vec();
        let buckets: Vec<u64> = (0..20).rev().collect();
        let s = steps_of(&steps, &buckets).unwrap();
        // Bucket 0 (the last given) is the canary; 10% of 20 is 2; 50% is 10.
        assert_eq!(s[19], 1);
        assert_eq!(s[18], 2);
        assert_eq!(s.iter().filter(|&&x| x == 3).count(), 8);
        assert_eq!(s.iter().filter(|&&x| x == 4).count(), 10);
        assert!(steps_of(&["0".into()], &buckets).is_err());
    }

    #[test]
    fn the_exit_code_says_render_failure_over_policy_over_success() {
        let plan = |reasons: &[&str]| {
            let plans = reasons
                .iter()
                .map(|r| InstancePlan {
                    instance: format!("apps/{r}"),
                    source: "f".into(),
                    current: "embedded:1.0.0".into(),
                    step: 1,
                    outcome: if r.is_empty() {
                        Outcome::Unchanged
                    } else {
                        Outcome::Fails
                    },
                    failure: (!r.is_empty()).then(|| Failure {
                        reason: r.to_string(),
                        message: "m".into(),
                        fails_now: false,
                    }),
                    current_error: None,
                    objects: vec![],
                    pending: vec![],
                })
                .collect();
            RolloutPlan::new(
                "stable",
                &PlatformRef::embedded("1.1.0"),
                String::new(),
                plans,
                vec![],
            )
        };
        assert_eq!(plan(&[""]).exit(), crate::exit::Exit::Success);
        assert_eq!(
            plan(&["", "PolicyViolation"]).exit(),
            crate::exit::Exit::PolicyViolation
        );
        assert_eq!(
            plan(&["PolicyViolation", "ModuleError"]).exit(),
            crate::exit::Exit::Failed
        );
    }
}
