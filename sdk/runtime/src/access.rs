//! What the operator may do, asked of the API server before a pass writes anything.
//!
//! A pass that meets a missing permission halfway (a Forbidden on the fifth object of a graph)
//! leaves the instance half-applied. [`AccessReviews`] asks first, with
//! `SelfSubjectAccessReview`s, whether the operator may `get`, `create`, `patch`, `list` and
//! `delete` each
//! kind a graph renders in the instance's namespace (only `get`, `list` and `watch` for a kind a
//! `Reference` node reads); a refused kind is a Blocked node naming the
//! verb, resource and namespace, and nothing of the graph is written
//! ([`cuebe_core::plan::Pass::refuse`]).
//!
//! Answers are cached: a permission granted cluster-wide (a ClusterRole binding, the usual
//! install) is asked once per kind and verb, not once per namespace, and kept for
//! [`ALLOWED_TTL`]; a refusal is kept for [`DENIED_TTL`], so a fixed RBAC takes effect soon.
//! Passes that need the same answer at once wait for one review rather than each asking: right
//! after a start, every pass of a fleet asks the same few questions together.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// How long a granted permission is trusted without asking again.
pub const ALLOWED_TTL: Duration = Duration::from_secs(600);
/// How long a refusal is trusted: short, so granting the permission unblocks instances soon.
pub const DENIED_TTL: Duration = Duration::from_secs(30);

/// How long a failed review's outcome (allowed: the write that follows reports the real error)
/// stands for the passes that waited for it, before one of them asks again.
const FAILED_REVIEW_SHARED: Duration = Duration::from_secs(2);

/// The verbs a pass and its teardown need on every kind it renders: read the live object,
/// Server-Side Apply it (`patch`, and `create` when the apply creates it: the API server
/// checks both), find what it wrote by label, and delete or release it.
pub const NEEDED_VERBS: [&str; 5] = ["get", "create", "patch", "list", "delete"];

/// The verbs a `Reference` node needs on the kind it reads: read the object (`get`), and
/// `list`/`watch` for the watch that wakes the instances referencing it when it changes. A
/// reference is never written, so nothing more.
pub const REFERENCE_VERBS: [&str; 3] = ["get", "list", "watch"];

/// (verb, group, resource, namespace; "" for cluster-wide).
type Key = (String, String, String, String);

/// The gate of one question: held while it is asked; when its last review failed, if it did.
type Gate = Arc<tokio::sync::Mutex<Option<Instant>>>;

/// Cached `SelfSubjectAccessReview` answers for the operator's own identity. Cheap to clone.
///
/// ```no_run
/// # async fn f(client: kube::Client) {
/// let reviews = cuebe::access::AccessReviews::new(client);
/// let missing = reviews.missing("apps", "deployments", Some("shop")).await;
/// if let Some(verb) = missing {
///     eprintln!("may not {verb} deployments.apps in namespace shop");
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct AccessReviews {
    client: Client,
    answers: Arc<Mutex<HashMap<Key, (bool, Instant)>>>,
    /// One gate per question: whoever holds it asks, the others wait and read the answer. It
    /// keeps when the last review of that question failed, so that the passes waiting behind a
    /// failed review take its outcome rather than each asking again in turn.
    asking: Arc<Mutex<HashMap<Key, Gate>>>,
}

impl std::fmt::Debug for AccessReviews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessReviews").finish_non_exhaustive()
    }
}

impl AccessReviews {
    /// Reviews asked with `client`'s identity.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            answers: Arc::default(),
            asking: Arc::default(),
        }
    }

    /// The first of [`NEEDED_VERBS`] the operator may not use on `resource` of `group` in
    /// `namespace` (`None` for a cluster-scoped resource), or `None` when it may use them all.
    /// A review that cannot be asked (the API server is unreachable) counts as allowed: the
    /// write that follows reports the real error.
    pub async fn missing(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> Option<&'static str> {
        self.missing_among(&NEEDED_VERBS, group, resource, namespace)
            .await
    }

    /// The first of `verbs` the operator may not use on `resource` of `group` in `namespace`
    /// (e.g. [`REFERENCE_VERBS`] for a kind a graph only reads), as [`AccessReviews::missing`].
    pub async fn missing_among(
        &self,
        verbs: &[&'static str],
        group: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> Option<&'static str> {
        for &verb in verbs {
            if !self.allowed(verb, group, resource, namespace).await {
                return Some(verb);
            }
        }
        None
    }

    /// Whether the operator may `verb` `resource` of `group` in `namespace`: granted
    /// cluster-wide, or else in that namespace.
    pub async fn allowed(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> bool {
        if self.ask(verb, group, resource, None).await {
            return true;
        }
        match namespace {
            Some(ns) => self.ask(verb, group, resource, Some(ns)).await,
            None => false,
        }
    }

    async fn ask(&self, verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> bool {
        let key: Key = (
            verb.into(),
            group.into(),
            resource.into(),
            namespace.unwrap_or_default().into(),
        );
        if let Some(allowed) = self.fresh_answer(&key) {
            return allowed;
        }
        let gate = self
            .asking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let mut last_failure = gate.lock().await;
        // Asked and answered while this pass waited for the gate.
        if let Some(allowed) = self.fresh_answer(&key) {
            return allowed;
        }
        // Asked and failed just now: the API server is busy or unreachable, and asking again
        // at once would only queue every waiting pass behind one more failure.
        if last_failure.is_some_and(|at| at.elapsed() < FAILED_REVIEW_SHARED) {
            return true;
        }
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: namespace.map(str::to_string),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let allowed = match api.create(&PostParams::default(), &review).await {
            Ok(answer) => answer.status.is_some_and(|s| s.allowed),
            Err(e) => {
                tracing::debug!(%verb, %group, %resource, error = %e,
                    "access review failed; the write will tell");
                *last_failure = Some(Instant::now());
                return true;
            }
        };
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (allowed, Instant::now()));
        allowed
    }

    /// The cached answer to `key`, unless it is older than its time to live.
    fn fresh_answer(&self, key: &Key) -> Option<bool> {
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        let &(allowed, at) = answers.get(key)?;
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        (at.elapsed() < ttl).then_some(allowed)
    }
}
