//! Approvals of published platform modules, read from the cluster: the `PlatformModuleApproval`
//! objects (group `cuebe.dev`, cluster-scoped) that the manual-approval gate of a module policy
//! (`requireApproval: true`, see [`crate::trust::ModulePolicy::decide_approval`]) asks for.
//!
//! Owns: the custom resource ([`PlatformModuleApproval`], [`approval_crd`]), a reflector over
//! it ([`Approvals::watch`]: one watch, never a GET per reconcile), and which instances wait on
//! which digest, so that an approval arriving or being revoked reconciles exactly those
//! instances at once ([`Approvals::triggers`]).
//!
//! Workflow:
//!
//! 1. The operator starts the watch when its policy has a rule asking for approval, and waits
//!    for the first list before reconciling anything (an empty store is not "nothing approved").
//! 2. Each pass, the controller resets what the instance waits on ([`Approvals::forget`]) and
//!    checks each digest it would use ([`Approvals::check`]): the pinned one and the last good
//!    one it would fall back to. Every digest checked is recorded for the instance.
//! 3. When the set of approved digests changes (an approval created, deleted, or its digest
//!    edited; a relist after a lost watch counts too), the instances recorded for the changed
//!    digests are reconciled.
//!
//! One object per approved digest: `kubectl apply` adds one, `kubectl delete` revokes it, and
//! in a GitOps repository each approval is a file of its own (no merge conflicts on a shared
//! list). Several objects may list the same digest; it stays approved until the last is gone.
//!
//! ```no_run
//! # async fn f(client: kube::Client) {
//! use cuebe::approval::Approvals;
//! let (approvals, driver) = Approvals::<String>::watch(client);
//! tokio::spawn(driver);
//! approvals.ready().await;
//! println!("{} digests approved", approvals.approved().digests().count());
//! # }
//! ```
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::remote::FetchError;
use crate::trust::{ApprovalDecision, ApprovedDigests, ModulePolicy};

/// The pattern an approval's `spec.digest` must match at admission: an OCI manifest digest or
/// a full git commit, lowercase (see [`crate::trust::canonical_digest`]).
pub const DIGEST_PATTERN: &str = "^(sha256:[0-9a-f]{64}|[0-9a-f]{40}|[0-9a-f]{64})$";

/// An approval of one published platform module, by digest: with a module policy rule that
/// says `requireApproval: true`, a module from a matching source is used only while an approval
/// lists its digest. One object per approved digest; deleting it revokes the approval.
// (No example here: this text is the CRD's description of `spec`; see `approval_for`.)
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "cuebe.dev",
    version = "v1alpha1",
    kind = "PlatformModuleApproval",
    plural = "platformmoduleapprovals",
    shortname = "pmapproval",
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".spec.digest"}"#,
    printcolumn = r#"{"name":"Reference","type":"string","jsonPath":".spec.reference"}"#,
    printcolumn = r#"{"name":"Note","type":"string","jsonPath":".spec.note"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct PlatformModuleApprovalSpec {
    /// The approved digest: an OCI module's manifest digest (`sha256:<64 hex>`, what
    /// `oci://…@sha256:…` pins) or a git module's commit (40 hex).
    #[schemars(pattern(DIGEST_PATTERN))]
    pub digest: String,
    /// Where the module was published, for people reading the approval (not checked: the
    /// digest names the content wherever it comes from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub reference: Option<String>,
    /// Why it was approved, by whom, a ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub note: Option<String>,
}

/// The `PlatformModuleApproval` CustomResourceDefinition (what `crd` prints after the
/// abstraction's own, and `dev` installs).
///
/// ```
/// let crd = cuebe::approval::approval_crd();
/// assert_eq!(crd.spec.scope, "Cluster");
/// ```
pub fn approval_crd() -> CustomResourceDefinition {
    PlatformModuleApproval::crd()
}

/// The name of the approval [`approval_for`] writes for a digest: `<last path segment of the
/// source>-<first 12 hex of the digest>`, a valid object name.
fn approval_name(reference: &str, digest: &str) -> String {
    let hex: String = digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    let path = reference
        .split(['@', '?'])
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let base: String = path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".git")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let base = base.trim_matches('-');
    if base.is_empty() {
        format!("module-{hex}")
    } else {
        format!("{base}-{hex}")
    }
}

