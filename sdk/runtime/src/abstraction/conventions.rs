//! Checks of a CustomResourceDefinition against the Kubernetes API conventions that users of
//! `kubectl` notice: field names in lowerCamelCase with acronyms in one case (`podIP`,
//! `policyARNs`, `targetCPUUtilization`, never `targetCpuUtilization`), and a description on
//! every field that reads as English in `kubectl explain` rather than as Rust.
//!
//! The derive generates a unit test that runs [`field_name_problems`] on the abstraction's CRD,
//! so every abstraction built with it is held to the naming convention by `cargo test`.
//!
//! ```
//! use cuebe::abstraction::conventions::field_name_problem;
//! assert_eq!(field_name_problem("targetCPUUtilization"), None);
//! assert_eq!(
//!     field_name_problem("targetCpuUtilization").unwrap(),
//!     "the acronym CPU is written in one case: targetCPUUtilization"
//! );
//! ```
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// Acronyms the naming check knows: inside a name each is written in capitals (`podIP`,
/// `targetCPUUtilization`), at its start in lower case (`apiVersion`, `uid`); a plural adds a
/// lower-case `s` (`policyARNs`). Only words that are no English word in their own right are
/// here, so that `Ack` or `Os` inside a name is not mistaken for one.
pub const ACRONYMS: &[&str] = &[
    "API", "ARN", "AWS", "CA", "CEL", "CIDR", "CPU", "CRD", "DNS", "FQDN", "GID", "GPU", "HTTP",
    "HTTPS", "IAM", "ID", "IP", "IRSA", "JSON", "JWT", "KMS", "OCI", "OIDC", "QPS", "RBAC", "SHA",
    "SQS", "SSH", "TCP", "TLS", "TTL", "UDP", "UID", "URI", "URL", "UUID", "YAML",
];

/// Why `name` breaks the naming convention, with the name it should have where that is clear;
/// `None` when it follows it.
///
/// ```
/// use cuebe::abstraction::conventions::field_name_problem;
/// assert_eq!(field_name_problem("policyARNs"), None);
/// assert!(field_name_problem("policyArns").unwrap().ends_with("policyARNs"));
/// assert!(field_name_problem("min_replicas").is_some());
/// ```
pub fn field_name_problem(name: &str) -> Option<String> {
    let Some(first) = name.chars().next() else {
        return Some("an empty field name".to_string());
    };
    if !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Some(format!(
            "not lowerCamelCase: only letters and digits, words joined by capitals: {}",
            lower_camel(name)
        ));
    }
    if !first.is_ascii_lowercase() {
        return Some(format!(
            "not lowerCamelCase: it starts with {first:?}, a lower-case letter: {}",
            lower_camel(name)
        ));
    }
    let words = words(name);
    let mut fixed = String::with_capacity(name.len());
    let mut mixed = None;
    for (i, word) in words.iter().enumerate() {
        match (i, acronym_in_mixed_case(word)) {
            (1.., Some((acronym, plural))) => {
                mixed.get_or_insert(acronym);
                fixed.push_str(acronym);
                if plural {
                    fixed.push('s');
                }
            }
            _ => fixed.push_str(word),
        }
    }
    mixed.map(|acronym| format!("the acronym {acronym} is written in one case: {fixed}"))
}

/// The words of a lowerCamelCase name: a new word starts at a capital that follows a lower-case
/// letter or a digit, so a run of capitals stays one word (`targetCPUUtilization`: `target`,
/// `CPUUtilization`; `targetCpuUtilization`: `target`, `Cpu`, `Utilization`).
fn words(name: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = 0;
    let mut previous: Option<char> = None;
    for (i, c) in name.char_indices() {
        if c.is_ascii_uppercase()
            && previous.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
        {
            words.push(&name[start..i]);
            start = i;
        }
        previous = Some(c);
    }
    words.push(&name[start..]);
    words
}

