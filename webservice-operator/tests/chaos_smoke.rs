//! The chaos harness (`cuebe_testkit::chaos`) at a size for the default test suite: 9
//! WebServices rolled out over two waves while the operator process is killed with SIGKILL 3
//! times and kube-apiserver and etcd are restarted once each; then nothing is lost, leaked,
//! duplicated or recreated, and every instance converged. The full run is
//! `cargo bench -p webservice-operator --bench chaos`. Its own cluster: it restarts components.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "support/chaos_workload.rs"]
mod chaos_workload;

use std::time::{Duration, Instant};

use cuebe_testkit::chaos::{self, ChaosOptions, Fault};
use cuebe_testkit::cluster::{ClusterOptions, TestCluster, ack_iam_crds};

#[tokio::test(flavor = "multi_thread")]
async fn a_small_rollout_under_kills_and_restarts_loses_leaks_duplicates_and_recreates_nothing() {
    let started = Instant::now();
    let cluster = TestCluster::start(ClusterOptions::default().with_crds(ack_iam_crds()))
        .await
        .unwrap();
    // A fixed seed, so a failure here repeats with the same plan; CUEBE_CHAOS_SEED tries others.
    let seed = std::env::var("CUEBE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14);
    let options = ChaosOptions {
        instances: 9,
        kills: 3,
        apiserver_restarts: 1,
        etcd_restarts: 1,
        waves: 2,
        converge_timeout: Duration::from_secs(120),
        ..ChaosOptions::new(seed, env!("CARGO_TARGET_TMPDIR"))
    };
    let report = chaos::run(&cluster, &chaos_workload::workload(), &options)
        .await
        .unwrap();
    println!("{report}");
    println!("smoke test took {:.1}s", started.elapsed().as_secs_f64());
    assert!(report.passed(), "{report}");
    assert_eq!(report.count(Fault::KillOperator), 3);
    assert_eq!(report.count(Fault::RestartApiServer), 1);
    assert_eq!(report.count(Fault::RestartEtcd), 1);
    assert_eq!(report.operator_starts, 4, "{report}");
    assert!(report.objects_tracked > 0, "{report}");
    cluster.check_alive().unwrap();
}