/// The approval of `reference`'s digest: `oci://…@sha256:…` (its manifest digest),
/// `git+…@<commit>` as `platformRefResolved` shows it (the commit), or a bare digest. What
/// `approve` prints for `kubectl apply -f -`.
///
/// ```
/// let reference = format!("oci://ghcr.io/acme/platform.example.com/platform@sha256:{}", "ab".repeat(32));
/// let approval = cuebe::approval::approval_for(&reference, Some("PLAT-42")).unwrap();
/// assert_eq!(approval.metadata.name.as_deref(), Some("platform-abababababab"));
/// assert_eq!(approval.spec.digest, format!("sha256:{}", "ab".repeat(32)));
/// ```
pub fn approval_for(reference: &str, note: Option<&str>) -> Result<PlatformModuleApproval, String> {
    let reference = reference.trim();
    let (digest, shown) = if let Ok(pinned) = crate::module::OciReference::parse(reference) {
        (pinned.digest.clone(), Some(pinned.to_string()))
    } else if let Some(resolved) = crate::module::ResolvedGitReference::parse(reference) {
        (resolved.commit.clone(), Some(resolved.to_string()))
    } else {
        let digest = crate::trust::canonical_digest(reference).map_err(|_| {
            format!(
                "{reference:?}: give a pinned reference (oci://REGISTRY/REPO@sha256:…), a resolved git reference (git+https://HOST/REPO@<commit>, as status.platformRefResolved shows it) or a digest"
            )
        })?;
        (digest, None)
    };
    let digest = crate::trust::canonical_digest(&digest)?;
    let name = approval_name(shown.as_deref().unwrap_or_default(), &digest);
    Ok(PlatformModuleApproval::new(
        &name,
        PlatformModuleApprovalSpec {
            digest,
            reference: shown,
            note: note.map(str::to_string),
        },
    ))
}

/// Which instances (keys `K`) wait on which digests. Pure bookkeeping, tested on its own.
#[derive(Debug)]
struct Waiting<K> {
    by_digest: HashMap<String, HashSet<K>>,
    by_key: HashMap<K, HashSet<String>>,
}

impl<K> Default for Waiting<K> {
    fn default() -> Self {
        Self {
            by_digest: HashMap::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> Waiting<K> {
    fn add(&mut self, key: &K, digest: &str) {
        self.by_digest
            .entry(digest.to_string())
            .or_default()
            .insert(key.clone());
        self.by_key
            .entry(key.clone())
            .or_default()
            .insert(digest.to_string());
    }

    fn forget(&mut self, key: &K) {
        for digest in self.by_key.remove(key).unwrap_or_default() {
            if let Some(keys) = self.by_digest.get_mut(&digest) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_digest.remove(&digest);
                }
            }
        }
    }

    fn waiting_on<'a>(&self, digests: impl IntoIterator<Item = &'a String>) -> Vec<K> {
        let mut keys: Vec<K> = Vec::new();
        for digest in digests {
            for key in self.by_digest.get(digest).into_iter().flatten() {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
        }
        keys
    }

    fn everyone(&self) -> Vec<K> {
        self.by_key.keys().cloned().collect()
    }
}

/// The approvals of the cluster (through a reflector) and the instances waiting on them.
/// `K` names an instance (the controller uses `ObjectRef<A>`).
pub struct Approvals<K> {
    store: Store<PlatformModuleApproval>,
    changed: tokio::sync::broadcast::Sender<BTreeSet<String>>,
    waiting: Mutex<Waiting<K>>,
}

impl<K> std::fmt::Debug for Approvals<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("approvals", &self.store.state().len())
            .finish_non_exhaustive()
    }
}

/// The canonical digests the store's approvals list.
fn approved_in(store: &Store<PlatformModuleApproval>) -> ApprovedDigests {
    let mut approved = ApprovedDigests::default();
    for approval in store.state() {
        let name = approval.metadata.name.as_deref().unwrap_or_default();
        if let Err(error) = approved.insert(name, &approval.spec.digest) {
            // The CRD's pattern refuses these at admission; an object written before it or
            // around it approves nothing.
            tracing::warn!(approval = %name, %error, "a PlatformModuleApproval approves nothing");
        }
    }
    approved
}

