//! Target `inventory`: a stored inventory (the JSON `ConfigMapInventory` keeps) through
//! [`entries_from_json`], and the recovery of unrecorded objects over what it holds.
//!
//! Input: the stored JSON text, or structured: up to five entries with fields missing, of the
//! wrong type, unknown modes or generations beyond `i64`.
//!
//! Properties:
//! - text that does not decode is rejected naming the field (`inventory[2].mode`), or just
//!   `inventory` when it is not JSON or not a list;
//! - entries round-trip: entries → JSON → equal entries, and the JSON is a fixed point;
//! - [`unrecorded_entries`] only recovers objects that are ours and not recorded, never under a
//!   node id the inventory already has, each node id at most once.
use arbitrary::Unstructured;
use cuebe_core::inventory::{
    InventoryEntry, LabelledObject, entries_from_json, entries_to_json, unrecorded_entries,
};
use serde_json::{Map, Value, json};

use crate::make::{chance, corrupt, count, int, pick, string};
use crate::names_a_field;

const KEYS: &[&str] = &[
    "nodeId",
    "apiVersion",
    "kind",
    "namespace",
    "name",
    "uid",
    "mode",
    "lastAppliedHash",
    "lastAppliedResourceVersion",
    "lastAppliedGeneration",
    "lastReadyTransition",
    "deletionPolicy",
];

fn entry(u: &mut Unstructured<'_>) -> Value {
    let node = string(u, &["deployment", "service", "unrecorded:Role/web"]);
    let generation = if chance(u, 10) {
        json!(u64::MAX)
    } else {
        json!(int(u))
    };
    let fields = [
        ("nodeId", json!(node), 100),
        (
            "apiVersion",
            json!(pick(u, &["v1", "apps/v1", "apps/v1beta1"])),
            100,
        ),
        (
            "kind",
            json!(pick(u, &["Deployment", "Service", "Role"])),
            100,
        ),
        ("namespace", json!(pick(u, &["apps", ""])), 100),
        ("name", json!(string(u, &["web", "web-2"])), 100),
        ("uid", json!(string(u, &["u-1", "u-2", ""])), 100),
        (
            "mode",
            json!(pick(u, &["Managed", "Adopted", "Orphaned", "Borrowed"])),
            100,
        ),
        ("lastAppliedHash", json!(string(u, &["sha256:0", ""])), 100),
        ("lastAppliedResourceVersion", json!("42"), 100),
        ("lastAppliedGeneration", generation, 50),
        ("lastReadyTransition", json!("2026-01-01T00:00:00Z"), 30),
        (
            "deletionPolicy",
            json!(pick(u, &["Delete", "Orphan", "Keep"])),
            30,
        ),
        ("unknownField", json!(1), 5),
    ];
    let mut e = Map::new();
    for (key, value, percent) in fields {
        // Required fields go missing now and then too.
        if chance(u, percent) && !chance(u, 3) {
            e.insert(key.to_string(), value);
        }
    }
    Value::Object(e)
}

/// Runs the target on raw bytes (see the crate doc for the two readings).
pub fn run(data: &[u8]) {
    if crate::is_text(data, b"[{ \n") {
        if let Ok(text) = std::str::from_utf8(data) {
            check_text(text, &[]);
        }
    } else {
        let mut u = Unstructured::new(data);
        let mut doc = Value::Array((0..count(&mut u, 5)).map(|_| entry(&mut u)).collect());
        if chance(&mut u, 10) {
            corrupt(&mut u, &mut doc, KEYS);
        }
        let rest = u.take_rest();
        check_text(&doc.to_string(), rest);
    }
}

/// Decodes `text` as a stored inventory and checks every property of the module doc; `bits`
/// decide which entries the recovery sees as found in the cluster.
pub fn check_text(text: &str, bits: &[u8]) {
    let entries = match entries_from_json(text) {
        Ok(entries) => entries,
        Err(e) => {
            let is_list = serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_array());
            assert!(
                e.path.starts_with("inventory")
                    && (!is_list || e.path.starts_with("inventory[") || names_a_field(&e.message)),
                "an inventory that does not decode must name the field: {e}"
            );
            return;
        }
    };
    let stored = entries_to_json(&entries).unwrap_or_default();
    let again = entries_from_json(&stored);
    assert!(
        again.as_ref() == Ok(&entries),
        "entries must round-trip through their stored form: {again:?}"
    );
    assert_eq!(
        entries_to_json(&entries).ok().as_deref(),
        Some(stored.as_str()),
        "the stored form is a fixed point"
    );
    check_recovery(&entries, bits);
}

/// The recovery sweep over `entries`: the first half is the inventory, every entry is also
/// found in the cluster (ours or not, by `bits`), and some are rendered by a node.
fn check_recovery(entries: &[InventoryEntry], bits: &[u8]) {
    let bit = |i: usize, shift: u8| bits.get(i).is_some_and(|b| b >> shift & 1 == 1);
    let inventory = &entries[..entries.len() / 2];
    let found: Vec<LabelledObject> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| LabelledObject {
            api_version: e.api_version.clone(),
            kind: e.kind.clone(),
            namespace: e.namespace.clone(),
            name: e.name.clone(),
            uid: e.uid.clone(),
            managed_by_us: !bit(i, 0),
        })
        .collect();
    let rendered: Vec<(String, String, String)> = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| bit(*i, 1))
        .map(|(_, e)| (e.kind.clone(), e.name.clone(), e.node_id.clone()))
        .collect();
    let recovered = unrecorded_entries(inventory, &found, |_, kind, name| {
        rendered
            .iter()
            .find(|(k, n, _)| k == kind && n == name)
            .map(|(_, _, id)| id.clone())
    });
    let mut ids = std::collections::BTreeSet::new();
    for r in &recovered {
        assert!(ids.insert(&r.node_id), "{} recovered twice", r.node_id);
        assert!(
            !inventory.iter().any(|e| e.node_id == r.node_id),
            "recovered under a recorded node id: {r:?}"
        );
        assert!(
            found
                .iter()
                .any(|o| o.managed_by_us && o.uid == r.uid && o.name == r.name),
            "recovered an object that is not ours: {r:?}"
        );
        assert!(
            !inventory
                .iter()
                .any(|e| !e.uid.is_empty() && e.uid == r.uid),
            "recovered an object the inventory records: {r:?}"
        );
    }
}
