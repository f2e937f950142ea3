//! A kube client that counts the operator's requests by verb and by what they were for: shared by
//! the converge and kro side-by-side benches, so both count the same way.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kube::Client;
use kube::client::ClientBuilder;

/// Requests by `"VERB what"` (`WATCH` apart from `GET`).
pub type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

/// A client from `kubeconfig` that counts every request in `counts`: what it was for is
/// `accessreviews` (the permission preflight's questions, which the API server stores nowhere),
/// `status`, `events`, `webservices` or `children`.
pub fn counting_client(kubeconfig: &Path, counts: Counts) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = futures::executor::block_on(kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    ))
    .unwrap();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
        let path = req.uri().path();
        let what = if path.ends_with("/selfsubjectaccessreviews") {
            // The permission preflight's questions: POSTs the API server stores nowhere.
            "accessreviews"
        } else if path.ends_with("/status") {
            "status"
        } else if path.contains("/events") {
            "events"
        } else if path.contains("/webservices") {
            "webservices"
        } else {
            "children"
        };
        let verb = if watch {
            format!("WATCH {what}")
        } else {
            format!("{} {what}", req.method())
        };
        *counts.lock().unwrap().entry(verb).or_default() += 1;
        req
    });
    ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&layer)
        .build()
}