impl<K: Clone + Eq + Hash + Send + 'static> Approvals<K> {
    /// Starts reading approvals: the handle, and the future that drives the watch (spawn it;
    /// dropping it stops the watch). A watch that fails (the CRD not installed, RBAC) is
    /// retried with backoff and logged; the store keeps what it last read.
    pub fn watch(client: Client) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let api: Api<PlatformModuleApproval> = Api::all(client);
        let (store, writer) = reflector::store();
        let (changed, _) = tokio::sync::broadcast::channel(64);
        let approvals = Self {
            store: store.clone(),
            changed: changed.clone(),
            waiting: Mutex::new(Waiting::default()),
        };
        let driver = async move {
            let events = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            );
            futures::pin_mut!(events);
            let mut known: BTreeSet<String> = BTreeSet::new();
            let mut failing = false;
            while let Some(event) = events.next().await {
                match event {
                    // A (re)list is applied to the store at InitDone, all at once.
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                    Ok(_) => {
                        if failing {
                            tracing::info!("reading PlatformModuleApprovals again");
                            failing = false;
                        }
                        let now: BTreeSet<String> =
                            approved_in(&store).digests().map(str::to_string).collect();
                        let delta: BTreeSet<String> =
                            now.symmetric_difference(&known).cloned().collect();
                        known = now;
                        if !delta.is_empty() {
                            tracing::info!(changed = ?delta, "approved platform module digests changed");
                            // No receiver: no controller running (a follower); nothing waits.
                            let _ = changed.send(delta);
                        }
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "cannot read PlatformModuleApprovals (is its CRD installed? `crd` prints it; does the operator's ClusterRole grant list and watch on platformmoduleapprovals.cuebe.dev?); retrying");
                        }
                        failing = true;
                    }
                }
            }
        };
        (approvals, driver)
    }

    /// Waits until the approvals have been listed once.
    pub async fn ready(&self) {
        if crate::store_ready::store_ready(&self.store).await.is_err() {
            // The watch was dropped: nothing will ever be listed.
            futures::future::pending::<()>().await;
        }
    }

    /// The digests approved now.
    pub fn approved(&self) -> ApprovedDigests {
        approved_in(&self.store)
    }

    /// Whether `waiter` may use the module with `digest` (an OCI manifest digest or a git
    /// commit) from `source` (as the policy matches it), shown to people as `shown`. Records
    /// that `waiter` depends on `digest` when the policy asks for approval, so that a change of
    /// its approval reconciles `waiter`.
    pub fn check(
        &self,
        waiter: &K,
        policy: &ModulePolicy,
        source: &str,
        digest: &str,
        shown: &str,
    ) -> Result<(), FetchError> {
        let decision = policy.decide_approval(source, digest, &self.approved());
        if decision != ApprovalDecision::NotRequired {
            let canonical = crate::trust::canonical_digest(digest).unwrap_or(digest.to_string());
            self.waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .add(waiter, &canonical);
        }
        match decision {
            ApprovalDecision::NotRequired => Ok(()),
            ApprovalDecision::Approved { approval } => {
                tracing::debug!(%shown, %approval, "platform module approved");
                Ok(())
            }
            ApprovalDecision::NotApproved { pattern } => Err(not_approved(shown, digest, &pattern)),
        }
    }

    /// Forgets what `waiter` waited on (at the start of each pass, and when it is deleted).
    pub fn forget(&self, waiter: &K) {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .forget(waiter);
    }

    /// The instances to reconcile, as approvals change: those that checked a digest whose
    /// approval changed since this stream was made. One stream per controller run.
    pub fn triggers(self: &std::sync::Arc<Self>) -> impl Stream<Item = K> + Send + 'static {
        let receiver = self.changed.subscribe();
        let approvals = self.clone();
        futures::stream::unfold(receiver, move |mut receiver| {
            let approvals = approvals.clone();
            async move {
                let keys = loop {
                    let waiting = || {
                        approvals
                            .waiting
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                    };
                    match receiver.recv().await {
                        Ok(digests) => {
                            let keys = waiting().waiting_on(&digests);
                            if !keys.is_empty() {
                                break keys;
                            }
                        }
                        // Changes were missed: everyone who waits on anything looks again.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            break waiting().everyone();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                };
                Some((futures::stream::iter(keys), receiver))
            }
        })
        .flatten()
    }
}

