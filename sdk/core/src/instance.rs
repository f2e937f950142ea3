//! The instance: the custom resource an abstraction's user writes, as the rest of cuebe sees it.
//!
//! [`Instance`] is its identity (kind, name, namespace, labels, generation) and what it asks to
//! take over ([`AdoptSpec`]); the renderer reads the identity, the executor all of it.
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The instance a graph belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    /// Kind of the custom resource, e.g. `WebService`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its `metadata.labels` (the platform module sees them as `input.instance.labels`).
    pub labels: BTreeMap<String, String>,
    /// Its `metadata.annotations` (the executor reads [`PRUNE_THRESHOLD_ANNOTATION`]).
    pub annotations: BTreeMap<String, String>,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// Existing objects the instance asks to take over (`spec.adopt.resources`).
    pub adopt: Vec<AdoptRef>,
}

/// The annotation that raises (or lowers) the prune guard's threshold for one instance: the
/// largest share of its inventory, in percent, one pass may delete. `"100"` lets a render that
/// drops every object prune them all.
pub const PRUNE_THRESHOLD_ANNOTATION: &str = "cuebe.dev/prune-threshold";

/// The prune guard's threshold when the instance does not set [`PRUNE_THRESHOLD_ANNOTATION`]: a
/// pass may delete at most half of an instance's objects. A module bug that drops most nodes
/// then stops at a Stalled instance instead of deleting a running service.
pub const DEFAULT_PRUNE_THRESHOLD_PERCENT: u8 = 50;

/// How much of its inventory one pass may delete for an instance (see
/// [`crate::plan::prune_plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneThreshold {
    /// At most this percentage of the instance's (non-orphaned) inventory.
    Percent(u8),
    /// The annotation is not a percentage: nothing is pruned until it is fixed (the message
    /// names the annotation and the rule).
    Invalid(String),
}

impl PruneThreshold {
    /// The threshold `instance` asks for with [`PRUNE_THRESHOLD_ANNOTATION`], else the default.
    ///
    /// ```
    /// use cuebe_core::instance::{Instance, PruneThreshold, PRUNE_THRESHOLD_ANNOTATION};
    /// let mut web = Instance::default();
    /// assert_eq!(PruneThreshold::of(&web), PruneThreshold::Percent(50));
    /// web.annotations.insert(PRUNE_THRESHOLD_ANNOTATION.into(), "100%".into());
    /// assert_eq!(PruneThreshold::of(&web), PruneThreshold::Percent(100));
    /// web.annotations.insert(PRUNE_THRESHOLD_ANNOTATION.into(), "all".into());
    /// assert!(matches!(PruneThreshold::of(&web), PruneThreshold::Invalid(_)));
    /// ```
    pub fn of(instance: &Instance) -> Self {
        let Some(raw) = instance.annotations.get(PRUNE_THRESHOLD_ANNOTATION) else {
            return Self::Percent(DEFAULT_PRUNE_THRESHOLD_PERCENT);
        };
        let number = raw.trim().trim_end_matches('%').trim();
        match number.parse::<u8>() {
            Ok(percent) if percent <= 100 => Self::Percent(percent),
            _ => Self::Invalid(format!(
                "annotation {PRUNE_THRESHOLD_ANNOTATION}: {raw:?} is not a percentage: write a \
                 whole number from 0 to 100 (e.g. \"100\" to allow pruning every object); \
                 nothing is pruned until it is fixed"
            )),
        }
    }
}

/// Objects an instance asks to take over, as a custom resource embeds it (`spec.adopt`).
///
/// ```
/// let adopt: cuebe_core::instance::AdoptSpec = serde_json::from_value(serde_json::json!({
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

/// The longest instance name cuebe renders. The name becomes part of object names and the value
/// of the `cuebe.dev/instance` label, and label values (like Service names) stop at 63
/// characters.
pub const MAX_NAME_LENGTH: usize = 63;

/// The admission rule for instance names, as a CEL expression at the root of the CRD's schema
/// (where `self.metadata.name` is visible): what [`name_problem`] checks, enforced by the API
/// server so that `kubectl apply` refuses a name the module cannot render.
pub const NAME_RULE_CEL: &str =
    "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";

/// The message of [`NAME_RULE_CEL`], naming the field and the rule.
pub const NAME_RULE_MESSAGE: &str = "metadata.name must be a DNS label: at most 63 characters of \
     lowercase letters, digits and '-', starting with a letter and ending with a letter or digit \
     (it becomes part of object names and label values)";

/// Why `name` cannot be an instance's name, if it cannot: it must be a DNS-1035 label, as a
/// Service name must.
///
/// ```
/// use cuebe_core::instance::name_problem;
/// assert_eq!(name_problem("web"), None);
/// assert!(name_problem(&"a".repeat(64)).unwrap().contains("64 characters"));
/// assert!(name_problem("web.example").unwrap().contains("'.'"));
/// ```
pub fn name_problem(name: &str) -> Option<String> {
    let len = name.chars().count();
    let rule = "an instance name must be a DNS label: at most 63 characters of lowercase letters, \
                digits and '-', starting with a letter and ending with a letter or digit";
    if len == 0 {
        return Some(format!("is empty; {rule}"));
    }
    if len > MAX_NAME_LENGTH {
        return Some(format!("is {len} characters long; {rule}"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!("contains {bad:?}; {rule}"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some(format!("does not start with a letter; {rule}"));
    }
    if name.ends_with('-') {
        return Some(format!("ends with '-'; {rule}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_must_be_dns_labels() {
        let max = "a".repeat(63);
        let too_long = "a".repeat(64);
        let cases: [(&str, Option<&str>); 9] = [
            ("web", None),
            ("web-2", None),
            (max.as_str(), None),
            (too_long.as_str(), Some("is 64 characters long")),
            ("web.example", Some("contains '.'")),
            ("Web", Some("contains 'W'")),
            ("2web", Some("does not start with a letter")),
            ("web-", Some("ends with '-'")),
            ("", Some("is empty")),
        ];
        for (name, expected) in cases {
            let got = name_problem(name);
            match expected {
                None => assert_eq!(got, None, "{name:?}"),
                Some(start) => {
                    let got = got.unwrap_or_default();
                    assert!(got.starts_with(start), "{name:?}: {got}");
                    assert!(got.contains("DNS label"), "{name:?}: {got}");
                }
            }
        }
    }
}
