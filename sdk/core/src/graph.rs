//! The Graph artifact: the contract between the renderer (CUE) and the executor.
//!
//! Owns: the serde types (with a published JSON Schema), [`Graph::validate`] and drawing the DAG
//! as DOT or Mermaid. No cluster client and no CUE here.
//!
//! Invariants checked by [`Graph::validate`] before anything runs: node ids are unique,
//! dependencies exist, the dependencies form no cycle (the error shows the cycle's path),
//! readiness predicates are known and well-formed, every object has `apiVersion`, `kind` and
//! `metadata.name`, a namespaced object lives in the instance's namespace, and a `Reference`
//! node's object names the object it reads and nothing more.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of the Graph artifact format.
pub const GRAPH_VERSION: &str = "cuebe.dev/v1alpha1";

/// A rendered instance: the objects to apply, in which order, and when each is ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    /// Always [`GRAPH_VERSION`].
    pub graph_version: String,
    /// Where the graph comes from.
    pub metadata: GraphMetadata,
    /// The nodes, in the module's order.
    pub nodes: Vec<Node>,
    /// Values read from live objects and fed back into the render.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<Export>,
    /// Policy violations; when any has severity `Error`, nothing may be applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

/// Provenance of a graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GraphMetadata {
    /// Digest of the platform module that rendered it (`sha256:…`).
    pub platform_ref_resolved: String,
    /// The module's declared name and version, e.g. `webservice@1.0.0`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module: String,
    /// `sha256:` of the module digest, the canonical input and the canonical output.
    pub render_hash: String,
}

/// One object in the graph and the rules for applying it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Stable id, unique in the graph (e.g. `deployment`).
    pub id: String,
    /// The Kubernetes object; absent while the node is pending on an export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    /// How the object is applied.
    #[serde(default)]
    pub apply_policy: ApplyPolicy,
    /// Ids of nodes that must be Ready before this one is applied.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// All must pass for the node to be Ready; empty means the kind's built-in judgement
    /// (a Deployment's rollout, a Job's completion, a PVC's binding, kstatus conditions…).
    #[serde(default)]
    pub ready_when: Vec<ReadinessPredicate>,
    /// What happens to the object when it leaves the graph or the instance is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Exports this node's object needs that are not observed yet (its own or an upstream
    /// node's). A pending node is not applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_on: Vec<String>,
}

impl Node {
    /// True while the node waits for an export.
    pub fn is_pending(&self) -> bool {
        !self.pending_on.is_empty()
    }

    /// True when the node only reads an existing object ([`ApplyMode::Reference`]).
    pub fn is_reference(&self) -> bool {
        self.apply_policy.mode.is_reference()
    }
}

/// How a node's object is written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyPolicy {
    /// Create and keep up to date, only create, or only take over an existing object.
    #[serde(default)]
    pub mode: ApplyMode,
    /// What to do when another field manager owns a field we set.
    #[serde(default)]
    pub conflict_policy: ConflictPolicy,
}

/// Apply mode of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ApplyMode {
    /// Server-Side Apply on every reconcile.
    #[default]
    CreateOrUpdate,
    /// Create when missing, never update.
    CreateOnly,
    /// Never create; take over an existing object.
    AdoptOnly,
    /// Only read an existing object that someone else owns (a Secret the app needs, a shared
    /// ConfigMap): never written, labelled, adopted, recorded in the inventory or deleted. The
    /// node is Pending, and its dependents wait, until the object exists; its `readyWhen`
    /// predicates and exports read the live object. The node's `object` names the object
    /// (`apiVersion`, `kind`, `metadata.name`, optionally `metadata.namespace`) and nothing
    /// else: anything more would never be applied, so [`Graph::validate`] refuses it.
    Reference,
}

impl ApplyMode {
    /// True for [`ApplyMode::Reference`]: the object is only read.
    pub fn is_reference(self) -> bool {
        self == Self::Reference
    }
}

/// Conflict policy of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConflictPolicy {
    /// Stop and report the other manager and the fields.
    #[default]
    Fail,
    /// Take the fields over (revert the other manager's change).
    Force,
}

/// What happens to an object when it leaves the graph or its instance is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete it.
    #[default]
    Delete,
    /// Leave it in place, unmanaged.
    Orphan,
}

