//! Sharding: instances spread over several replicas with the published protocol of
//! [kubernetes-controller-sharding](https://github.com/timebertt/kubernetes-controller-sharding)
//! (its `sharder` assigns, each replica reconciles what it was given), for when one replica is
//! not enough.
//!
//! A replica taking part in a `ControllerRing`:
//! - **announces itself** with a shard Lease: named after its identity, held by it (the
//!   `holderIdentity` equals the name), labelled [`CONTROLLER_RING_LABEL`]`=<ring>`, renewed as
//!   leader election renews its Lease ([`crate::ops::leader`]); it reconciles only while it holds
//!   it and releases it on a graceful stop, so the sharder moves its instances at once;
//! - **watches only its instances**: the sharder labels each instance
//!   `shard.alpha.sharding.timebertt.dev/<ring>=<identity>`, and the instance watch selects
//!   that label; the children carry the instance's shard label too (the executor copies it onto
//!   every object it applies), so the child watches select it as well and each replica caches
//!   only its own part of the fleet;
//! - **lets go when asked**: an instance labelled `drain.alpha.sharding.timebertt.dev/<ring>`
//!   is not reconciled; the replica removes both labels, and the sharder assigns the instance to
//!   its new shard, which reconciles it from then on. So two replicas never reconcile one
//!   instance at once.
//!
//! The sharder itself (its Deployment, the `ControllerRing` naming the abstraction's resource,
//! its webhook) is installed separately; see the book's "Sharding" page.
//!
//! ```
//! use cuebe::ops::shard::Shard;
//! let shard = Shard::new("webservices", "cuebe-system", "operator-7d9f-x2")?;
//! assert_eq!(shard.selector(), "shard.alpha.sharding.timebertt.dev/webservices=operator-7d9f-x2");
//! assert!(Shard::new("Web Services", "cuebe-system", "a").is_err());
//! # Ok::<(), cuebe::ops::shard::ShardError>(())
//! ```
use std::collections::BTreeMap;
use std::time::Duration;

use crate::ops::leader::LeaderElection;

/// The label on a shard Lease naming the ring the shard belongs to.
pub const CONTROLLER_RING_LABEL: &str = "alpha.sharding.timebertt.dev/controllerring";

/// The prefix of the label (followed by the ring's name) naming an object's shard.
pub const SHARD_LABEL_PREFIX: &str = "shard.alpha.sharding.timebertt.dev/";

/// The prefix of the label (followed by the ring's name) that asks a shard to let an object go.
pub const DRAIN_LABEL_PREFIX: &str = "drain.alpha.sharding.timebertt.dev/";

/// This replica's place in a `ControllerRing`.
#[derive(Debug, Clone)]
pub struct Shard {
    ring: String,
    identity: String,
    lease_namespace: String,
    lease_duration: Duration,
}

/// A ring name or an identity the protocol cannot carry (both end up in label keys, label
/// values and a Lease's name).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    /// The `ControllerRing`'s name is not a DNS label of at most 63 characters.
    #[error(
        "controller ring {0:?}: must be 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit (it is part of the shard label's key)"
    )]
    Ring(String),
    /// The identity is not both a Lease name and a label value.
    #[error(
        "shard identity {0:?}: must be 1 to 63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit (it names the shard Lease and is the shard label's value; set POD_NAME)"
    )]
    Identity(String),
}

impl Shard {
    /// The replica `identity` (unique per replica, e.g. the pod name) in the ring `ring`, with
    /// its shard Lease in `lease_namespace`. Lease duration: 15 s.
    pub fn new(
        ring: impl Into<String>,
        lease_namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Result<Self, ShardError> {
        let (ring, identity) = (ring.into(), identity.into());
        if !is_dns_label(&ring, false) {
            return Err(ShardError::Ring(ring));
        }
        if !is_dns_label(&identity, true) {
            return Err(ShardError::Identity(identity));
        }
        Ok(Self {
            ring,
            identity,
            lease_namespace: lease_namespace.into(),
            lease_duration: Duration::from_secs(15),
        })
    }

    /// How long the shard Lease stays with this replica without renewal (at least 1 s): the
    /// sharder moves the instances of a replica that stopped renewing after about this long.
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = duration.max(Duration::from_secs(1));
        self
    }

    /// The `ControllerRing`'s name.
    pub fn ring(&self) -> &str {
        &self.ring
    }

    /// This replica's identity (its shard Lease's name).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The label naming an object's shard in this ring.
    pub fn shard_label(&self) -> String {
        format!("{SHARD_LABEL_PREFIX}{}", self.ring)
    }

    /// The label that asks this ring's shard to let an object go.
    pub fn drain_label(&self) -> String {
        format!("{DRAIN_LABEL_PREFIX}{}", self.ring)
    }

