//! Lifecycle of the objects an instance manages: explicit adoption and the inventory.
//!
//! Two swappable policies live here:
//! - [`Adopter`] decides whether an object that already exists, and that this instance has no
//!   record of, may be taken over. The default, [`ExplicitAdopter`], never adopts silently.
//! - [`Inventory`] decides where the record of managed objects is kept. The default,
//!   [`StatusInventory`], keeps it in `status.inventory`; [`ConfigMapInventory`] keeps it in a
//!   ConfigMap next to the instance, for graphs too large for a status.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::graph::{ApplyMode, Node};
use crate::status::{AbstractionStatus, InventoryEntry};

pub use crate::graph::DeletionPolicy;

/// The instance a graph belongs to.
#[derive(Debug, Clone, Default)]
pub struct Instance {
    /// Kind of the custom resource, e.g. `WebService`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// Existing objects the instance asks to take over (`spec.adopt.resources`).
    pub adopt: Vec<AdoptRef>,
}

/// Objects an instance asks to take over, as a custom resource embeds it (`spec.adopt`).
///
/// ```
/// let adopt: cuebe::lifecycle::AdoptSpec = serde_json::from_value(serde_json::json!({
///     "resources": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "legacy-web"}]
/// })).unwrap();
/// assert_eq!(adopt.resources[0].name, "legacy-web");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdoptSpec {
    /// The existing objects (in the instance's namespace) to take over.
    #[serde(default)]
    pub resources: Vec<AdoptRef>,
}

/// One object to adopt, by identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdoptRef {
    /// `apiVersion` of the object, e.g. `apps/v1`.
    pub api_version: String,
    /// `kind` of the object, e.g. `Deployment`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

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

/// Why the inventory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// The stored inventory does not parse.
    #[error("{what}: {message}")]
    Corrupt {
        /// Where it was read from.
        what: String,
        /// The parse error.
        message: String,
    },
}

/// Where the record of an instance's managed objects is kept.
///
/// The controller loads it before each pass, hands it to the executor (pruning and deletion
/// work from it alone) and stores what the pass produced.
///
/// ```
/// use cuebe::lifecycle::{Instance, Inventory, InventoryError, StatusInventory};
/// use cuebe::status::{AbstractionStatus, InventoryEntry};
///
/// /// Logs every store, and otherwise keeps the inventory in status.
/// struct AuditedInventory(StatusInventory);
///
/// #[async_trait::async_trait]
/// impl Inventory for AuditedInventory {
///     async fn load(&self, i: &Instance, s: &AbstractionStatus) -> Result<Vec<InventoryEntry>, InventoryError> {
///         self.0.load(i, s).await
///     }
///     async fn store(&self, i: &Instance, e: &[InventoryEntry], s: &mut AbstractionStatus) -> Result<(), InventoryError> {
///         tracing::info!(instance = %i.name, objects = e.len(), "inventory stored");
///         self.0.store(i, e, s).await
///     }
///     async fn forget(&self, i: &Instance) -> Result<(), InventoryError> {
///         self.0.forget(i).await
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Inventory: Send + Sync {
    /// The inventory as of the last stored pass. `status` is the instance's current status.
    async fn load(
        &self,
        instance: &Instance,
        status: &AbstractionStatus,
    ) -> Result<Vec<InventoryEntry>, InventoryError>;
    /// Records `entries`. May write into `status` (which the controller then writes).
    async fn store(
        &self,
        instance: &Instance,
        entries: &[InventoryEntry],
        status: &mut AbstractionStatus,
    ) -> Result<(), InventoryError>;
    /// Drops the record once the instance's objects are gone.
    async fn forget(&self, instance: &Instance) -> Result<(), InventoryError>;
}

/// The default inventory: `status.inventory` of the instance (compact; no manifests).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusInventory;

#[async_trait::async_trait]
impl Inventory for StatusInventory {
    async fn load(
        &self,
        _instance: &Instance,
        status: &AbstractionStatus,
    ) -> Result<Vec<InventoryEntry>, InventoryError> {
        Ok(status.inventory.clone())
    }

    async fn store(
        &self,
        _instance: &Instance,
        entries: &[InventoryEntry],
        status: &mut AbstractionStatus,
    ) -> Result<(), InventoryError> {
        status.inventory = entries.to_vec();
        Ok(())
    }

    async fn forget(&self, _instance: &Instance) -> Result<(), InventoryError> {
        Ok(())
    }
}