/// A readiness predicate. Every predicate also requires the object's controller to have observed
/// its current generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ReadinessPredicate {
    /// The object exists.
    Exists {
        /// Give up after this long (`30s`, `5m`, `1h`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
    },
    /// `status.conditions[type]` has this status (and reason, if given).
    ConditionMatch {
        /// Condition type, e.g. `ACK.ResourceSynced`.
        #[serde(rename = "conditionType", alias = "condition")]
        condition_type: String,
        /// `True`, `False` or `Unknown`.
        status: String,
        /// Required reason, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Give up after this long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
    },
    /// A Deployment's `Available` condition is `True` and its rollout is complete.
    DeploymentAvailable {
        /// Give up after this long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
    },
    /// A Service of type LoadBalancer has an ingress address.
    ServiceLoadBalancerReady {
        /// Give up after this long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
    },
    /// kstatus-style: reconciled (observedGeneration current), `Ready` true when present, not
    /// `Stalled`.
    Current {
        /// Give up after this long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
    },
    /// A CEL expression over the live object (bound as `self`) is true.
    Cel {
        /// The expression, e.g. `self.status.phase == "Bound"`.
        expression: String,
        /// What people read while the expression is false (in `readyDetails`, the Ready
        /// condition and `explain`), e.g. `the queue has no consumer yet`; without it they read
        /// the expression.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Give up after this long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
    },
}

/// The predicate type names the Graph accepts.
pub const PREDICATE_TYPES: &[&str] = &[
    "Exists",
    "ConditionMatch",
    "DeploymentAvailable",
    "ServiceLoadBalancerReady",
    "Current",
    "Cel",
];

impl ReadinessPredicate {
    /// The predicate's type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Exists { .. } => "Exists",
            Self::ConditionMatch { .. } => "ConditionMatch",
            Self::DeploymentAvailable { .. } => "DeploymentAvailable",
            Self::ServiceLoadBalancerReady { .. } => "ServiceLoadBalancerReady",
            Self::Current { .. } => "Current",
            Self::Cel { .. } => "Cel",
        }
    }

    /// The predicate's timeout as written, if any.
    pub fn timeout_text(&self) -> Option<&str> {
        match self {
            Self::Exists { timeout }
            | Self::ConditionMatch { timeout, .. }
            | Self::DeploymentAvailable { timeout }
            | Self::ServiceLoadBalancerReady { timeout }
            | Self::Current { timeout }
            | Self::Cel { timeout, .. } => timeout.as_deref(),
        }
    }

    /// The predicate's timeout, parsed.
    pub fn timeout(&self) -> Result<Option<Duration>, String> {
        self.timeout_text().map(parse_duration).transpose()
    }

    /// A short human label, used in drawings and status.
    pub fn label(&self) -> String {
        let base = match self {
            Self::ConditionMatch {
                condition_type,
                status,
                reason,
                ..
            } => match reason {
                Some(r) => format!("{condition_type}={status} ({r})"),
                None => format!("{condition_type}={status}"),
            },
            Self::Cel { expression, .. } => format!("cel: {expression}"),
            other => other.type_name().to_string(),
        };
        match self.timeout_text() {
            Some(t) => format!("{base} within {t}"),
            None => base,
        }
    }
}

/// Parses `90s`, `5m`, `1h30m`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use a number with a unit, e.g. 30s, 5m, 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        // Checked: a module may write any number, and `u64::MAX` hours must be an error
        // naming the predicate, not an overflow panic in the operator.
        let too_long = || format!("invalid duration {s:?}: too long");
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(unit).ok_or_else(too_long)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A value read from a node's live object and fed back into the render.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    /// Name the module uses (`input.exports.<name>`).
    pub name: String,
    /// Node whose live object holds it.
    pub node: String,
    /// Dotted path inside that object, e.g. `status.ackResourceMetadata.arn`.
    pub path: String,
    /// The observed value, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// How serious a violation is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Severity {
    /// Blocks the apply.
    #[default]
    Error,
    /// Reported, not blocking.
    Warning,
}

/// One policy failure, naming the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// The field at fault, e.g. `spec.image` or `nodes.deployment.object.spec.template.spec.hostNetwork`.
    pub path: String,
    /// The rule's stable name, e.g. `allowed-registries`.
    pub rule: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// `Error` blocks the apply.
    #[serde(default)]
    pub severity: Severity,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]: {}", self.path, self.rule, self.message)
    }
}

