//! `rbac`: the least ClusterRole an operator needs, from the kinds its module renders.
//!
//! Owns: rendering sample manifests under every capability the abstraction probes for (so an
//! optional API's kinds are counted), collecting the kinds, and writing the rules. The verbs
//! are the executor's needs, nothing more:
//!
//! | what | verbs | why |
//! |---|---|---|
//! | a rendered kind | get, create, patch, list, delete | read live, Server-Side Apply (creating needs `create` too), find by label, prune |
//! | a kind only `Reference` nodes read | get, list, watch | read the object, and the watch that wakes its readers when it changes; never written |
//! | a watched kind | list, watch | drift detection |
//! | the custom resource | get, list, watch, patch | reconcile it, its finalizer (a JSON patch) |
//! | its `/status` | patch | the status write |
//! | `events.k8s.io` Events | create, patch | events on the instance (series are patched) |
//! | `cuebe.dev` PlatformModuleApprovals (with remote modules) | list, watch | a module policy's `requireApproval` reads them through a watch |
//! | `cuebe.dev` PlatformChannels | get, list, watch | instances on a channel read it |
//! | their `/status` | patch | the rollout driver's progress |
//!
//! The access check before each pass ([`cuebe::access`]) asks for the same verbs, so a role
//! built from this output passes it. Resources are the kinds' plurals by the API's own rule
//! for built-in kinds (lowercase; `y` → `ies`; `s` → `ses`); a custom kind with an irregular
//! plural must be fixed by hand.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::ObjectMeta;

use cuebe::abstraction::Abstraction;
use cuebe::renderer::{Capabilities, CueRenderer};

use crate::render::{RenderFailure, render};

/// The verbs the executor uses on every kind a module renders (see [`cuebe::access::NEEDED_VERBS`]).
pub const RENDERED_VERBS: [&str; 5] = cuebe::access::NEEDED_VERBS;

/// The plural resource name of a kind, by the API server's rule for built-in kinds
/// (`Policy` → `policies`, `Ingress` → `ingresses`, `Deployment` → `deployments`).
///
/// ```
/// use cuebe_cli::rbac::plural;
/// assert_eq!(plural("NetworkPolicy"), "networkpolicies");
/// assert_eq!(plural("Ingress"), "ingresses");
/// assert_eq!(plural("HTTPRoute"), "httproutes");
/// ```
pub fn plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

/// The API group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// The kinds (group, kind) a module's graphs hold: those it writes, and those only its
/// `Reference` nodes read (a kind both written and referenced counts as written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderedKinds {
    /// Kinds of nodes the executor writes.
    pub written: BTreeSet<(String, String)>,
    /// Kinds only `Reference` nodes read: the operator needs get, list and watch on them.
    pub referenced: BTreeSet<(String, String)>,
}

/// Every kind (group, kind) the manifests render, under no optional API and under all of them.
///
/// ```no_run
/// # fn f<A: cuebe::Abstraction>() -> Result<(), cuebe_cli::render::RenderFailure> {
/// let text = std::fs::read_to_string("web.yaml").unwrap_or_default();
/// let kinds = cuebe_cli::rbac::rendered_kinds::<A>(&[("web.yaml".into(), text)])?;
/// for (group, kind) in &kinds.written { println!("writes {group} {kind}"); }
/// for (group, kind) in &kinds.referenced { println!("reads {group} {kind}"); }
/// # Ok(()) }
/// ```
pub fn rendered_kinds<A: Abstraction>(
    manifests: &[(String, String)],
) -> Result<RenderedKinds, RenderFailure> {
    let renderer = CueRenderer::new(A::modules());
    let every = Capabilities::from_names(A::capability_probes().iter().map(|p| p.name));
    let mut kinds = RenderedKinds::default();
    for (file, text) in manifests {
        for capabilities in [Capabilities::default(), every.clone()] {
            let plan = render::<A>(&renderer, file, text, capabilities.clone(), BTreeMap::new())?;
            let mut plans = vec![plan];
            // A node pending on an export (the Deployment waiting for a referenced Secret's
            // version) renders no object, so no kind: render once more with a stand-in for
            // every missing export. A module that refuses the stand-in keeps the first render.
            let observed = stand_in_exports(plans[0].graph());
            if !observed.is_empty()
                && let Ok(with_exports) = render::<A>(&renderer, file, text, capabilities, observed)
            {
                plans.push(with_exports);
            }
            for node in plans.iter().flat_map(|p| &p.graph().nodes) {
                let Some(object) = node.object.as_ref() else {
                    continue;
                };
                let field = |k: &str| object.get(k).and_then(|v| v.as_str()).unwrap_or_default();
                let kind = (
                    group_of(field("apiVersion")).to_string(),
                    field("kind").to_string(),
                );
                if node.is_reference() {
                    kinds.referenced.insert(kind);
                } else {
                    kinds.written.insert(kind);
                }
            }
        }
    }
    let written = kinds.written.clone();
    kinds.referenced.retain(|k| !written.contains(k));
    Ok(kinds)
}

