//! Leader election on a `coordination.k8s.io/v1` Lease, so that several replicas of an operator
//! can run (for availability, and so a rolling update never has two writers) and exactly one
//! reconciles.
//!
//! The holder renews the Lease every [`LeaderElection::renew_every`]. A candidate takes the Lease
//! when it has no holder or when its record (holder and renew time) has not changed for
//! [`LeaderElection::lease_duration`] as measured by the candidate's own clock, so clock skew
//! between machines does not matter (for leader election: the sharder judges a shard Lease's
//! renew time by its own clock, see [`crate::ops::shard`]). Every write carries the Lease's
//! `resourceVersion`: of two candidates racing for it, one write fails and that one stays a
//! follower. A leader that cannot
//! renew for two thirds of the lease duration stops reconciling before anyone else may take
//! over; one that stops on a signal releases the Lease so a follower takes over at once.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Who may lead, and the timing of the Lease.
///
/// ```
/// use std::time::Duration;
/// use cuebe::ops::leader::LeaderElection;
/// let election = LeaderElection::new("cuebe-webservice-leader", "cuebe-system", "operator-7d9f-x2")
///     .lease_duration(Duration::from_secs(15));
/// assert_eq!(election.identity(), "operator-7d9f-x2");
/// ```
#[derive(Debug, Clone)]
pub struct LeaderElection {
    lease_name: String,
    namespace: String,
    identity: String,
    lease_duration: Duration,
    renew_every: Duration,
    retry_every: Duration,
    /// Labels the Lease carries (a shard Lease names its ring: see [`crate::ops::shard`]).
    lease_labels: BTreeMap<String, String>,
}

/// Why a Lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server refused or could not be reached.
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The error.
        source: kube::Error,
    },
}