/// Why a document (a Graph, a node, an inventory) does not decode: the field at fault and what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// The field, e.g. `nodes[2].readyWhen[0].type`, or the document's name when the text is
    /// not JSON at all.
    pub path: String,
    /// What is wrong (serde's message, with the line and column for text).
    pub message: String,
}

/// Decodes `value` into `T`, naming the field of any error under `prefix` (e.g. `nodes.web`).
///
/// Serde's own errors say what is wrong but not where inside a nested value; a module author (or
/// whoever edited a stored inventory) needs the field.
///
/// ```
/// use cuebe_core::graph::{Node, decode};
/// let node = serde_json::json!({"id": "web", "readyWhen": [{"type": "Eventually"}]});
/// let err = decode::<Node>(node, "nodes.web").unwrap_err();
/// assert_eq!(err.path, "nodes.web.readyWhen[0].type");
/// ```
pub fn decode<T: serde::de::DeserializeOwned>(
    value: Value,
    prefix: &str,
) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| DecodeError {
        path: join_path(prefix, &e.path().to_string()),
        message: e.into_inner().to_string(),
    })
}

/// Decodes JSON text into `T`, naming the field of any error under `prefix`; text that is not
/// JSON is named `prefix` itself (serde's message gives the line and column).
pub fn decode_json<T: serde::de::DeserializeOwned>(
    text: &str,
    prefix: &str,
) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| DecodeError {
        path: join_path(prefix, &e.path().to_string()),
        message: e.into_inner().to_string(),
    })?;
    // Text after the document is a syntax error too, not something to ignore.
    de.end().map_err(|e| DecodeError {
        path: prefix.to_string(),
        message: e.to_string(),
    })?;
    Ok(value)
}

/// `prefix` followed by a serde_path_to_error path (`.` is its root, `[0].a` an index first).
fn join_path(prefix: &str, path: &str) -> String {
    match path {
        "" | "." => prefix.to_string(),
        p if prefix.is_empty() => p.to_string(),
        p if p.starts_with('[') => format!("{prefix}{p}"),
        p => format!("{prefix}.{p}"),
    }
}

/// Why a graph is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Two nodes share an id.
    #[error("nodes: id {0:?} is used by more than one node")]
    DuplicateId(String),
    /// `dependsOn` names a node that is not in the graph.
    #[error("nodes.{node}.dependsOn: unknown node {missing:?}")]
    UnknownDependency {
        /// The node with the bad edge.
        node: String,
        /// The id it names.
        missing: String,
    },
    /// The dependencies form a cycle.
    #[error("nodes: dependency cycle {}", path.join(" -> "))]
    Cycle {
        /// The cycle, first node repeated at the end.
        path: Vec<String>,
    },
    /// A predicate is malformed (bad timeout, empty expression).
    #[error("nodes.{node}.readyWhen[{index}]: {message}")]
    InvalidPredicate {
        /// The node.
        node: String,
        /// Index in `readyWhen`.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// An object lacks `apiVersion`, `kind` or `metadata.name`.
    #[error("nodes.{node}.object.{field}: required, and missing or not a non-empty string")]
    MissingObjectField {
        /// The node.
        node: String,
        /// The missing field.
        field: &'static str,
    },
    /// A namespaced object outside the instance's namespace.
    #[error(
        "nodes.{node}.object.metadata.namespace: {found:?} is outside the instance's namespace {expected:?}"
    )]
    WrongNamespace {
        /// The node.
        node: String,
        /// Its namespace.
        found: String,
        /// The instance's namespace.
        expected: String,
    },
    /// A Reference node's object holds more than the identity of the object to read.
    #[error(
        "nodes.{node}.object.{field}: a Reference node only reads an existing object, so its \
         object names it (apiVersion, kind, metadata.name, metadata.namespace) and nothing \
         else; {field} would never be applied: remove it, or use another applyPolicy.mode to \
         write the object"
    )]
    ReferenceContent {
        /// The node.
        node: String,
        /// The field beyond the identity, e.g. `data` or `metadata.labels`.
        field: String,
    },
    /// A Reference node asks for a write or delete policy, which it never uses.
    #[error(
        "nodes.{node}.{field}: a Reference node is never written or deleted, so {field} has no \
         meaning on it: remove it"
    )]
    ReferencePolicy {
        /// The node.
        node: String,
        /// `deletionPolicy` or `applyPolicy.conflictPolicy`.
        field: &'static str,
    },
    /// A pending node waits for an export whose source node is not in the graph.
    #[error(
        "exports.{export}.node: a node waits for this export, but its source node {node:?} is not in the graph"
    )]
    UnknownExportNode {
        /// The export.
        export: String,
        /// The node it names.
        node: String,
    },
}

