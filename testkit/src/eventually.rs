//! Waiting for the cluster to reach a state: the one polling loop every test uses.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 100 ms until it returns true; after `timeout`, panics naming `what` and
/// appending `context()` (log tails, statuses: whatever explains the wait).
///
/// ```no_run
/// # async fn f(cluster: &cuebe_testkit::cluster::TestCluster) {
/// use std::time::Duration;
/// let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(cluster.client());
/// cuebe_testkit::eventually::eventually(
///     "a node",
///     Duration::from_secs(30),
///     || async { nodes.list(&Default::default()).await.is_ok_and(|l| !l.items.is_empty()) },
///     || async { cluster.log_tails(10) },
/// )
/// .await;
/// # }
/// ```
pub async fn eventually<F, Fut, C, CFut>(what: &str, timeout: Duration, mut check: F, context: C)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
    C: FnOnce() -> CFut,
    CFut: Future<Output = String>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let context = context().await;
    panic!("timed out after {timeout:?} waiting for {what}\n{context}");
}
