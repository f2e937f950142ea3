//! The inventory's entries: what an instance manages, by identity and bookkeeping (no manifests).
//!
//! Where the entries are kept is the runtime's `Inventory` trait (`cuebe::inventory`), which
//! re-exports these types beside it.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::graph::{DecodeError, DeletionPolicy, decode_json};
use crate::instance::Instance;

/// How an inventory entry is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum InventoryMode {
    /// Created and kept by this instance.
    Managed,
    /// Taken over from an existing object.
    Adopted,
    /// Left in place, no longer managed.
    Orphaned,
}

/// One object the instance manages (no manifest: identity and bookkeeping only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEntry {
    /// The node that rendered it.
    pub node_id: String,
    /// `apiVersion` of the object.
    pub api_version: String,
    /// `kind` of the object.
    pub kind: String,
    /// Namespace (empty for cluster-scoped objects).
    #[serde(default)]
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID, for delete preconditions.
    #[serde(default)]
    pub uid: String,
    /// Managed, Adopted or Orphaned.
    pub mode: InventoryMode,
    /// Hash of the last applied object.
    #[serde(default)]
    pub last_applied_hash: String,
    /// `resourceVersion` right after the last apply (to skip writes when nothing changed).
    #[serde(default)]
    pub last_applied_resource_version: String,
    /// `metadata.generation` right after the last apply: status updates by the object's own
    /// controller do not change it, so they do not cause a re-apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_generation: Option<i64>,
    /// When the node last turned Ready (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ready_transition: Option<String>,
    /// The node's own `deletionPolicy` when it was last applied. Recorded here because teardown
    /// and pruning run when there may be no render to read it from: an `Orphan` node's object is
    /// released (our labels removed) instead of deleted, whatever the instance's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// Reads a stored inventory: a JSON list of entries, as `ConfigMapInventory` keeps it. An error
/// names the field, e.g. `inventory[2].mode`, so whoever edited the record by hand can fix it.
///
/// ```
/// use cuebe_core::inventory::entries_from_json;
/// let err = entries_from_json(r#"[{"nodeId": "a", "apiVersion": "v1", "kind": "Service",
///     "name": "web", "mode": "Borrowed"}]"#).unwrap_err();
/// assert_eq!(err.path, "inventory[0].mode");
/// ```
pub fn entries_from_json(text: &str) -> Result<Vec<InventoryEntry>, DecodeError> {
    decode_json(text, "inventory")
}

/// The stored form of an inventory, which [`entries_from_json`] reads back to equal entries.
pub fn entries_to_json(entries: &[InventoryEntry]) -> Result<String, serde_json::Error> {
    serde_json::to_string(entries)
}

/// An object found in the cluster carrying an instance's management labels (what a sweep by
/// label selector returns), reduced to what [`unrecorded_entries`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledObject {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// True when the operator's field manager owns fields of it (`metadata.managedFields`).
    pub managed_by_us: bool,
}

