//! Lifecycle of the objects an instance manages: explicit adoption and deletion policy.
//!
//! [`Adopter`] is the swappable policy that decides whether an object that already exists, and
//! that this instance has no record of, may be taken over. The default, [`ExplicitAdopter`],
//! never adopts silently. Where the record of managed objects is kept is
//! [`crate::inventory`].
use serde_json::Value;

pub use crate::graph::DeletionPolicy;
pub use crate::instance::{AdoptRef, AdoptSpec};

use crate::instance::Instance;

use crate::graph::{ApplyMode, Node};

/// What the executor asks an [`Adopter`]: may `node` take over `existing`?
#[derive(Debug)]
pub struct AdoptRequest<'a> {
    /// The instance whose graph renders the node.
    pub instance: &'a Instance,
    /// The node that renders an object with the existing object's identity.
    pub node: &'a Node,
    /// The live object (as JSON).
    pub existing: &'a Value,
    /// The field manager the executor applies with.
    pub field_manager: &'a str,
}

/// An [`Adopter`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdoptDecision {
    /// The object is this instance's already (written by it before its inventory was saved).
    Ours,
    /// Take it over; the inventory records it as `Adopted`.
    Adopt,
    /// Leave it alone; the node is `Blocked` with this message.
    Refuse(String),
}

/// Decides whether an existing object that is not in the inventory may be taken over.
///
/// Called only when a node's object already exists and the instance has no record of it, so a
/// custom policy costs nothing in the steady state.
///
/// ```
/// use cuebe::lifecycle::{AdoptDecision, AdoptRequest, Adopter};
///
/// /// Adopts anything in namespaces whose name starts with `sandbox-`.
/// struct SandboxAdopter;
/// impl Adopter for SandboxAdopter {
///     fn decide(&self, request: &AdoptRequest<'_>) -> AdoptDecision {
///         if request.instance.namespace.starts_with("sandbox-") {
///             AdoptDecision::Adopt
///         } else {
///             cuebe::lifecycle::ExplicitAdopter.decide(request)
///         }
///     }
/// }
/// ```
pub trait Adopter: Send + Sync {
    /// The decision for one existing object.
    fn decide(&self, request: &AdoptRequest<'_>) -> AdoptDecision;
}

/// The default adoption policy: nothing is taken over silently.
///
/// An existing object is
/// - **ours** when it carries this instance's `cuebe.dev/instance` and `cuebe.dev/kind` labels
///   and our field manager owns fields of it (the operator stopped between applying it and
///   saving the inventory);
/// - **adopted** when the instance lists it in `spec.adopt.resources`, or the node's apply mode
///   is `AdoptOnly` (the platform module asks for it);
/// - otherwise **refused**: the node is Blocked and the status says how to adopt it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExplicitAdopter;

impl Adopter for ExplicitAdopter {
    fn decide(&self, request: &AdoptRequest<'_>) -> AdoptDecision {
        let existing = request.existing;
        let label = |k: &str| {
            existing
                .pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        let managed_by_us = existing
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .is_some_and(|fields| {
                fields.iter().any(|f| {
                    f.get("manager").and_then(Value::as_str) == Some(request.field_manager)
                })
            });
        if label(crate::executor::INSTANCE_LABEL) == Some(request.instance.name.as_str())
            && label(crate::executor::KIND_LABEL) == Some(request.instance.kind.as_str())
            && managed_by_us
        {
            return AdoptDecision::Ours;
        }
        let field = |k: &str| existing.get(k).and_then(Value::as_str).unwrap_or_default();
        let name = existing
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let listed = request
            .instance
            .adopt
            .iter()
            .any(|r| r.api_version == api_version && r.kind == kind && r.name == name);
        if listed || request.node.apply_policy.mode == ApplyMode::AdoptOnly {
            return AdoptDecision::Adopt;
        }
        AdoptDecision::Refuse(format!(
            "{kind} {name} already exists and {}/{} does not manage it; to take it over, add \
             {{apiVersion: {api_version}, kind: {kind}, name: {name}}} to spec.adopt.resources \
             (or delete or rename the existing object)",
            request.instance.kind, request.instance.name
        ))
    }
}