/// The known acronym a capitalised word spells in mixed case (`Cpu`, `Arns`: plural), if any.
fn acronym_in_mixed_case(word: &str) -> Option<(&'static str, bool)> {
    let rest = word.get(1..)?;
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_lowercase()) {
        return None; // one letter, or already capitals (CPUUtilization, ARNs)
    }
    let lower = word.to_ascii_lowercase();
    ACRONYMS.iter().find_map(|acronym| {
        let a = acronym.to_ascii_lowercase();
        if lower == a {
            Some((*acronym, false))
        } else if lower.strip_suffix('s') == Some(a.as_str()) {
            Some((*acronym, true))
        } else {
            None
        }
    })
}

/// `min_replicas`, `Min-Replicas` → `minReplicas`: a suggestion for names that are not camel
/// case at all.
fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper_next = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            upper_next = !out.is_empty();
        } else if out.is_empty() {
            out.push(c.to_ascii_lowercase());
        } else if upper_next {
            out.push(c.to_ascii_uppercase());
            upper_next = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// One field of a CRD's schema that breaks a convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    /// The CRD's name (`webservices.platform.example.com`).
    pub crd: String,
    /// The version whose schema it is.
    pub version: String,
    /// The field, as `kubectl explain` takes it (`spec.autoscaling.targetCPUUtilization`; items
    /// of a list as `spec.env[]`); empty for the schema's root.
    pub path: String,
    /// What is wrong, and the fix where it is clear.
    pub problem: String,
}

impl std::fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(f, "{} {} {path}: {}", self.crd, self.version, self.problem)
    }
}

/// Every field name of `crd`'s schemas (all versions, nested objects, list items and map
/// values) that breaks the naming convention ([`field_name_problem`]).
///
/// ```
/// # use kube::CustomResource;
/// # use schemars::JsonSchema;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(CustomResource, cuebe::Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
/// # #[kube(group = "example.com", version = "v1", kind = "Greeter", namespaced,
/// #        status = "cuebe::status::AbstractionStatus")]
/// # #[abstraction(module = "../../cue/platform", package = "./webservice")]
/// # #[serde(rename_all = "camelCase")]
/// # pub struct GreeterSpec { pub message: String, pub callback_url: String }
/// let crd = cuebe::abstraction::crd::<Greeter>();
/// let problems = cuebe::abstraction::conventions::field_name_problems(&crd);
/// assert_eq!(problems[0].path, "spec.callbackUrl");
/// assert_eq!(problems[0].problem, "the acronym URL is written in one case: callbackURL");
/// ```
pub fn field_name_problems(crd: &CustomResourceDefinition) -> Vec<SchemaProblem> {
    walk_crd(crd, &mut |path, name, _| {
        field_name_problem(name).map(|p| (path.to_string(), p))
    })
}

/// Every field of `crd`'s schemas under `spec` and `status` (and the root) that `kubectl
/// explain` would show without a description, or with one that reads as Rust rather than as
/// English: a type (`Option<…>`, `Vec<…>`), a path (`a::b`), an intra-doc link (`` [`x`] ``) or
/// kube's placeholder (`Auto-generated derived type…`).
///
/// ```
/// # use kube::CustomResource;
/// # use schemars::JsonSchema;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(CustomResource, cuebe::Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
/// # #[kube(group = "example.com", version = "v1", kind = "Greeter", namespaced,
/// #        status = "cuebe::status::AbstractionStatus")]
/// # #[abstraction(module = "../../cue/platform", package = "./webservice")]
/// /// Says hello.
/// pub struct GreeterSpec {
///     /// What to say.
///     pub message: String,
///     pub loudness: u8,
/// }
/// let crd = cuebe::abstraction::crd::<Greeter>();
/// let problems = cuebe::abstraction::conventions::description_problems(&crd);
/// assert_eq!(problems.len(), 1, "{problems:?}");
/// assert_eq!(problems[0].path, "spec.loudness");
/// ```
pub fn description_problems(crd: &CustomResourceDefinition) -> Vec<SchemaProblem> {
    let mut problems = walk_crd(crd, &mut |path, _, schema| {
        // metadata, apiVersion and kind are described by the API server itself.
        let top = path.split(['.', '[']).next().unwrap_or_default();
        if top != "spec" && top != "status" {
            return None;
        }
        description_problem(schema).map(|p| (path.to_string(), p))
    });
    for (version, schema) in versions(crd) {
        if let Some(problem) = description_problem(&schema) {
            problems.push(SchemaProblem {
                crd: crd.metadata.name.clone().unwrap_or_default(),
                version,
                path: String::new(),
                problem,
            });
        }
    }
    problems
}