impl LeaderElection {
    /// Election on the Lease `lease_name` in `namespace` as `identity` (unique per replica, e.g.
    /// the pod name). Defaults: lease 15 s, renew every 5 s, retry every 2 s.
    pub fn new(
        lease_name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            lease_name: lease_name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
            lease_labels: BTreeMap::new(),
        }
    }

    /// Labels put on the Lease when it is created or renewed.
    pub(crate) fn with_lease_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.lease_labels = labels;
        self
    }

    /// The labels the Lease carries.
    #[cfg(test)]
    pub(crate) fn lease_labels(&self) -> &BTreeMap<String, String> {
        &self.lease_labels
    }

    /// The Lease's name.
    pub fn lease_name(&self) -> &str {
        &self.lease_name
    }

    /// How long a Lease that is not renewed stays with its holder (at least 1 s).
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = duration.max(Duration::from_secs(1));
        self
    }

    /// How often the leader renews (keep it well below the lease duration).
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = every.max(Duration::from_millis(100));
        self
    }

    /// How often a follower tries to take the Lease.
    pub fn retry_every(mut self, every: Duration) -> Self {
        self.retry_every = every.max(Duration::from_millis(100));
        self
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn api(&self, client: &Client) -> Api<Lease> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    fn error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            namespace: self.namespace.clone(),
            name: self.lease_name.clone(),
            source,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self, client: &Client) {
        let mut observed = Observed::default();
        loop {
            match self.try_acquire_or_renew(client, &mut observed).await {
                Ok(true) => {
                    tracing::info!(lease = %self.lease_name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "leader election: could not read or take the lease")
                }
            }
            tokio::time::sleep(self.retry_every).await;
        }
    }

    /// Renews the Lease while it can; returns when leadership is lost (not renewed for two
    /// thirds of the lease duration, or taken by another replica).
    pub async fn hold(&self, client: &Client) {
        let mut observed = Observed::default();
        let mut renewed = Instant::now();
        let give_up_after = self.lease_duration * 2 / 3;
        loop {
            // Never sleep or wait on a request past the point where the lease could lapse: a
            // renew that hangs (no read timeout on the client) must not keep a replica leading
            // while another one takes over.
            let left = give_up_after.saturating_sub(renewed.elapsed());
            tokio::time::sleep(self.renew_every.min(left)).await;
            let left = give_up_after.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew(client, &mut observed)).await
            {
                Ok(Ok(true)) => renewed = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!(lease = %self.lease_name, "leader election: another replica holds the lease");
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "leader election: renewing the lease failed");
                }
                Err(_) => {
                    tracing::warn!(lease = %self.lease_name, "leader election: renewing the lease did not answer in time");
                }
            }
            if renewed.elapsed() >= give_up_after {
                tracing::warn!(lease = %self.lease_name, "leader election: the lease was not renewed in time; stepping down");
                return;
            }
        }
    }

    /// Gives the Lease up (when this replica holds it) so a follower takes over at once. A
    /// write refused for a stale resourceVersion (the sharder labelled a shard Lease meanwhile)
    /// is tried again on a fresh read, a few times.
    pub async fn release(&self, client: &Client) -> Result<(), LeaseError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.release_once(client).await {
                Err(LeaseError::Api {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 409 && attempts < 3 => {}
                other => return other,
            }
        }
    }

    async fn release_once(&self, client: &Client) -> Result<(), LeaseError> {
        let api = self.api(client);
        let Some(mut lease) = api
            .get_opt(&self.lease_name)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        api.replace(&self.lease_name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.error(e))?;
        tracing::info!(lease = %self.lease_name, "released the lease");
        Ok(())
    }

    /// One round: `true` when this replica holds the Lease afterwards. A write refused for a
    /// stale resourceVersion is tried again on a fresh read (a few times): someone else wrote
    /// the Lease meanwhile — maybe another candidate, maybe only a label (the sharder marks a
    /// shard Lease's state) — and the fresh read tells which.
    async fn try_acquire_or_renew(
        &self,
        client: &Client,
        observed: &mut Observed,
    ) -> Result<bool, LeaseError> {
        for _ in 0..3 {
            match self.try_once(client, observed).await? {
                Round::Held => return Ok(true),
                Round::NotHeld => return Ok(false),
                Round::Conflict => {}
            }
        }
        Ok(false)
    }

    async fn try_once(
        &self,
        client: &Client,
        observed: &mut Observed,
    ) -> Result<Round, LeaseError> {
        let api = self.api(client);
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(mut lease) = api
            .get_opt(&self.lease_name)
            .await
            .map_err(|e| self.error(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease_name.clone()),
                    namespace: Some(self.namespace.clone()),
                    labels: (!self.lease_labels.is_empty()).then(|| self.lease_labels.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Held),
                // Another replica created it first.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Round::Conflict),
                Err(e) => Err(self.error(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (holder.clone(), spec.renew_time.clone().map(|t| t.0));
        if observed.record.as_ref() != Some(&record) {
            observed.record = Some(record);
            observed.at = Some(Instant::now());
        }
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours && holder.is_some() {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.lease_duration, Duration::from_secs);
            let unchanged_for = observed.at.map_or(Duration::ZERO, |at| at.elapsed());
            if unchanged_for < duration {
                return Ok(Round::NotHeld);
            }
            tracing::info!(lease = %self.lease_name, previous = ?holder, "the lease expired; taking it");
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds());
        spec.renew_time = Some(now);
        if !self.lease_labels.is_empty() {
            // A Lease made by someone else (or before the labels were set) gets them too.
            let labels = lease.metadata.labels.get_or_insert_with(BTreeMap::new);
            for (key, value) in &self.lease_labels {
                labels.insert(key.clone(), value.clone());
            }
        }
        // `replace` sends the resourceVersion we read: a concurrent write makes it fail.
        match api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Round::Held),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Round::Conflict),
            Err(e) => Err(self.error(e)),
        }
    }
}

/// How one read-and-write of the Lease ended.
enum Round {
    Held,
    NotHeld,
    /// The write met a newer resourceVersion: read again.
    Conflict,
}

/// When this replica last saw the Lease's record change.
#[derive(Default)]
struct Observed {
    record: Option<(Option<String>, Option<k8s_openapi::jiff::Timestamp>)>,
    at: Option<Instant>,
}