impl Graph {
    /// Reads a Graph from its JSON form (what `render -o json` prints), naming the field of any
    /// error, e.g. `nodes[1].readyWhen[0].timeout`. Not validated: see [`Graph::validate`].
    ///
    /// ```
    /// use cuebe_core::graph::Graph;
    /// let err = Graph::from_json(r#"{"graphVersion": "cuebe.dev/v1alpha1",
    ///     "metadata": {"platformRefResolved": "sha256:0", "renderHash": "sha256:0"},
    ///     "nodes": [{"id": "a", "dependsOn": "b"}]}"#).unwrap_err();
    /// assert_eq!(err.path, "nodes[0].dependsOn");
    /// ```
    pub fn from_json(text: &str) -> Result<Self, DecodeError> {
        decode_json(text, "")
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// True when a violation of severity `Error` is present.
    pub fn has_blocking_violations(&self) -> bool {
        self.violations
            .iter()
            .any(|v| v.severity == Severity::Error)
    }

    /// Checks the invariants listed in the module doc. `namespace` is the instance's namespace.
    pub fn validate(&self, namespace: &str) -> Result<(), Vec<GraphError>> {
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for n in &self.nodes {
            if !seen.insert(n.id.as_str()) {
                errors.push(GraphError::DuplicateId(n.id.clone()));
            }
        }
        for n in &self.nodes {
            for d in &n.depends_on {
                if !seen.contains(d.as_str()) {
                    errors.push(GraphError::UnknownDependency {
                        node: n.id.clone(),
                        missing: d.clone(),
                    });
                }
            }
            for (index, p) in n.ready_when.iter().enumerate() {
                let invalid = |message: String| GraphError::InvalidPredicate {
                    node: n.id.clone(),
                    index,
                    message,
                };
                if let Err(e) = p.timeout() {
                    errors.push(invalid(format!("timeout: {e}")));
                }
                if let ReadinessPredicate::Cel {
                    expression,
                    message,
                    ..
                } = p
                {
                    if expression.trim().is_empty() {
                        errors.push(invalid("expression: must not be empty".into()));
                    }
                    if message.as_deref().is_some_and(|m| m.trim().is_empty()) {
                        errors.push(invalid(
                            "message: must not be empty (leave it out to show the expression)"
                                .into(),
                        ));
                    }
                }
                if let ReadinessPredicate::ConditionMatch {
                    condition_type,
                    status,
                    ..
                } = p
                {
                    if condition_type.is_empty() {
                        errors.push(invalid("conditionType: must not be empty".into()));
                    }
                    if !matches!(status.as_str(), "True" | "False" | "Unknown") {
                        errors.push(invalid(format!(
                            "status: {status:?} is not one of True, False, Unknown"
                        )));
                    }
                }
            }
            if let Some(obj) = &n.object {
                check_object(&n.id, obj, namespace, &mut errors);
            }
            if n.is_reference() {
                check_reference(n, &mut errors);
            }
        }
        // A node may only wait for an export whose source node is in this graph; otherwise it
        // would stay pending forever.
        for n in &self.nodes {
            for waiting in &n.pending_on {
                if let Some(e) = self.exports.iter().find(|e| &e.name == waiting)
                    && !seen.contains(e.node.as_str())
                {
                    errors.push(GraphError::UnknownExportNode {
                        export: e.name.clone(),
                        node: e.node.clone(),
                    });
                }
            }
        }
        if let Some(path) = find_cycle(&self.nodes) {
            errors.push(GraphError::Cycle { path });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Node ids in waves: every node comes after all of its dependencies; nodes of one wave are
    /// independent. Assumes a valid (acyclic) graph.
    pub fn waves(&self) -> Vec<Vec<String>> {
        let mut level: HashMap<&str, usize> = HashMap::new();
        let by_id: HashMap<&str, &Node> = self.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        fn depth<'a>(
            id: &'a str,
            by_id: &HashMap<&'a str, &'a Node>,
            level: &mut HashMap<&'a str, usize>,
            guard: usize,
        ) -> usize {
            if let Some(l) = level.get(id) {
                return *l;
            }
            let l = match by_id.get(id) {
                Some(n) if guard > 0 => n
                    .depends_on
                    .iter()
                    .map(|d| depth(d, by_id, level, guard - 1) + 1)
                    .max()
                    .unwrap_or(0),
                _ => 0,
            };
            level.insert(id, l);
            l
        }
        let mut waves: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for n in &self.nodes {
            let l = depth(&n.id, &by_id, &mut level, self.nodes.len());
            waves.entry(l).or_default().push(n.id.clone());
        }
        waves.into_values().collect()
    }

    /// The DAG in Graphviz DOT, each node labelled with its kind and readiness gate.
    pub fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph cuebe {\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n",
        );
        for n in &self.nodes {
            let _ = writeln!(
                out,
                "  {} [label=\"{}\\n{}\\nready: {}\"{}];",
                dot_id(&n.id),
                n.id,
                kind_of(n),
                gate_label(n).replace('"', "\\\""),
                if n.is_pending() {
                    ", style=dashed"
                } else if n.is_reference() {
                    ", style=dotted"
                } else {
                    ""
                }
            );
        }
        for n in &self.nodes {
            for d in &n.depends_on {
                let _ = writeln!(out, "  {} -> {};", dot_id(d), dot_id(&n.id));
            }
        }
        out.push_str("}\n");
        out
    }

    /// The DAG as a Mermaid flowchart, each node labelled with its kind and readiness gate.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for n in &self.nodes {
            let _ = writeln!(
                out,
                "  {}[\"{}<br/>{}<br/>ready: {}\"]",
                dot_id(&n.id),
                n.id,
                kind_of(n),
                gate_label(n).replace('"', "#quot;"),
            );
        }
        for n in &self.nodes {
            for d in &n.depends_on {
                let _ = writeln!(out, "  {} --> {}", dot_id(d), dot_id(&n.id));
            }
        }
        out
    }
}