/// The refusal of an unapproved digest: which digest, which rule, and how to approve it.
fn not_approved(shown: &str, digest: &str, pattern: &str) -> FetchError {
    let digest = crate::trust::canonical_digest(digest).unwrap_or(digest.to_string());
    FetchError::NotApproved {
        reference: shown.to_string(),
        message: format!(
            "{digest} is not approved: the module policy rule {pattern:?} requires approval. Approve it with a cluster-scoped PlatformModuleApproval (apiVersion cuebe.dev/v1alpha1) whose spec.digest is {digest:?}: `<operator> approve {shown} | kubectl apply -f -` prints and applies one"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_change_reaches_exactly_the_instances_that_checked_that_digest() {
        let mut waiting = Waiting::<&str>::default();
        let (d1, d2, d3) = (
            "sha256:1".to_string(),
            "sha256:2".to_string(),
            "c0".to_string(),
        );
        // web pins d2 and falls back to d1; api is on d1; worker follows a git commit.
        waiting.add(&"web", &d2);
        waiting.add(&"web", &d1);
        waiting.add(&"api", &d1);
        waiting.add(&"worker", &d3);
        let on = |digests: &[&String]| {
            let mut keys = waiting.waiting_on(digests.iter().copied());
            keys.sort();
            keys
        };
        assert_eq!(on(&[&d2]), vec!["web"]);
        assert_eq!(on(&[&d1]), vec!["api", "web"]);
        assert_eq!(on(&[&d1, &d3]), vec!["api", "web", "worker"]);
        assert_eq!(on(&[&"sha256:other".to_string()]), Vec::<&str>::new());
        // A new pass of web checks only d2 now.
        waiting.forget(&"web");
        waiting.add(&"web", &d2);
        assert_eq!(waiting.waiting_on([&d1]), vec!["api"]);
        waiting.forget(&"api");
        assert!(!waiting.by_digest.contains_key(&d1));
        let mut everyone = waiting.everyone();
        everyone.sort();
        assert_eq!(everyone, vec!["web", "worker"]);
    }

    #[test]
    fn approve_writes_the_object_for_a_pinned_reference_a_commit_or_a_digest() {
        let hex = "0123456789abcdef".repeat(4);
        let commit = "89abcdef0123456789abcdef0123456789abcdef";
        let cases = [
            (
                format!("oci://127.0.0.1:5000/platform.example.com/platform@sha256:{hex}"),
                Ok(("platform-0123456789ab", format!("sha256:{hex}"), true)),
            ),
            (
                format!("git+https://git.example.com/acme/Platform.git@{commit}?dir=cue/platform"),
                Ok(("platform-89abcdef0123", commit.to_string(), true)),
            ),
            (
                format!("sha256:{}", hex.to_uppercase()),
                Ok(("module-0123456789ab", format!("sha256:{hex}"), false)),
            ),
            (
                "oci://ghcr.io/acme/platform:v1.0.0".to_string(),
                Err("give a pinned reference"),
            ),
            (
                "git+https://git.example.com/acme/platform?ref=main".to_string(),
                Err("give a pinned reference"),
            ),
        ];
        for (reference, expected) in cases {
            match (approval_for(&reference, Some("ok")), expected) {
                (Ok(approval), Ok((name, digest, has_reference))) => {
                    assert_eq!(approval.metadata.name.as_deref(), Some(name), "{reference}");
                    assert_eq!(approval.spec.digest, digest, "{reference}");
                    assert_eq!(
                        approval.spec.reference.is_some(),
                        has_reference,
                        "{reference}"
                    );
                    assert_eq!(approval.spec.note.as_deref(), Some("ok"));
                }
                (Err(message), Err(start)) => {
                    assert!(message.contains(start), "{reference}: {message}")
                }
                (got, want) => panic!("{reference}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_crd_is_cluster_scoped_and_checks_the_digest_at_admission() {
        let crd = approval_crd();
        assert_eq!(crd.spec.group, "cuebe.dev");
        assert_eq!(crd.spec.scope, "Cluster");
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        assert_eq!(
            schema
                .pointer("/openAPIV3Schema/properties/spec/properties/digest/pattern")
                .and_then(|p| p.as_str()),
            Some(DIGEST_PATTERN)
        );
        let columns: Vec<&str> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Digest", "Reference", "Note", "Age"]);
    }
}
