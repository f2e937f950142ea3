//! The permission preflight asks the real API server once per question, however many passes
//! need the answer at once: right after a start, a fleet's passes all ask the same few
//! questions together (measured: 37–182 reviews in a restart over 1,000 WebServices, for the 15
//! distinct questions: five verbs on three kinds).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cuebe::access::{AccessReviews, NEEDED_VERBS};
use cuebe_testkit::cluster::TestCluster;
use kube::Client;
use kube::client::ClientBuilder;

/// A client of the test cluster that counts the access reviews it sends.
async fn counting_reviews(cluster: &TestCluster, reviews: Arc<AtomicUsize>) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        if req.uri().path().ends_with("/selfsubjectaccessreviews") {
            reviews.fetch_add(1, Ordering::SeqCst);
        }
        req
    });
    ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&layer)
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_asking_the_same_question_at_once_send_one_review() {
    let cluster = TestCluster::shared().await.unwrap();
    let ns = cluster.namespace("access").await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let reviews = AccessReviews::new(counting_reviews(cluster, sent.clone()).await);

    // Forty passes of a fleet, started together, each checking the kinds its graph renders.
    let started = Instant::now();
    let passes: Vec<_> = (0..40)
        .map(|_| {
            let (reviews, ns) = (reviews.clone(), ns.clone());
            tokio::spawn(async move {
                let mut missing = Vec::new();
                for (group, resource) in [("apps", "deployments"), ("", "services")] {
                    missing.push(reviews.missing(group, resource, Some(&ns)).await);
                }
                missing
            })
        })
        .collect();
    for pass in passes {
        assert_eq!(
            pass.await.unwrap(),
            [None, None],
            "the test's identity may do everything"
        );
    }
    // Granted cluster-wide: one review per verb and kind, whatever the number of passes.
    assert_eq!(sent.load(Ordering::SeqCst), 2 * NEEDED_VERBS.len());
    assert!(started.elapsed() < Duration::from_secs(30));

    // Answered from the cache afterwards.
    assert_eq!(
        reviews.missing("apps", "deployments", Some(&ns)).await,
        None
    );
    assert_eq!(sent.load(Ordering::SeqCst), 2 * NEEDED_VERBS.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_waiting_behind_a_failed_review_take_its_outcome_instead_of_each_asking_again() {
    // Nothing listens on port 1: every review fails at once with a refused connection.
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        req
    });
    let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let client = ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&layer)
        .build();
    let reviews = AccessReviews::new(client);

    let passes: Vec<_> = (0..20)
        .map(|_| {
            let reviews = reviews.clone();
            tokio::spawn(async move {
                reviews
                    .allowed("get", "apps", "deployments", Some("shop"))
                    .await
            })
        })
        .collect();
    for pass in passes {
        // A review that cannot be asked counts as allowed: the write that follows reports the
        // real error.
        assert!(pass.await.unwrap());
    }
    assert_eq!(
        sent.load(Ordering::SeqCst),
        1,
        "the passes behind the failed review asked again"
    );
}