fn dot_id(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn kind_of(n: &Node) -> String {
    match n
        .object
        .as_ref()
        .and_then(|o| o.get("kind"))
        .and_then(Value::as_str)
    {
        Some(kind) if n.is_pending() => format!("{kind} (pending on {})", n.pending_on.join(", ")),
        Some(kind) if n.is_reference() => format!("{kind} (reference)"),
        Some(kind) => kind.to_string(),
        None => format!("(pending on {})", n.pending_on.join(", ")),
    }
}

fn gate_label(n: &Node) -> String {
    if n.ready_when.is_empty() {
        // Judged by its kind (`readiness::kind_default`), not only by existing.
        "by kind".to_string()
    } else {
        n.ready_when
            .iter()
            .map(ReadinessPredicate::label)
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

fn non_empty_str<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

fn check_object(id: &str, obj: &Value, namespace: &str, errors: &mut Vec<GraphError>) {
    for (field, path) in [
        ("apiVersion", &["apiVersion"][..]),
        ("kind", &["kind"][..]),
        ("metadata.name", &["metadata", "name"][..]),
    ] {
        if non_empty_str(obj, path).is_none() {
            errors.push(GraphError::MissingObjectField {
                node: id.to_string(),
                field,
            });
        }
    }
    if let Some(ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
        && ns != namespace
    {
        errors.push(GraphError::WrongNamespace {
            node: id.to_string(),
            found: ns.to_string(),
            expected: namespace.to_string(),
        });
    }
}

/// A Reference node names the object it reads and asks for nothing a write would do: a
/// platform author who gives it labels, data or a spec expects them applied, and they never
/// would be.
fn check_reference(n: &Node, errors: &mut Vec<GraphError>) {
    let beyond = |field: String| GraphError::ReferenceContent {
        node: n.id.clone(),
        field,
    };
    if let Some(Value::Object(fields)) = &n.object {
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("apiVersion" | "kind", _) => {}
                ("metadata", Value::Object(meta)) => {
                    for meta_key in meta.keys() {
                        if !matches!(meta_key.as_str(), "name" | "namespace") {
                            errors.push(beyond(format!("metadata.{meta_key}")));
                        }
                    }
                }
                _ => errors.push(beyond(key.clone())),
            }
        }
    }
    if n.deletion_policy.is_some() {
        errors.push(GraphError::ReferencePolicy {
            node: n.id.clone(),
            field: "deletionPolicy",
        });
    }
    if n.apply_policy.conflict_policy == ConflictPolicy::Force {
        errors.push(GraphError::ReferencePolicy {
            node: n.id.clone(),
            field: "applyPolicy.conflictPolicy",
        });
    }
}

/// Finds one dependency cycle and returns its path (first node repeated at the end).
fn find_cycle(nodes: &[Node]) -> Option<Vec<String>> {
    use petgraph::graph::DiGraph;
    let mut g: DiGraph<&str, ()> = DiGraph::new();
    let idx: HashMap<&str, _> = nodes
        .iter()
        .map(|n| (n.id.as_str(), g.add_node(n.id.as_str())))
        .collect();
    for n in nodes {
        for d in &n.depends_on {
            if let (Some(&from), Some(&to)) = (idx.get(d.as_str()), idx.get(n.id.as_str())) {
                g.add_edge(from, to, ());
            }
        }
    }
    // Strongly connected components with more than one node (or a self-loop) are cycles; walk
    // one of them to print a concrete path.
    for scc in petgraph::algo::tarjan_scc(&g) {
        let is_cycle = scc.len() > 1 || g.contains_edge(scc[0], scc[0]);
        if !is_cycle {
            continue;
        }
        let members: BTreeSet<_> = scc.iter().copied().collect();
        let start = *scc.iter().min_by_key(|i| g[**i]).unwrap_or(&scc[0]);
        let mut path = vec![g[start].to_string()];
        let mut cur = start;
        let mut visited = BTreeSet::from([start]);
        loop {
            let next = g
                .neighbors(cur)
                .filter(|n| members.contains(n))
                .min_by_key(|n| (visited.contains(n) && *n != start, g[*n]));
            let Some(next) = next else { break };
            path.push(g[next].to_string());
            if next == start || !visited.insert(next) {
                break;
            }
            cur = next;
        }
        return Some(path);
    }
    None
}

/// The JSON Schema of the Graph artifact.
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Graph)).unwrap_or(Value::Null)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn node(id: &str, deps: &[&str]) -> Node {
        Node {
            id: id.into(),
            object: Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": id}}),
            ),
            apply_policy: ApplyPolicy::default(),
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
            ready_when: vec![],
            deletion_policy: None,
            pending_on: vec![],
        }
    }

    pub(crate) fn graph(nodes: Vec<Node>) -> Graph {
        Graph {
            graph_version: GRAPH_VERSION.into(),
            metadata: GraphMetadata {
                platform_ref_resolved: "sha256:0".into(),
                module: String::new(),
                render_hash: "sha256:0".into(),
            },
            nodes,
            exports: vec![],
            violations: vec![],
        }
    }

    #[test]
    fn cycle_is_reported_with_its_path() {
        let g = graph(vec![
            node("a", &["c"]),
            node("b", &["a"]),
            node("c", &["b"]),
            node("d", &[]),
        ]);
        let errs = g.validate("ns").unwrap_err();
        assert_eq!(
            errs,
            vec![GraphError::Cycle {
                path: vec!["a".into(), "b".into(), "c".into(), "a".into()]
            }]
        );
        assert_eq!(
            errs[0].to_string(),
            "nodes: dependency cycle a -> b -> c -> a"
        );
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let g = graph(vec![node("a", &["a"])]);
        assert!(
            matches!(&g.validate("ns").unwrap_err()[0], GraphError::Cycle { path } if path == &["a", "a"])
        );
    }

    #[test]
    fn duplicate_ids_unknown_deps_and_bad_objects_are_all_reported() {
        let mut bad = node("b", &["nope"]);
        bad.object =
            Some(json!({"apiVersion": "v1", "metadata": {"name": "x", "namespace": "other"}}));
        let g = graph(vec![node("a", &[]), node("a", &[]), bad]);
        let errs: Vec<String> = g
            .validate("ns")
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errs,
            vec![
                "nodes: id \"a\" is used by more than one node",
                "nodes.b.dependsOn: unknown node \"nope\"",
                "nodes.b.object.kind: required, and missing or not a non-empty string",
                "nodes.b.object.metadata.namespace: \"other\" is outside the instance's namespace \"ns\"",
            ]
        );
    }

    #[test]
    fn unknown_predicate_type_is_rejected_by_name() {
        let err = serde_json::from_value::<ReadinessPredicate>(json!({"type": "Eventually"}))
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `Eventually`"),
            "{err}"
        );
    }

    #[test]
    fn predicate_timeouts_are_parsed_and_checked() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 minutes").is_err());
        // Found by the `graph` fuzz target: these overflowed (a panic) instead of failing.
        for huge in [
            "18446744073709551615h",
            "18446744073709551615s18446744073709551615s",
        ] {
            assert!(
                parse_duration(huge).unwrap_err().contains("too long"),
                "{huge}"
            );
        }
        let mut n = node("a", &[]);
        n.ready_when = vec![ReadinessPredicate::Exists {
            timeout: Some("soon".into()),
        }];
        let errs = graph(vec![n]).validate("ns").unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .starts_with("nodes.a.readyWhen[0]: timeout: invalid duration \"soon\"")
        );
    }

    #[test]
    fn a_reference_names_its_object_and_nothing_else() {
        let reference = |object: Value| {
            let mut n = node("creds", &[]);
            n.apply_policy.mode = ApplyMode::Reference;
            n.object = Some(object);
            n
        };
        // Identity only (the namespace may be spelled out): valid.
        let ok = reference(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "q", "namespace": "ns"}}),
        );
        assert_eq!(graph(vec![ok]).validate("ns"), Ok(()));
        // Anything a write would apply is a platform author's mistake: refused, naming the
        // fields, with the write and delete policies it would never use.
        let mut loaded = reference(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "q", "labels": {"app": "x"}}, "data": {"k": "dg=="}}));
        loaded.deletion_policy = Some(DeletionPolicy::Orphan);
        loaded.apply_policy.conflict_policy = ConflictPolicy::Force;
        let errs: Vec<String> = graph(vec![loaded])
            .validate("ns")
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(
            errs[0].starts_with("nodes.creds.object.metadata.labels: a Reference node"),
            "{errs:#?}"
        );
        assert!(errs[0].contains("metadata.labels would never be applied"));
        assert!(errs[1].starts_with("nodes.creds.object.data: a Reference node only reads"));
        assert!(errs[2].starts_with("nodes.creds.deletionPolicy: a Reference node is never"));
        assert!(errs[3].starts_with("nodes.creds.applyPolicy.conflictPolicy: a Reference"));
        // The namespace rule holds for what it reads too.
        let elsewhere = reference(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "q", "namespace": "other"}}),
        );
        assert!(matches!(
            &graph(vec![elsewhere]).validate("ns").unwrap_err()[..],
            [GraphError::WrongNamespace { .. }]
        ));
        // The module protocol spells it as an apply mode.
        let decoded: Node = decode(
            json!({"id": "creds", "applyPolicy": {"mode": "Reference"}}),
            "nodes.creds",
        )
        .unwrap();
        assert!(decoded.is_reference());
    }

    #[test]
    fn waves_follow_dependencies() {
        let g = graph(vec![
            node("deploy", &["sa"]),
            node("sa", &["role"]),
            node("role", &[]),
            node("svc", &[]),
        ]);
        assert_eq!(
            g.waves(),
            vec![vec!["role", "svc"], vec!["sa"], vec!["deploy"]]
        );
    }

    #[test]
    fn a_node_without_ready_when_is_drawn_as_judged_by_its_kind() {
        let mut exists = node("b", &["a"]);
        exists.ready_when = vec![ReadinessPredicate::Exists { timeout: None }];
        let g = graph(vec![node("a", &[]), exists]);
        for drawing in [g.to_dot(), g.to_mermaid()] {
            assert!(drawing.contains("ready: by kind"), "{drawing}");
            assert!(drawing.contains("ready: Exists"), "{drawing}");
        }
    }
}