/// An inventory kept in a ConfigMap `<kind>-<name>-inventory` in the instance's namespace
/// (key `inventory.json`), for graphs whose inventory would crowd the status. The status then
/// carries no inventory entries.
///
/// `load` reads the ConfigMap; `store` writes it with Server-Side Apply only when the inventory
/// differs from what was last loaded or stored. The operator needs `get`, `patch` and `delete`
/// on ConfigMaps.
#[derive(Clone)]
pub struct ConfigMapInventory {
    client: Client,
    field_manager: String,
    /// What each ConfigMap (namespace/name) held when last read or written, so a store of an
    /// unchanged inventory costs no API call.
    known: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<InventoryEntry>>>>,
}

impl std::fmt::Debug for ConfigMapInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigMapInventory")
            .field("field_manager", &self.field_manager)
            .finish_non_exhaustive()
    }
}

/// The ConfigMap key holding the inventory.
pub const INVENTORY_KEY: &str = "inventory.json";

impl ConfigMapInventory {
    /// An inventory writing ConfigMaps as `field_manager`.
    pub fn new(client: Client, field_manager: impl Into<String>) -> Self {
        Self {
            client,
            field_manager: field_manager.into(),
            known: Default::default(),
        }
    }

    /// The ConfigMap's name for an instance.
    pub fn config_map_name(instance: &Instance) -> String {
        format!(
            "{}-{}-inventory",
            instance.kind.to_ascii_lowercase(),
            instance.name
        )
    }

    fn key(instance: &Instance) -> String {
        format!("{}/{}", instance.namespace, Self::config_map_name(instance))
    }

    fn remember(&self, instance: &Instance, entries: Option<&[InventoryEntry]>) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match entries {
            Some(e) => known.insert(Self::key(instance), e.to_vec()),
            None => known.remove(&Self::key(instance)),
        };
    }

    async fn read(&self, instance: &Instance) -> Result<Vec<InventoryEntry>, InventoryError> {
        let name = Self::config_map_name(instance);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &instance.namespace);
        let what = format!("ConfigMap {}/{name}", instance.namespace);
        let cm = api
            .get_opt(&name)
            .await
            .map_err(|source| InventoryError::Api {
                what: format!("reading {what}"),
                source,
            })?;
        let Some(text) = cm
            .and_then(|c| c.data)
            .and_then(|d| d.get(INVENTORY_KEY).cloned())
        else {
            return Ok(Vec::new());
        };
        serde_json::from_str(&text).map_err(|e| InventoryError::Corrupt {
            what,
            message: e.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl Inventory for ConfigMapInventory {
    async fn load(
        &self,
        instance: &Instance,
        _status: &AbstractionStatus,
    ) -> Result<Vec<InventoryEntry>, InventoryError> {
        let entries = self.read(instance).await?;
        self.remember(instance, Some(&entries));
        Ok(entries)
    }

    async fn store(
        &self,
        instance: &Instance,
        entries: &[InventoryEntry],
        status: &mut AbstractionStatus,
    ) -> Result<(), InventoryError> {
        status.inventory.clear();
        let unchanged = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&Self::key(instance))
            .is_some_and(|known| known.as_slice() == entries);
        if unchanged {
            return Ok(());
        }
        let name = Self::config_map_name(instance);
        let text = serde_json::to_string(entries).map_err(|e| InventoryError::Corrupt {
            what: name.clone(),
            message: e.to_string(),
        })?;
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                // Not the instance labels: an inventory is not a child to watch or prune.
                "labels": {"cuebe.dev/inventory-of": instance.name, "cuebe.dev/inventory-kind": instance.kind},
            },
            "data": BTreeMap::from([(INVENTORY_KEY, text)]),
        });
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &instance.namespace);
        api.patch(
            &name,
            &PatchParams::apply(&self.field_manager).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| InventoryError::Api {
            what: format!("writing ConfigMap {}/{name}", instance.namespace),
            source,
        })?;
        self.remember(instance, Some(entries));
        Ok(())
    }

    async fn forget(&self, instance: &Instance) -> Result<(), InventoryError> {
        let name = Self::config_map_name(instance);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &instance.namespace);
        self.remember(instance, None);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(InventoryError::Api {
                what: format!("deleting ConfigMap {}/{name}", instance.namespace),
                source,
            }),
        }
    }
}
