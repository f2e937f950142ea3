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
        } else if is_discovery(path) {
            "discovery"
        } else {
            "children"
        };
        let verb = if watch {
            format!("WATCH {what}")
        } else if req.method() == http::Method::GET && what == "children" && is_collection(path) {
            "LIST children".to_string()
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

/// `/api`, `/api/v1`, `/apis`, `/apis/apps`, `/apis/apps/v1`, `/version`, `/openapi/…`: what
/// the API server serves, not an object.
fn is_discovery(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.first() {
        Some(&"api") => segments.len() <= 2,
        Some(&"apis") => segments.len() <= 3,
        Some(&"version") | Some(&"openapi") => true,
        _ => false,
    }
}

/// A request for a collection (a list) rather than one named object: the path ends at the
/// resource (`…/namespaces/ns/services`, `…/apps/v1/deployments`).
fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // After the group and version: [namespaces, ns,] resource [, name [, subresource]].
    let rest = match segments.first() {
        Some(&"api") => &segments[segments.len().min(2)..],
        Some(&"apis") => &segments[segments.len().min(3)..],
        _ => return false,
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    rest.len() == 1
}
