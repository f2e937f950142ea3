//! A **stand-in** for the AWS Controllers for Kubernetes (ACK) IAM controller.
//!
//! AWS cannot be reached from tests, so this task plays the part of the real ACK controller: it
//! watches `iam.services.k8s.aws` Roles and Policies and, after a configurable delay, writes the
//! status ACK would write — `status.ackResourceMetadata.arn` and `ACK.ResourceSynced=True` — or,
//! for a name the test marks as failing, `ACK.Terminal=True` with a message. It never talks to
//! AWS and is not a model of ACK's behaviour beyond that status.
use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};

/// How the stand-in behaves.
#[derive(Debug, Clone)]
pub struct AckStandInOptions {
    /// Delay before a new object is reported synced (or terminal).
    pub delay: Duration,
    /// `metadata.name`s (of Roles or Policies) that fail with `ACK.Terminal`.
    pub failing: BTreeSet<String>,
    /// AWS account id used in the ARNs it reports.
    pub account_id: String,
    /// Only this namespace (default: all).
    pub namespace: Option<String>,
}

impl Default for AckStandInOptions {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(500),
            failing: BTreeSet::new(),
            account_id: "111122223333".into(),
            namespace: None,
        }
    }
}

/// The message a failing object gets in `ACK.Terminal`.
pub const TERMINAL_MESSAGE: &str =
    "AccessDenied: the ACK stand-in was told to fail this resource (cuebe-testkit)";

/// How many times the stand-in tries to write a status before it gives up (one second apart).
const REPORT_ATTEMPTS: u32 = 120;

/// A running stand-in; aborted when dropped.
#[derive(Debug)]
pub struct AckStandIn {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for AckStandIn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "iam.services.k8s.aws",
        "v1alpha1",
        kind,
    ))
}

impl AckStandIn {
    /// Starts watching Roles and Policies in every namespace.
    ///
    /// ```no_run
    /// # async fn demo(client: kube::Client) {
    /// use cuebe_testkit::cluster::ack::{AckStandIn, AckStandInOptions};
    /// let _ack = AckStandIn::spawn(client, AckStandInOptions::default());
    /// # }
    /// ```
    pub fn spawn(client: Client, options: AckStandInOptions) -> Self {
        let tasks = ["Role", "Policy"]
            .into_iter()
            .map(|kind| tokio::spawn(run(client.clone(), kind, options.clone())))
            .collect();
        Self { tasks }
    }
}

async fn run(client: Client, kind: &'static str, options: AckStandInOptions) {
    let ar = resource(kind);
    let api: Api<DynamicObject> = match &options.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let stream = watcher(api, watcher::Config::default()).applied_objects();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let Ok(obj) = event else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let has_status = obj
            .data
            .pointer("/status/conditions")
            .and_then(|c| c.as_array())
            .is_some_and(|c| !c.is_empty());
        let observed_current = obj
            .data
            .pointer("/status/observedGeneration")
            .and_then(|g| g.as_i64())
            == obj.metadata.generation;
        if has_status && observed_current {
            continue;
        }
        let client = client.clone();
        let options = options.clone();
        let ar = ar.clone();
        tokio::spawn(async move {
            tokio::time::sleep(options.delay).await;
            // A write that fails (the API server or etcd restarting under a chaos test) is
            // tried again: the watch may not show the object again, and ACK itself retries.
            for attempt in 1..=REPORT_ATTEMPTS {
                match report(client.clone(), &ar, kind, &obj, &options).await {
                    Ok(()) => return,
                    // Gone meanwhile: nothing to report on.
                    Err(kube::Error::Api(e)) if e.code == 404 => return,
                    Err(e) if attempt == REPORT_ATTEMPTS => {
                        tracing::warn!(kind, name = ?obj.metadata.name, error = %e, "ACK stand-in could not write status");
                    }
                    Err(e) => {
                        tracing::debug!(kind, name = ?obj.metadata.name, error = %e, attempt, "ACK stand-in could not write status; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

async fn report(
    client: Client,
    ar: &ApiResource,
    kind: &str,
    obj: &DynamicObject,
    options: &AckStandInOptions,
) -> Result<(), kube::Error> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let ns = obj.metadata.namespace.clone().unwrap_or_default();
    let aws_name = obj
        .data
        .pointer("/spec/name")
        .and_then(|n| n.as_str())
        .unwrap_or(&name)
        .to_string();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = if options.failing.contains(&name) {
        serde_json::json!({
            "observedGeneration": obj.metadata.generation,
            "conditions": [
                {"type": "ACK.Terminal", "status": "True", "message": TERMINAL_MESSAGE, "lastTransitionTime": now},
                {"type": "ACK.ResourceSynced", "status": "False", "message": "Resource not synced", "lastTransitionTime": now},
            ]
        })
    } else {
        let arn = format!(
            "arn:aws:iam::{}:{}/{}",
            options.account_id,
            kind.to_lowercase(),
            aws_name
        );
        serde_json::json!({
            "observedGeneration": obj.metadata.generation,
            "ackResourceMetadata": {"arn": arn, "ownerAccountID": options.account_id, "region": "eu-west-1"},
            "conditions": [
                {"type": "ACK.ResourceSynced", "status": "True", "message": "Resource synced successfully", "lastTransitionTime": now},
            ]
        })
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, ar);
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": status})),
    )
    .await
    .map(|_| ())
}