/// What is wrong with the description of one schema node, if anything.
fn description_problem(schema: &Value) -> Option<String> {
    let description = schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim();
    if description.is_empty() {
        return Some("no description (write a doc comment on the field)".to_string());
    }
    rust_ism(description)
        .map(|found| format!("the description reads as Rust ({found}): {description:?}"))
}

/// The first piece of Rust syntax in a description meant for `kubectl explain`, if any.
fn rust_ism(description: &str) -> Option<String> {
    if description.starts_with("Auto-generated derived type") {
        return Some("kube's placeholder".to_string());
    }
    for generic in [
        "Option<",
        "Vec<",
        "BTreeMap<",
        "HashMap<",
        "Box<",
        "Arc<",
        "String>",
    ] {
        if description.contains(generic) {
            return Some(format!("the type {generic}…>"));
        }
    }
    if let Some(word) = description.split_whitespace().find(|w| w.contains("::")) {
        let path = word.trim_matches(|c: char| !(c.is_alphanumeric() || c == ':' || c == '_'));
        return Some(format!("the Rust path {path}"));
    }
    // [`Name`] not followed by `(`: an intra-doc link; rustdoc renders it, kubectl does not.
    let mut rest = description;
    while let Some(open) = rest.find("[`") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("`]") else { break };
        let tail = &after[close + 2..];
        if !tail.starts_with('(') {
            return Some(format!("an intra-doc link: [`{}`]", &after[..close]));
        }
        rest = tail;
    }
    None
}

/// Every version's `openAPIV3Schema`, as JSON.
fn versions(crd: &CustomResourceDefinition) -> Vec<(String, Value)> {
    crd.spec
        .versions
        .iter()
        .filter_map(|v| {
            let schema = v.schema.as_ref()?.open_api_v3_schema.as_ref()?;
            Some((v.name.clone(), serde_json::to_value(schema).ok()?))
        })
        .collect()
}

/// A check of one field: given its path, name and schema, the path and problem it finds.
type FieldCheck<'a> = dyn FnMut(&str, &str, &Value) -> Option<(String, String)> + 'a;

/// Calls `check(path, name, schema)` for every named field of every version of `crd`.
fn walk_crd(crd: &CustomResourceDefinition, check: &mut FieldCheck<'_>) -> Vec<SchemaProblem> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let mut problems = Vec::new();
    for (version, schema) in versions(crd) {
        let mut found = Vec::new();
        walk(&schema, "", &mut |path, field, node| {
            if let Some(problem) = check(path, field, node) {
                found.push(problem);
            }
        });
        problems.extend(found.into_iter().map(|(path, problem)| SchemaProblem {
            crd: name.clone(),
            version: version.clone(),
            path,
            problem,
        }));
    }
    problems
}

