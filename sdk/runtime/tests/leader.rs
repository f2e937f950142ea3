//! Leader election against the real API server, with the path to it frozen mid-lease: a leader
//! whose renewals hang must step down before its Lease can expire, so that it has stopped
//! writing before another replica can take over.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cuebe::ops::leader::LeaderElection;
use cuebe_testkit::cluster::TestCluster;
use cuebe_testkit::fault::FaultProxy;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_renewals_hang_steps_down_before_its_lease_can_expire() {
    let cluster = TestCluster::shared().await.unwrap();
    let ns = cluster.namespace("leader-hang").await.unwrap();
    let proxy = FaultProxy::start(cluster.api_addr()).await.unwrap();
    let lease_duration = Duration::from_secs(6);
    let election = |identity: &str| {
        LeaderElection::new("hang", ns.clone(), identity)
            .lease_duration(lease_duration)
            .renew_every(Duration::from_millis(500))
            .retry_every(Duration::from_millis(200))
    };

    // Replica a reaches the API server only through the proxy.
    let a = election("a");
    let a_client = cluster.client_via(&proxy);
    tokio::time::timeout(Duration::from_secs(20), a.acquire(&a_client))
        .await
        .expect("a takes the free lease");
    let holding = tokio::spawn({
        let (a, a_client) = (a.clone(), a_client.clone());
        async move {
            a.hold(&a_client).await;
            Instant::now()
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !holding.is_finished(),
        "a stepped down while its renewals were answered"
    );

    // The path freezes: connections stay open, nothing comes back, renewals hang.
    proxy.freeze();
    let frozen_at = Instant::now();
    let stepped_down_at = tokio::time::timeout(lease_duration, holding)
        .await
        .expect("a still leads a full lease duration after its renewals began to hang")
        .unwrap();
    let took = stepped_down_at - frozen_at;
    assert!(
        took < lease_duration * 2 / 3 + Duration::from_secs(1),
        "a stepped down {took:?} after the freeze"
    );

    // Replica b, on a healthy path, can take over only after a's lease expires: by then a had
    // stopped. The Lease still names a when a steps down.
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &ns);
    let holder = leases
        .get("hang")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder.as_deref(), Some("a"));
    let b = election("b");
    tokio::time::timeout(Duration::from_secs(20), b.acquire(&cluster.client()))
        .await
        .expect("b takes the lease once a's expires");
    let b_leads_at = Instant::now();
    assert!(
        b_leads_at > stepped_down_at,
        "b led before a had stepped down"
    );
    let holder = leases
        .get("hang")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder.as_deref(), Some("b"));
    proxy.thaw();
}
