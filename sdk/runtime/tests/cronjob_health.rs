//! A CronJob's runs are its health, not its readiness (issue 16), on the real control plane:
//! kube-controller-manager's CronJob controller schedules the runs; the test plays the Job
//! controller (the Jobs name another manager in `spec.managedBy`, so the built-in one leaves
//! them alone and kwok's always-succeeding pods play no part) and decides how each run ends.
//!
//! A run that fails turns the node Unhealthy with one Warning event and `healthDetails` naming
//! the run, while the instance stays Ready (its Ready message says which node is unhealthy); the next run keeps it Unhealthy while it runs and,
//! when it succeeds, makes it Healthy with one Normal event. Ready never flips. About two
//! minutes: a CronJob schedules at most once a minute.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cuebe::Abstraction;
use cuebe::status::{AbstractionStatus, Health, NodePhase};
use cuebe_testkit::cluster::TestCluster;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, CustomResource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What the trial's platform engineer built: an image on a schedule.
#[derive(CustomResource, Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "e2e.example.com",
    version = "v1",
    kind = "ScheduledTask",
    namespaced,
    status = "cuebe::status::AbstractionStatus"
)]
#[abstraction(
    module = "tests/scheduled_task",
    package = "./task",
    watches = ["batch/v1/CronJob"]
)]
pub struct ScheduledTaskSpec {
    pub image: String,
    pub schedule: String,
}

async fn status(api: &Api<ScheduledTask>) -> AbstractionStatus {
    api.get("report")
        .await
        .ok()
        .and_then(|o| o.status)
        .unwrap_or_default()
}

/// Waits until the instance's status passes `check`, then returns it.
async fn until(
    cluster: &TestCluster,
    api: &Api<ScheduledTask>,
    what: &str,
    within: Duration,
    check: impl Fn(&AbstractionStatus) -> bool,
) -> AbstractionStatus {
    let check = &check;
    cuebe_testkit::eventually::eventually(
        what,
        within,
        || async move { check(&status(api).await) },
        || async { cluster.log_tails(10) },
    )
    .await;
    status(api).await
}

/// The CronJob's run that is still running and that the test has not ended yet.
async fn next_run(cluster: &TestCluster, jobs: &Api<Job>, ended: &[String]) -> String {
    let found = std::sync::Mutex::new(None);
    cuebe_testkit::eventually::eventually(
        "the CronJob controller to start a run",
        Duration::from_secs(80),
        || async {
            let list = jobs.list(&ListParams::default()).await.unwrap();
            let run = list.items.into_iter().find_map(|j| {
                let name = j.metadata.name.clone()?;
                let owned = j
                    .metadata
                    .owner_references
                    .unwrap_or_default()
                    .iter()
                    .any(|o| o.kind == "CronJob" && o.name == "report");
                (owned && !ended.contains(&name)).then_some(name)
            });
            let seen = run.is_some();
            *found.lock().unwrap() = run;
            seen
        },
        || async { cluster.log_tails(10) },
    )
    .await;
    found.into_inner().unwrap().unwrap()
}

/// Ends a run as the Job controller would, through the status subresource.
async fn end_run(jobs: &Api<Job>, name: &str, succeeded: bool) {
    let now = cuebe::executor::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let condition = |type_: &str, reason: &str| {
        json!({"type": type_, "status": "True", "reason": reason, "message": reason,
               "lastProbeTime": now, "lastTransitionTime": now})
    };
    let status = if succeeded {
        json!({"startTime": now, "completionTime": now, "succeeded": 1, "active": 0,
               "conditions": [condition("SuccessCriteriaMet", "CompletionsReached"),
                              condition("Complete", "CompletionsReached")]})
    } else {
        json!({"startTime": now, "failed": 1, "active": 0,
               "conditions": [condition("FailureTarget", "BackoffLimitExceeded"),
                              condition("Failed", "BackoffLimitExceeded")]})
    };
    jobs.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .unwrap();
}

/// The events published on the instance, as (type, reason, note).
async fn events_of(events: &Api<Event>) -> Vec<(String, String, String)> {
    let mut seen: Vec<(String, String, String)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some("ScheduledTask"))
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    seen
}

fn ready_message(status: &AbstractionStatus) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