    /// The label selector of everything assigned to this replica.
    pub fn selector(&self) -> String {
        format!("{}={}", self.shard_label(), self.identity)
    }

    /// What this replica does with an object labelled `labels` that its watch delivered.
    pub fn decide(&self, labels: &BTreeMap<String, String>) -> ShardDecision {
        if labels.contains_key(&self.drain_label()) {
            return ShardDecision::Drain;
        }
        match labels.get(&self.shard_label()) {
            Some(shard) if *shard == self.identity => ShardDecision::Reconcile,
            // A watch event from before a move, or an object not assigned yet: another shard
            // (or none) owns it now.
            _ => ShardDecision::NotOurs,
        }
    }

    /// The shard Lease as an election: named after the identity, labelled with the ring.
    pub(crate) fn election(&self) -> LeaderElection {
        LeaderElection::new(&self.identity, &self.lease_namespace, &self.identity)
            .lease_duration(self.lease_duration)
            .renew_every((self.lease_duration / 3).max(Duration::from_millis(300)))
            .with_lease_labels(BTreeMap::from([(
                CONTROLLER_RING_LABEL.to_string(),
                self.ring.clone(),
            )]))
    }
}

/// What a shard does with an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardDecision {
    /// Assigned to this replica: reconcile it.
    Reconcile,
    /// The sharder is moving it away: remove the shard and drain labels, do not reconcile.
    Drain,
    /// Assigned elsewhere, or not yet: leave it alone.
    NotOurs,
}

/// A DNS-1123 label (lowercase letters, digits and '-', 1 to 63 characters, alphanumeric at both
/// ends); with `dots`, '.' allowed inside too (a Lease name that is also a label value).
fn is_dns_label(text: &str, dots: bool) -> bool {
    let bytes = text.as_bytes();
    let inner =
        |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || (dots && *b == b'.');
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(inner)
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_instance_is_reconciled_only_by_its_shard_and_let_go_when_drained() {
        let shard = Shard::new("webservices", "ops", "replica-a").unwrap();
        let key = "shard.alpha.sharding.timebertt.dev/webservices";
        let drain = "drain.alpha.sharding.timebertt.dev/webservices";
        let cases: &[(&[(&str, &str)], ShardDecision)] = &[
            (&[(key, "replica-a")], ShardDecision::Reconcile),
            (&[(key, "replica-b")], ShardDecision::NotOurs),
            (&[], ShardDecision::NotOurs),
            // Another ring's assignment says nothing about this one.
            (
                &[("shard.alpha.sharding.timebertt.dev/other", "replica-a")],
                ShardDecision::NotOurs,
            ),
            (&[(key, "replica-a"), (drain, "true")], ShardDecision::Drain),
            // The drain label's value does not matter, only its presence.
            (&[(key, "replica-a"), (drain, "")], ShardDecision::Drain),
            (
                &[
                    (key, "replica-a"),
                    ("drain.alpha.sharding.timebertt.dev/other", "x"),
                ],
                ShardDecision::Reconcile,
            ),
        ];
        for (given, expected) in cases {
            assert_eq!(shard.decide(&labels(given)), *expected, "{given:?}");
        }
    }

    #[test]
    fn ring_names_and_identities_the_protocol_cannot_carry_are_refused() {
        let ok = |ring: &str, identity: &str| Shard::new(ring, "ns", identity).is_ok();
        assert!(ok("webservices", "webservice-operator-5d8f9-x2v7q"));
        assert!(ok("a", "node-1.example"));
        assert!(!ok("Web", "a"), "uppercase ring");
        assert!(
            !ok("web.services", "a"),
            "a dot in the ring (part of a label key's name)"
        );
        assert!(!ok(&"r".repeat(64), "a"), "a ring longer than 63");
        assert!(!ok("-web", "a"));
        assert!(!ok("web", ""), "empty identity");
        assert!(!ok("web", "Host-12"), "uppercase identity");
        assert!(!ok("web", "a_b"), "'_' is not allowed in a Lease name");
        assert!(
            !ok("web", &"i".repeat(64)),
            "identity longer than a label value"
        );
        assert_eq!(
            Shard::new("web", "ns", "Host").unwrap_err(),
            ShardError::Identity("Host".into())
        );
    }

    #[test]
    fn the_shard_lease_is_named_after_and_held_by_the_identity() {
        let shard = Shard::new("webservices", "ops", "replica-a")
            .unwrap()
            .lease_duration(Duration::from_secs(9));
        let election = shard.election();
        assert_eq!(election.identity(), "replica-a");
        assert_eq!(election.lease_name(), "replica-a");
        assert_eq!(
            election
                .lease_labels()
                .get(CONTROLLER_RING_LABEL)
                .map(String::as_str),
            Some("webservices")
        );
    }
}
