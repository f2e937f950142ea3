//! Beyond one replica: the operator as shards of a `ControllerRing`, with the real sharder of
//! kubernetes-controller-sharding assigning the instances, end to end on the real control plane.
//! Three replicas are real processes (`run --shard-ring`); one joins late (the sharder drains
//! instances off the others to it), one is killed with SIGKILL (its instances move to the
//! others once the sharder gives its shard Lease up for dead: two lease durations after the last
//! renewal, the sharder's protocol) and one is stopped with SIGTERM (it releases its Lease, and
//! its instances move at once).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cuebe::ops::shard::Shard;
use cuebe_testkit::cluster::TestCluster;
use cuebe_testkit::sharder::Sharder;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use webservice_operator::WebService;

const INSTANCES: usize = 60;

/// One replica of the operator, a process of its own, logging its passes.
struct Replica {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Replica {
    fn start(cluster: &TestCluster, ns: &str, ring: &str, name: &str, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
            .args([
                "run",
                "--namespace",
                ns,
                "--shard-ring",
                ring,
                "--lease-namespace",
                ns,
            ])
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("POD_NAME", name)
            // Each pass's start and end, to check that no two replicas overlap on an instance.
            .env("RUST_LOG", "warn,cuebe::controller=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            name: name.to_string(),
            child,
            log,
        }
    }

    fn kill(&mut self) -> Instant {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        Instant::now()
    }

