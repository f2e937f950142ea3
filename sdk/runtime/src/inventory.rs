//! The inventory: where the record of an instance's managed objects is kept.
//!
//! [`Inventory`] is the swappable policy. The default, [`StatusInventory`], keeps the entries in
//! `status.inventory`; [`ConfigMapInventory`] keeps them in a ConfigMap next to the instance,
//! for graphs too large for a status. The entries themselves ([`InventoryEntry`]) are data from
//! `cuebe-core`, re-exported here.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

pub use cuebe_core::inventory::{
    InventoryEntry, InventoryMode, LabelledObject, entries_from_json, entries_to_json,
    unrecorded_entries,
};

use crate::instance::Instance;
use crate::status::AbstractionStatus;

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
/// use cuebe::instance::Instance;
/// use cuebe::inventory::{Inventory, InventoryEntry, InventoryError, StatusInventory};
/// use cuebe::status::AbstractionStatus;
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
        entries_from_json(&text).map_err(|e| InventoryError::Corrupt {
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
        let text = entries_to_json(entries).map_err(|e| InventoryError::Corrupt {
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