/// Observed objects holding a stand-in string at the path of every export the graph has not
/// observed, by node id (empty when nothing is pending).
fn stand_in_exports(graph: &cuebe::graph::Graph) -> BTreeMap<String, serde_json::Value> {
    let mut observed: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    if !graph.nodes.iter().any(|n| n.is_pending()) {
        return observed;
    }
    for export in graph.exports.iter().filter(|e| e.value.is_none()) {
        let mut at = observed
            .entry(export.node.clone())
            .or_insert_with(|| serde_json::json!({}));
        let keys: Vec<&str> = export.path.split('.').filter(|k| !k.is_empty()).collect();
        for (i, key) in keys.iter().enumerate() {
            let Some(object) = at.as_object_mut() else {
                break;
            };
            let next = if i + 1 == keys.len() {
                serde_json::Value::String("rbac-stand-in".into())
            } else {
                serde_json::json!({})
            };
            at = object.entry(key.to_string()).or_insert(next);
        }
    }
    observed
}

/// The least ClusterRole named `name` for `A`: the custom resource, the `rendered` kinds (read
/// only for those only `Reference` nodes read), the kinds `A` watches ([`Abstraction::WATCHES`]) and events. Rules are grouped by API group and
/// verbs, sorted, so the output is stable and diffable against a shipped file.
///
/// ```no_run
/// # fn f<A: cuebe::Abstraction>() {
/// let role = cuebe_cli::rbac::least_cluster_role::<A>("my-operator", &Default::default());
/// println!("{}", serde_norway::to_string(&role).unwrap_or_default());
/// # }
/// ```
pub fn least_cluster_role<A: Abstraction>(name: &str, rendered: &RenderedKinds) -> ClusterRole {
    // (group, resource) → verbs.
    let mut needs: BTreeMap<(String, String), BTreeSet<&'static str>> = BTreeMap::new();
    let mut grant = |group: &str, resource: String, verbs: &[&'static str]| {
        needs
            .entry((group.to_string(), resource))
            .or_default()
            .extend(verbs.iter().copied());
    };
    let own_group = A::group(&()).into_owned();
    let own = A::plural(&()).into_owned();
    grant(&own_group, own.clone(), &["get", "list", "watch", "patch"]);
    grant(&own_group, format!("{own}/status"), &["patch"]);
    for (group, kind) in &rendered.referenced {
        grant(group, plural(kind), &cuebe::access::REFERENCE_VERBS);
    }
    for (group, kind) in &rendered.written {
        grant(group, plural(kind), &RENDERED_VERBS);
        // Every rendered kind is watched (those `WATCHES` does not list from their first
        // render), for drift correction and readiness.
        grant(group, plural(kind), &["watch"]);
    }
    for watched in A::WATCHES {
        // "group/version/Kind", or "version/Kind" for the core group.
        let parts: Vec<&str> = watched.split('/').collect();
        let (group, kind) = match parts.as_slice() {
            [group, _, kind] => (*group, *kind),
            [_, kind] => ("", *kind),
            _ => continue,
        };
        grant(group, plural(kind), &["list", "watch"]);
    }
    grant("events.k8s.io", "events".into(), &["create", "patch"]);
    // Approvals of published modules, read through one watch (never a GET).
    #[cfg(feature = "remote-modules")]
    grant(
        "cuebe.dev",
        "platformmoduleapprovals".into(),
        &["list", "watch"],
    );
    // Rollouts: instances read their channel; the leader's driver writes the channel's status.
    grant(
        "cuebe.dev",
        "platformchannels".into(),
        &["get", "list", "watch"],
    );
    grant("cuebe.dev", "platformchannels/status".into(), &["patch"]);

    // One rule per (group, verbs), resources sorted: the shape people write by hand.
    let mut rules: BTreeMap<(String, Vec<&'static str>), Vec<String>> = BTreeMap::new();
    for ((group, resource), verbs) in needs {
        let mut verbs: Vec<&'static str> = verbs.into_iter().collect();
        verbs.sort_by_key(|v| VERB_ORDER.iter().position(|o| o == v));
        rules.entry((group, verbs)).or_default().push(resource);
    }
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        rules: Some(
            rules
                .into_iter()
                .map(|((group, verbs), resources)| PolicyRule {
                    api_groups: Some(vec![group]),
                    resources: Some(resources),
                    verbs: verbs.into_iter().map(str::to_string).collect(),
                    ..PolicyRule::default()
                })
                .collect(),
        ),
        ..ClusterRole::default()
    }
}

/// The order verbs are listed in (kubectl's).
const VERB_ORDER: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_follow_the_api_rule_for_built_in_kinds() {
        for (kind, resource) in [
            ("Deployment", "deployments"),
            ("ServiceAccount", "serviceaccounts"),
            ("Service", "services"),
            ("HorizontalPodAutoscaler", "horizontalpodautoscalers"),
            ("PodDisruptionBudget", "poddisruptionbudgets"),
            ("NetworkPolicy", "networkpolicies"),
            ("Ingress", "ingresses"),
            ("HTTPRoute", "httproutes"),
            ("Role", "roles"),
            ("Policy", "policies"),
        ] {
            assert_eq!(plural(kind), resource, "{kind}");
        }
    }
}