    /// Stops the replica as Kubernetes does a Pod (SIGTERM), waits until it has exited, and
    /// returns when the signal was sent.
    fn terminate(&mut self) -> Instant {
        let signalled = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "SIGTERM sent to {}", self.name);
        // A stop that never ends fails the test rather than hanging it.
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            if signalled.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("{} still running 60 s after SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            exit.success(),
            "{} stopped cleanly on SIGTERM: {exit}",
            self.name
        );
        signalled
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pass of one replica over one instance: from its start to its end (or to the last line of
/// the log, for a replica killed mid-pass), as log timestamps.
#[derive(Debug, Clone)]
struct Pass {
    replica: String,
    start: String,
    end: String,
}

/// The passes in a replica's log, by instance (`namespace/name`).
fn passes(replica: &str, log: &Path) -> BTreeMap<String, Vec<Pass>> {
    let text = strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
    let mut open: BTreeMap<String, String> = BTreeMap::new();
    let mut done: BTreeMap<String, Vec<Pass>> = BTreeMap::new();
    for line in text.lines() {
        let Some(time) = line.split_whitespace().next() else {
            continue;
        };
        let Some(instance) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("instance="))
        else {
            continue;
        };
        if line.contains("pass started") {
            open.insert(instance.to_string(), time.to_string());
        } else if line.contains("pass ended")
            && let Some(start) = open.remove(instance)
        {
            done.entry(instance.to_string()).or_default().push(Pass {
                replica: replica.to_string(),
                start,
                end: time.to_string(),
            });
        }
    }
    // A pass cut short (the replica killed, or its Lease lost) lasted at most until the last
    // line the replica logged.
    let last = text
        .lines()
        .rev()
        .find_map(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    for (instance, start) in open {
        done.entry(instance).or_default().push(Pass {
            replica: replica.to_string(),
            start,
            end: last.clone(),
        });
    }
    done
}

/// The text without terminal colour sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_are_spread_over_three_shards_and_a_killed_or_stopped_shard_loses_none() {
    let cluster = TestCluster::shared().await.unwrap();
    let client = cluster.client();
    cluster
        .apply_crds(
            &[cuebe::abstraction::crd::<WebService>()],
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let ns = cluster.namespace("sharding").await.unwrap();
    let sharder = Sharder::start(cluster).await.unwrap();
    // The ring's name is part of a label key; the namespace's name is unique per run.
    let ring = ns.clone();
    sharder
        .apply_ring(
            &client,
            &json!({
                "apiVersion": "sharding.timebertt.dev/v1alpha1",
                "kind": "ControllerRing",
                "metadata": {"name": ring},
                "spec": {
                    "resources": [{"group": "platform.example.com", "resource": "webservices"}],
                    // Only this test's instances: other tests share the cluster.
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                },
            }),
        )
        .await
        .unwrap();
    let shard_label = Shard::new(&ring, &ns, "x").unwrap().shard_label();
    let logs = tempfile::tempdir().unwrap();
    let mut replicas = vec![
        Replica::start(cluster, &ns, &ring, "shard-a", logs.path()),
        Replica::start(cluster, &ns, &ring, "shard-b", logs.path()),
    ];
    sharder
        .wait_for_shards(&client, &ring, 2, Duration::from_secs(60))
        .await
        .unwrap();

    let api: Api<WebService> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let apply = |i: usize, tag: &str| {
        let api = api.clone();
        let body = json!({
            "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
            "metadata": {"name": format!("web-{i}")},
            "spec": {"image": format!("registry.example.com/web:{tag}"),
                     "resources": {"cpu": "50m", "memory": "64Mi"}},
        });
        async move {
            api.patch(
                &format!("web-{i}"),
                &PatchParams::apply("sharding-test").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
        }
    };
    for i in 0..INSTANCES {
        apply(i, "1").await;
    }
    let by_shard = || async {
        let mut shards: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for w in api.list(&ListParams::default()).await.unwrap().items {
            let shard = w.labels().get(&shard_label).cloned().unwrap_or_default();
            shards.entry(shard).or_default().insert(w.name_any());
        }
        shards
    };
    // Converged: every instance Ready for its generation, its Deployment at `tag`, and
    // assigned to one of `live`.
    let converged = |tag: &'static str, live: &'static [&'static str]| {
        let api = api.clone();
        let deployments = deployments.clone();
        let shard_label = shard_label.clone();
        move || {
            let api = api.clone();
            let deployments = deployments.clone();
            let shard_label = shard_label.clone();
            async move {
                let Ok(list) = api.list(&ListParams::default()).await else {
                    return false;
                };
                let images: BTreeMap<String, String> = deployments
                    .list(&ListParams::default())
                    .await
                    .map(|l| {
                        l.items
                            .into_iter()
                            .filter_map(|d| {
                                let image =
                                    d.spec.template.spec?.containers.first()?.image.clone()?;
                                Some((d.metadata.name?, image))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                list.items.len() == INSTANCES
                    && list.items.iter().all(|w| {
                        let status = w.status.clone().unwrap_or_default();
                        status.is_ready()
                            && status.observed_generation == w.metadata.generation
                            && w.labels()
                                .get(&shard_label)
                                .is_some_and(|s| live.contains(&s.as_str()))
                            && images.get(&w.name_any()).is_some_and(|i| i.ends_with(tag))
                    })
            }
        }
    };
    let context = || async {
        let shards = by_shard().await;
        format!(
            "instances by shard: {:?}\nsharder log:\n{}",
            shards.iter().map(|(s, i)| (s, i.len())).collect::<Vec<_>>(),
            sharder.log_tail(20)
        )
    };
    cuebe_testkit::eventually::eventually(
        "60 instances Ready on shard-a and shard-b",
        Duration::from_secs(240),
        converged("web:1", &["shard-a", "shard-b"]),
        context,
    )
    .await;
    let before = by_shard().await;
    assert!(
        before.get("shard-a").is_some_and(|s| !s.is_empty())
            && before.get("shard-b").is_some_and(|s| !s.is_empty()),
        "both shards hold instances: {before:?}"
    );

    // A third replica joins: the sharder drains some instances off the two others to it.
    replicas.push(Replica::start(cluster, &ns, &ring, "shard-c", logs.path()));
    sharder
        .wait_for_shards(&client, &ring, 3, Duration::from_secs(60))
        .await
        .unwrap();
    cuebe_testkit::eventually::eventually(
        "instances rebalanced onto shard-c, all Ready",
        Duration::from_secs(240),
        {
            let converged = converged("web:1", &["shard-a", "shard-b", "shard-c"]);
            let by_shard = &by_shard;
            move || {
                let converged = converged.clone();
                async move {
                    by_shard()
                        .await
                        .get("shard-c")
                        .is_some_and(|s| !s.is_empty())
                        && converged().await
                }
            }
        },
        context,
    )
    .await;
    // The children follow their instance: each Deployment carries its instance's shard, so the
    // shard that owns the instance watches it.
    cuebe_testkit::eventually::eventually(
        "every Deployment labelled with its instance's shard",
        Duration::from_secs(90),
        || async {
            // Read each time: the sharder may still be moving instances.
            let owners = by_shard().await;
            let list = deployments.list(&ListParams::default()).await.unwrap();
            list.items.len() == INSTANCES
                && list.items.iter().all(|d| {
                    let shard = d.labels().get(&shard_label).cloned().unwrap_or_default();
                    owners
                        .get(&shard)
                        .is_some_and(|s| s.contains(&d.name_any()))
                })
        },
        context,
    )
    .await;
    let spread = by_shard().await;
    let on_a = spread.get("shard-a").cloned().unwrap_or_default();
    assert!(!on_a.is_empty(), "shard-a holds instances: {spread:?}");

    // shard-a dies mid-fleet; every instance then changes, including shard-a's.
    let killed_at = replicas[0].kill();
    for i in 0..INSTANCES {
        apply(i, "2").await;
    }
    cuebe_testkit::eventually::eventually(
        "every instance (shard-a's too) reconciled to web:2 by shard-b or shard-c",
        Duration::from_secs(300),
        converged("web:2", &["shard-b", "shard-c"]),
        context,
    )
    .await;
    let moved_in = killed_at.elapsed();
    eprintln!(
        "{} instances of the killed shard moved and reconciled within {moved_in:?} of the kill (spread before: {:?})",
        on_a.len(),
        spread.iter().map(|(s, i)| (s, i.len())).collect::<Vec<_>>()
    );

    // Never two replicas on one instance at once: the passes of different replicas over an
    // instance do not overlap (a killed replica's open pass lasts until its last log line).
    let mut all: BTreeMap<String, Vec<Pass>> = BTreeMap::new();
    for replica in &replicas {
        for (instance, mut list) in passes(&replica.name, &replica.log) {
            all.entry(instance).or_default().append(&mut list);
        }
    }
    assert_eq!(all.len(), INSTANCES, "passes logged for every instance");
    let by_replicas: BTreeSet<String> = all.values().flatten().map(|p| p.replica.clone()).collect();
    assert_eq!(
        by_replicas.len(),
        3,
        "all three replicas reconciled: {by_replicas:?}"
    );
    for (instance, list) in &all {
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if a.replica == b.replica {
                    continue;
                }
                // RFC 3339 UTC timestamps of one format order as text.
                let overlap = a.start < b.end && b.start < a.end;
                assert!(!overlap, "{instance}: {a:?} and {b:?} overlap");
            }
        }
    }

    // shard-b stops as a Pod is stopped (SIGTERM): it releases its shard Lease on the way out,
    // and the sharder moves its instances at once. A replica that dies silently waits for the
    // sharder to call its Lease expired (one lease duration after the last renewal) and then
    // uncertain (a second one): 25 s or more with the 15 s lease, as above.
    let on_b = by_shard().await.get("shard-b").cloned().unwrap_or_default();
    assert!(!on_b.is_empty(), "shard-b holds instances");
    let signalled = replicas[1].terminate();
    cuebe_testkit::eventually::eventually(
        "shard-b's instances moved to shard-c",
        Duration::from_secs(60),
        || async { by_shard().await.keys().all(|s| s == "shard-c") },
        context,
    )
    .await;
    let moved_in = signalled.elapsed();
    assert!(
        moved_in < Duration::from_secs(15),
        "{} instances of the stopped shard moved {moved_in:?} after SIGTERM: no sooner than a dead shard's would",
        on_b.len()
    );
    eprintln!(
        "{} instances of the shard stopped by SIGTERM moved within {moved_in:?}",
        on_b.len()
    );
    for i in 0..INSTANCES {
        apply(i, "3").await;
    }
    cuebe_testkit::eventually::eventually(
        "every instance reconciled to web:3 by shard-c",
        Duration::from_secs(240),
        converged("web:3", &["shard-c"]),
        context,
    )
    .await;
    drop(replicas);
    cluster.delete_namespace(&ns).await.unwrap();
}