fn ready_since(status: &AbstractionStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_cronjob_run_is_reported_once_and_the_instance_stays_ready() {
    let cluster = TestCluster::shared().await.unwrap();
    let client: Client = cluster.client();
    let ns = cluster.namespace("scheduled").await.unwrap();
    cluster
        .apply_crds(
            &[cuebe::abstraction::crd::<ScheduledTask>()],
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let _operator = tokio::spawn(
        cuebe::controller::Operator::<ScheduledTask>::new(client.clone())
            .namespace(ns.clone())
            .run(),
    );
    let api: Api<ScheduledTask> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let body = json!({
        "apiVersion": "e2e.example.com/v1", "kind": "ScheduledTask",
        "metadata": {"name": "report"},
        "spec": {"image": "registry.example.com/report:1.0.0", "schedule": "* * * * *"},
    });
    api.patch(
        "report",
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();

    // Ready once the CronJob is accepted, without waiting for a run; healthy, nothing ran.
    let first = until(
        cluster,
        &api,
        "the instance Ready",
        Duration::from_secs(60),
        |s| ready_since(s).is_some(),
    )
    .await;
    let node = &first.nodes["cronJob"];
    assert_eq!(node.phase, NodePhase::Ready, "{node:?}");
    assert_eq!(node.health, Some(Health::Healthy), "{node:?}");
    assert_eq!(node.health_details.as_deref(), Some("no run yet"));
    let ready_at = ready_since(&first);

    // The first run fails.
    let run1 = next_run(cluster, &jobs, &[]).await;
    end_run(&jobs, &run1, false).await;
    let unhealthy = until(
        cluster,
        &api,
        "the node Unhealthy",
        Duration::from_secs(30),
        |s| s.nodes.get("cronJob").and_then(|n| n.health) == Some(Health::Unhealthy),
    )
    .await;
    let node = &unhealthy.nodes["cronJob"];
    assert_eq!(node.phase, NodePhase::Ready, "{node:?}");
    let details = node.health_details.clone().unwrap_or_default();
    assert!(
        details.starts_with("the last run (scheduled ") && details.contains("last success: never"),
        "{details}"
    );
    assert_eq!(ready_since(&unhealthy), ready_at, "Ready must not flip");
    assert!(
        ready_message(&unhealthy).starts_with("1/1 nodes ready; unhealthy: cronJob: the last run"),
        "{}",
        ready_message(&unhealthy)
    );

    // The next run: while it runs, the failure stays reported.
    let run2 = next_run(cluster, &jobs, std::slice::from_ref(&run1)).await;
    let crons: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    cuebe_testkit::eventually::eventually(
        "the CronJob to show its run active",
        Duration::from_secs(20),
        || async {
            crons
                .get("report")
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| {
                    s.active
                        .unwrap_or_default()
                        .iter()
                        .any(|r| r.name.as_deref() == Some(&run2))
                })
        },
        || async { cluster.log_tails(10) },
    )
    .await;
    // Give the operator the CronJob's change (its watch fires on it) before looking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running = status(&api).await;
    assert_eq!(
        running.nodes["cronJob"].health,
        Some(Health::Unhealthy),
        "{:?}",
        running.nodes["cronJob"]
    );

    // It succeeds: healthy again.
    end_run(&jobs, &run2, true).await;
    let healthy = until(
        cluster,
        &api,
        "the node Healthy again",
        Duration::from_secs(30),
        |s| s.nodes.get("cronJob").and_then(|n| n.health) == Some(Health::Healthy),
    )
    .await;
    let details = healthy.nodes["cronJob"]
        .health_details
        .clone()
        .unwrap_or_default();
    assert!(details.ends_with(") succeeded"), "{details}");
    assert_eq!(ready_since(&healthy), ready_at, "Ready must not flip");
    assert_eq!(ready_message(&healthy), "1/1 nodes ready");

    // One event per change, none per pass.
    let seen = std::sync::Mutex::new(Vec::new());
    cuebe_testkit::eventually::eventually(
        "the NodeHealthy event",
        Duration::from_secs(10),
        || async {
            let health: Vec<(String, String, String)> = events_of(&events)
                .await
                .into_iter()
                .filter(|(_, reason, _)| reason == "NodeHealthy" || reason == "NodeUnhealthy")
                .collect();
            let done = health.iter().any(|(_, reason, _)| reason == "NodeHealthy");
            *seen.lock().unwrap() = health;
            done
        },
        || async { cluster.log_tails(10) },
    )
    .await;
    let health_events = seen.into_inner().unwrap();
    let kinds: Vec<(&str, &str)> = health_events
        .iter()
        .map(|(type_, reason, _)| (type_.as_str(), reason.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [("Normal", "NodeHealthy"), ("Warning", "NodeUnhealthy")],
        "{health_events:?}"
    );
    assert!(
        health_events[1]
            .2
            .starts_with("cronJob: the last run (scheduled "),
        "{health_events:?}"
    );
}