/// The group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``): versions of one kind name the
/// same object.
fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Which other instance manages `live`, by its management labels ([`crate::INSTANCE_LABEL`],
/// [`crate::KIND_LABEL`]), when that is not `instance`: e.g. `WebService other`. `None` for an
/// object without the labels (nobody's, or released) or one carrying `instance`'s own.
///
/// An object another instance manages is never adopted, overwritten, pruned or deleted by
/// `instance`, whatever names its module computes: two instances rendering one object name
/// would otherwise take it from each other on every pass.
///
/// ```
/// use cuebe_core::instance::Instance;
/// use cuebe_core::inventory::foreign_owner;
/// let web = Instance { kind: "WebService".into(), name: "web".into(), ..Default::default() };
/// let labelled = |name: &str| serde_json::json!({"metadata": {"labels": {
///     "cuebe.dev/instance": name, "cuebe.dev/kind": "WebService"}}});
/// assert_eq!(foreign_owner(&labelled("web"), &web), None);
/// assert_eq!(foreign_owner(&labelled("api"), &web).as_deref(), Some("WebService api"));
/// assert_eq!(foreign_owner(&serde_json::json!({"metadata": {}}), &web), None);
/// ```
pub fn foreign_owner(live: &serde_json::Value, instance: &Instance) -> Option<String> {
    let labels = live.pointer("/metadata/labels")?;
    let label = |key: &str| labels.get(key).and_then(serde_json::Value::as_str);
    let owner = label(crate::INSTANCE_LABEL);
    let kind = label(crate::KIND_LABEL);
    if owner.is_none() && kind.is_none() {
        return None;
    }
    let namespace = label(crate::NAMESPACE_LABEL);
    let same_owner = owner == Some(instance.name.as_str());
    let same_kind = kind.is_none_or(|k| k == instance.kind);
    let same_namespace = namespace.is_none_or(|ns| ns == instance.namespace);
    if same_owner && same_kind && same_namespace {
        return None;
    }
    if let (false, Some(ns), Some(kind), Some(owner)) = (same_namespace, namespace, kind, owner) {
        return Some(format!("{kind} {ns}/{owner}"));
    }
    Some(match (kind, owner) {
        (Some(kind), Some(owner)) => format!("{kind} {owner}"),
        (None, Some(owner)) => format!("instance {owner}"),
        (Some(kind), None) => format!("a {kind} (no {} label)", crate::INSTANCE_LABEL),
        (None, None) => return None,
    })
}

/// Inventory entries for objects this instance wrote but never recorded.
///
/// An apply and the store of the inventory that records it are two writes; an operator that
/// dies between them leaves an object with the instance's labels and the operator's field
/// manager that no inventory lists. If the node then leaves the graph, nothing would ever prune
/// it — not even deleting the instance. A sweep by label selector finds such objects (`found`);
/// each one managed by us and not already in `inventory` becomes an entry again, so pruning and
/// teardown treat it like any other. Objects with our labels but not our field manager are left
/// alone (someone else copied the labels).
///
/// `node_of` names the node of the current render that renders an object of that identity
/// (api group, kind, name), if any; the entry takes that node's id, so the pass applies it as
/// usual. An object no node renders gets the id `unrecorded:<Kind>/<name>`, which no node has,
/// so the next healthy pass prunes it; when another entry has that id already (a kind of the
/// same name in another API group), the id carries the group: `unrecorded:<Kind>.<group>/<name>`.
///
/// ```
/// use cuebe_core::inventory::{LabelledObject, unrecorded_entries};
/// let found = [LabelledObject {
///     api_version: "autoscaling/v2".into(), kind: "HorizontalPodAutoscaler".into(),
///     namespace: "apps".into(), name: "web".into(), uid: "u-1".into(), managed_by_us: true,
/// }];
/// let entries = unrecorded_entries(&[], &found, |_, _, _| None);
/// assert_eq!(entries[0].node_id, "unrecorded:HorizontalPodAutoscaler/web");
/// assert_eq!(entries[0].uid, "u-1");
/// ```
pub fn unrecorded_entries(
    inventory: &[InventoryEntry],
    found: &[LabelledObject],
    node_of: impl Fn(&str, &str, &str) -> Option<String>,
) -> Vec<InventoryEntry> {
    let recorded = |o: &LabelledObject| {
        inventory.iter().any(|e| {
            (!e.uid.is_empty() && e.uid == o.uid)
                || (group_of(&e.api_version) == group_of(&o.api_version)
                    && e.kind == o.kind
                    && e.namespace == o.namespace
                    && e.name == o.name)
        })
    };
    let mut entries: Vec<InventoryEntry> = Vec::new();
    for object in found.iter().filter(|o| o.managed_by_us && !recorded(o)) {
        let node_id = match node_of(group_of(&object.api_version), &object.kind, &object.name) {
            // A node already recorded under another object renders this one now (a rename):
            // the pass applies and records it for that node. An entry here would be pruned
            // right after the pass applied it.
            Some(id) if inventory.iter().any(|e| e.node_id == id) => continue,
            Some(id) => id,
            None => {
                let short = format!("unrecorded:{}/{}", object.kind, object.name);
                // Kinds of two groups may share a name (an RBAC Role and an ACK IAM Role both
                // called `web`): the second takes its group into its id, or it would share an
                // entry's node id (and be pruned or kept as the other) or not be recovered.
                let taken = |id: &str| inventory.iter().chain(&entries).any(|e| e.node_id == id);
                if taken(&short) {
                    format!(
                        "unrecorded:{}.{}/{}",
                        object.kind,
                        group_of(&object.api_version),
                        object.name
                    )
                } else {
                    short
                }
            }
        };
        if entries.iter().any(|e| e.node_id == node_id)
            || (node_id.starts_with("unrecorded:")
                && inventory.iter().any(|e| e.node_id == node_id))
        {
            continue;
        }
        entries.push(InventoryEntry {
            node_id,
            api_version: object.api_version.clone(),
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            uid: object.uid.clone(),
            mode: InventoryMode::Managed,
            last_applied_hash: String::new(),
            last_applied_resource_version: String::new(),
            last_applied_generation: None,
            last_ready_transition: None,
            deletion_policy: None,
        });
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(api_version: &str, kind: &str, name: &str, uid: &str, ours: bool) -> LabelledObject {
        LabelledObject {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: "apps".into(),
            name: name.into(),
            uid: uid.into(),
            managed_by_us: ours,
        }
    }

    fn entry(node: &str, api_version: &str, kind: &str, name: &str, uid: &str) -> InventoryEntry {
        let mut e = unrecorded_entries(
            &[],
            &[found(api_version, kind, name, uid, true)],
            |_, _, _| None,
        )
        .remove(0);
        e.node_id = node.into();
        e
    }

    #[test]
    fn only_our_unrecorded_objects_come_back_and_take_their_node_when_rendered() {
        let inventory = [
            entry("deployment", "apps/v1", "Deployment", "web", "u-dep"),
            entry("service", "v1", "Service", "web", "u-svc"),
        ];
        let renders = |group: &str, kind: &str, name: &str| match (group, kind, name) {
            ("policy", "PodDisruptionBudget", "web") => Some("pdb".to_string()),
            ("apps", "Deployment", "web") => Some("deployment".to_string()),
            _ => None,
        };
        // (found object, expected node id of its entry; None: no entry)
        let cases: [(LabelledObject, Option<&str>); 6] = [
            // Recorded by UID, or by identity under another version: nothing to recover.
            (found("apps/v1", "Deployment", "web", "u-dep", true), None),
            (
                found("apps/v1beta1", "Deployment", "web", "u-other", true),
                None,
            ),
            // Ours and unrecorded, still rendered: it takes its node back.
            (
                found("policy/v1", "PodDisruptionBudget", "web", "u-pdb", true),
                Some("pdb"),
            ),
            // Ours and unrecorded, no longer rendered: an id no node has, so it is pruned.
            (
                found(
                    "autoscaling/v2",
                    "HorizontalPodAutoscaler",
                    "web",
                    "u-hpa",
                    true,
                ),
                Some("unrecorded:HorizontalPodAutoscaler/web"),
            ),
            // Our labels without our field manager: someone else's, left alone.
            (found("v1", "ConfigMap", "copied", "u-cm", false), None),
            // Same name as a recorded Service but another kind: a different object.
            (
                found("v1", "ServiceAccount", "web", "u-sa", true),
                Some("unrecorded:ServiceAccount/web"),
            ),
        ];
        for (object, expected) in cases {
            let got = unrecorded_entries(&inventory, std::slice::from_ref(&object), renders);
            let ids: Vec<&str> = got.iter().map(|e| e.node_id.as_str()).collect();
            assert_eq!(ids, expected.into_iter().collect::<Vec<_>>(), "{object:?}");
            if let Some(e) = got.first() {
                assert_eq!(
                    (e.uid.as_str(), e.mode),
                    (object.uid.as_str(), InventoryMode::Managed)
                );
                assert!(
                    e.last_applied_hash.is_empty(),
                    "a recovered entry is re-applied, never skipped"
                );
            }
        }
        // A renamed object a recorded node now renders gets no entry of its own: the pass
        // applies and records it for that node (an unrecorded: entry would be pruned at once).
        let renamed = found("apps/v1", "Deployment", "web-2", "u-dep2", true);
        let got = unrecorded_entries(&inventory, &[renamed], |_, _, _| Some("deployment".into()));
        assert!(got.is_empty(), "{got:?}");
    }

    /// Found by the `inventory` fuzz target: an RBAC Role named like a recovered ACK IAM Role
    /// got the same node id as the recorded one (in one sweep, the second was not recovered).
    #[test]
    fn kinds_of_the_same_name_in_two_groups_get_distinct_ids() {
        let iam = found(
            "iam.services.k8s.aws/v1alpha1",
            "Role",
            "web",
            "u-iam",
            true,
        );
        let rbac = found(
            "rbac.authorization.k8s.io/v1",
            "Role",
            "web",
            "u-rbac",
            true,
        );
        let ids = |inventory: &[InventoryEntry], found: &[LabelledObject]| -> Vec<String> {
            unrecorded_entries(inventory, found, |_, _, _| None)
                .into_iter()
                .map(|e| e.node_id)
                .collect()
        };
        assert_eq!(
            ids(&[], &[iam.clone(), rbac.clone()]),
            [
                "unrecorded:Role/web",
                "unrecorded:Role.rbac.authorization.k8s.io/web"
            ]
        );
        let recorded = [entry(
            "unrecorded:Role/web",
            "iam.services.k8s.aws/v1alpha1",
            "Role",
            "web",
            "u-iam",
        )];
        assert_eq!(
            ids(&recorded, &[iam, rbac]),
            ["unrecorded:Role.rbac.authorization.k8s.io/web"]
        );
    }
}
