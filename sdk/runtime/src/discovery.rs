//! Discovery: what the API server serves, asked once per group/version and shared by the
//! controller (watched kinds, capabilities) and the executor (where to apply each kind).
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use kube::api::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;

use crate::abstraction::CapabilityProbe;
use crate::renderer::Capabilities;

/// Asks the API server which of `probes` it serves.
///
/// An error means discovery itself failed (the API server could not be asked), not that an API
/// is missing: a caller keeps what it knew rather than render as if the APIs were gone.
///
/// ```no_run
/// # async fn f(client: kube::Client) -> Result<(), kube::Error> {
/// use cuebe::abstraction::{discover_capabilities, well_known_capabilities};
/// let capabilities = discover_capabilities(&client, &well_known_capabilities()).await?;
/// println!("gateway-api: {}", capabilities.has("gateway-api"));
/// # Ok(()) }
/// ```
pub async fn discover_capabilities(
    client: &kube::Client,
    probes: &[CapabilityProbe],
) -> Result<Capabilities, kube::Error> {
    Discovery::round().capabilities(client, probes).await
}

/// Whether the API server serves `gvk`: its resource when it does, `None` when the group, the
/// version or the kind is unknown to it, an error when it could not be asked.
///
/// ```no_run
/// # async fn f(client: kube::Client) -> Result<(), kube::Error> {
/// let gvk = kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
/// if cuebe::abstraction::served_kind(&client, &gvk).await?.is_none() {
///     println!("the Gateway API is not installed");
/// }
/// # Ok(()) }
/// ```
pub async fn served_kind(
    client: &kube::Client,
    gvk: &GroupVersionKind,
) -> Result<Option<ApiResource>, kube::Error> {
    Discovery::round().get(client, gvk).await
}

/// The one cache of what the API server serves, by group/version: the kinds (with their scope)
/// the executor applies and the controller watches, and the capabilities the module renders for.
/// Cheap to clone (clones share the cache).
///
/// A discovery round (at start and at each rediscovery) asks into a fresh [`Discovery::round`]
/// so it sees what the server serves now, and remembers what is absent so that one round asks
/// for each group/version once; when the controller (re)starts on a round's answers it
/// [`Discovery::adopt`]s what is served, so the executor never works from kinds the cluster
/// stopped serving. The long-lived cache ([`Discovery::default`]) remembers only what is served:
/// a kind it does not know is asked for again, so a CRD installed after start is applied as soon
/// as it is served.
#[derive(Debug, Default, Clone)]
pub struct Discovery {
    /// By apiVersion: its kinds and whether each is namespaced; empty when the server does not
    /// serve that group/version (kept only by a round).
    by_api_version: Arc<Mutex<HashMap<String, Arc<ServedKinds>>>>,
    /// A round: what is absent stays absent until the next round.
    remember_absent: bool,
}

/// The kinds of one group/version, each with whether it is namespaced.
type ServedKinds = Vec<(ApiResource, bool)>;

impl Discovery {
    /// A fresh round of discovery: one consistent answer per group/version, absences included.
    pub fn round() -> Self {
        Self {
            remember_absent: true,
            ..Self::default()
        }
    }

    /// The resource of `api_version`/`kind` and whether it is namespaced; `None` when the server
    /// does not serve it; an error when the server could not be asked. Asks once per
    /// group/version.
    pub async fn resource(
        &self,
        client: &kube::Client,
        api_version: &str,
        kind: &str,
    ) -> Result<Option<(ApiResource, bool)>, kube::Error> {
        let known = self
            .by_api_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(api_version)
            .cloned();
        let known =
            known.filter(|kinds| self.remember_absent || kinds.iter().any(|(r, _)| r.kind == kind));
        let kinds = match known {
            Some(kinds) => kinds,
            None => {
                let (group, version) = match api_version.split_once('/') {
                    Some((g, v)) => (g, v),
                    None => ("", api_version),
                };
                let gv = kube::core::GroupVersion::gv(group, version);
                let kinds: Vec<(ApiResource, bool)> =
                    match kube::discovery::pinned_group(client, &gv).await {
                        Ok(group) => group
                            .versioned_resources(version)
                            .into_iter()
                            .map(|(resource, caps)| (resource, caps.scope == Scope::Namespaced))
                            .collect(),
                        // A group/version the server does not know is a bare 404, not a
                        // NotFound Status.
                        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
                        Err(e) => return Err(e),
                    };
                let kinds = Arc::new(kinds);
                if self.remember_absent || !kinds.is_empty() {
                    self.by_api_version
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(api_version.to_string(), kinds.clone());
                }
                kinds
            }
        };
        Ok(kinds.iter().find(|(r, _)| r.kind == kind).cloned())
    }

    /// Like [`Discovery::resource`] for a group/version/kind, without the scope.
    pub async fn get(
        &self,
        client: &kube::Client,
        gvk: &GroupVersionKind,
    ) -> Result<Option<ApiResource>, kube::Error> {
        Ok(self
            .resource(client, &gvk.api_version(), &gvk.kind)
            .await?
            .map(|(r, _)| r))
    }

    /// Which of `probes` the server serves.
    pub async fn capabilities(
        &self,
        client: &kube::Client,
        probes: &[CapabilityProbe],
    ) -> Result<Capabilities, kube::Error> {
        let mut names = Vec::new();
        for probe in probes {
            let gvk = GroupVersionKind::gvk(probe.group, probe.version, probe.kind);
            if self.get(client, &gvk).await?.is_some() {
                names.push(probe.name);
            }
        }
        Ok(Capabilities::from_names(names))
    }

    /// Takes over what another (fresher) discovery found served, dropping everything known
    /// before.
    pub fn adopt(&self, fresher: &Discovery) {
        let mut learned = fresher
            .by_api_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !self.remember_absent {
            learned.retain(|_, kinds| !kinds.is_empty());
        }
        *self
            .by_api_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = learned;
    }
}

/// Parses a `WATCHES` entry (`group/version/Kind` or `version/Kind`).
pub fn parse_watch(entry: &str) -> Option<GroupVersionKind> {
    let parts: Vec<&str> = entry.split('/').collect();
    match parts.as_slice() {
        [version, kind] => Some(GroupVersionKind::gvk("", version, kind)),
        [group, version, kind] => Some(GroupVersionKind::gvk(group, version, kind)),
        _ => None,
    }
}