fn walk(schema: &Value, path: &str, visit: &mut dyn FnMut(&str, &str, &Value)) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            visit(&child, name, property);
            walk(property, &child, visit);
        }
    }
    match schema.get("items") {
        Some(Value::Array(items)) => {
            for item in items {
                walk(item, &format!("{path}[]"), visit);
            }
        }
        Some(item @ Value::Object(_)) => walk(item, &format!("{path}[]"), visit),
        _ => {}
    }
    if let Some(values @ Value::Object(_)) = schema.get("additionalProperties") {
        walk(values, &format!("{path}{{}}"), visit);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for branch in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            walk(branch, path, visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_lower_camel_case_with_acronyms_in_one_case() {
        let cases: &[(&str, Option<&str>)] = &[
            ("image", None),
            ("targetCPUUtilization", None),
            ("policyARNs", None),
            ("podIP", None),
            ("hostIPs", None),
            ("apiVersion", None),
            ("uid", None),
            ("caBundle", None),
            ("httpGet", None),
            ("readyNodes", None),
            ("identity", None),            // starts like "id", is a word
            ("ackResourceMetadata", None), // Ack is not in the list: a word too
            ("oidcIssuerURL", None),
            ("replicas3", None),
            ("s3Bucket", None),
            ("renderHash", None),
            (
                "targetCpuUtilization",
                Some("the acronym CPU is written in one case: targetCPUUtilization"),
            ),
            (
                "policyArns",
                Some("the acronym ARN is written in one case: policyARNs"),
            ),
            (
                "podIp",
                Some("the acronym IP is written in one case: podIP"),
            ),
            (
                "oidcIssuerUrl",
                Some("the acronym URL is written in one case: oidcIssuerURL"),
            ),
            (
                "clientIdAndTlsSecret",
                Some("the acronym ID is written in one case: clientIDAndTLSSecret"),
            ),
            (
                "min_replicas",
                Some(
                    "not lowerCamelCase: only letters and digits, words joined by capitals: minReplicas",
                ),
            ),
            (
                "max-surge",
                Some(
                    "not lowerCamelCase: only letters and digits, words joined by capitals: maxSurge",
                ),
            ),
            (
                "MaxReplicas",
                Some("not lowerCamelCase: it starts with 'M', a lower-case letter: maxReplicas"),
            ),
            ("", Some("an empty field name")),
        ];
        for (name, expected) in cases {
            assert_eq!(
                field_name_problem(name).as_deref(),
                *expected,
                "field name {name:?}"
            );
        }
    }

    #[test]
    fn descriptions_that_read_as_rust_are_found() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Replicas when autoscaling is off (default 2).", None),
            ("e.g. `250m`.", None),
            (
                "See [the guide](https://example.com/x) and [`kubectl`](https://k8s.io).",
                None,
            ),
            (
                "An `Option<String>` with the name.",
                Some("the type Option<…>"),
            ),
            ("Items of Vec<Condition>.", Some("the type Vec<…>")),
            (
                "The module ([`AbstractionStatus::module_ref`]).",
                Some("the Rust path AbstractionStatus::module_ref"),
            ),
            (
                "At most [`REVISIONS`] entries.",
                Some("an intra-doc link: [`REVISIONS`]"),
            ),
            (
                "Auto-generated derived type for WebServiceSpec via `CustomResource`",
                Some("kube's placeholder"),
            ),
        ];
        for (description, expected) in cases {
            assert_eq!(
                rust_ism(description).as_deref(),
                *expected,
                "{description:?}"
            );
        }
    }

    #[test]
    fn the_walk_reaches_list_items_map_values_and_nested_objects() {
        let schema = serde_json::json!({
            "properties": {
                "spec": {"properties": {
                    "env": {"items": {"properties": {"valueUrl": {}}}},
                    "labels": {"additionalProperties": {"properties": {"ownerId": {}}}},
                    "a": {"properties": {"b": {"properties": {"c_d": {}}}}}
                }}
            }
        });
        let mut bad = Vec::new();
        walk(&schema, "", &mut |path, name, _| {
            if field_name_problem(name).is_some() {
                bad.push(path.to_string());
            }
        });
        bad.sort();
        assert_eq!(
            bad,
            [
                "spec.a.b.c_d",
                "spec.env[].valueUrl",
                "spec.labels{}.ownerId"
            ]
        );
    }

    #[test]
    fn cuebe_own_crds_follow_the_naming_convention() {
        #[allow(unused_mut)]
        let mut crds = vec![crate::rollout::channel_crd()];
        #[cfg(feature = "remote-modules")]
        crds.push(crate::approval::approval_crd());
        for crd in &crds {
            let problems = field_name_problems(crd);
            assert!(problems.is_empty(), "{problems:#?}");
        }
    }
}
