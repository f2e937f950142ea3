//! The `rollout` commands as a platform team runs them: `rollout plan` on the example
//! manifests with candidate modules published to a real OCI registry (`cue mod publish`), and
//! `rollout pause|resume|undo|status` on a real API server.
//!
//! The rollout driver itself is tested end to end in tests/rollout.rs.
#![allow(clippy::unwrap_used)]

#[path = "support/module_variant.rs"]
mod module_variant;
use module_variant::{module_variant, stricter_policy};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cuebe::rollout::PlatformChannel;
use cuebe_testkit::cluster::TestCluster;
use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use webservice_operator::WebService;

fn example(name: &str) -> String {
    format!(
        "{}/../examples/webservices/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The three example WebServices (the IRSA one with the ACK capability it needs).
fn examples_args() -> Vec<String> {
    let mut args = Vec::new();
    for file in ["simple.yaml", "public.yaml", "irsa.yaml"] {
        args.push("-f".to_string());
        args.push(example(file));
    }
    args.extend(["--capabilities".to_string(), "ack-iam".to_string()]);
    args
}

/// A channel manifest on the embedded module, as a platform team keeps it in git.
fn channel_file(dir: &Path, name: &str, steps: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: cuebe.dev/v1alpha1\nkind: PlatformChannel\nmetadata:\n  name: {name}\nspec:\n  abstraction:\n    group: platform.example.com\n    kind: WebService\n  module:\n    embedded: 1.0.0\n  strategy:\n    steps: {steps}\n"
        ),
    )
    .unwrap();
    path
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs the operator binary with its own module cache (the registry is really asked).
fn operator(args: &[&str], cache: &Path, kubeconfig: Option<&Path>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_webservice-operator"));
    command.args(args).env("CUEBE_MODULE_CACHE", cache);
    match kubeconfig {
        Some(k) => command.env("KUBECONFIG", k),
        None => command.env("KUBECONFIG", "/nonexistent/kubeconfig"),
    };
    let out = command.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn plan(channel: &Path, module: &str, extra: &[String], cache: &Path) -> Run {
    let mut args = vec![
        "rollout".to_string(),
        "plan".into(),
        "--channel".into(),
        channel.display().to_string(),
        "--module".into(),
        module.to_string(),
    ];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    operator(&args, cache, None)
}

/// A release that labels every object differently (one more label on every component).
fn relabelled() -> tempfile::TempDir {
    let dir = module_variant("relabelled 1.1.0");
    let render = dir.path().join("webservice/render.cue");
    let text = std::fs::read_to_string(&render).unwrap();
    std::fs::write(
        &render,
        format!("{text}\n_meta: [_]: labels: \"platform.example.com/release\": \"next\"\n"),
    )
    .unwrap();
    dir
}

/// A release with a bug that only Public services hit: their NetworkPolicy conflicts.
fn broken_for_public() -> tempfile::TempDir {
    let dir = module_variant("broken for public");
    let render = dir.path().join("webservice/render.cue");
    let text = std::fs::read_to_string(&render).unwrap();
    std::fs::write(
        &render,
        format!(
            "{text}\nif _public {{\n\tnodes: networkPolicy: object: spec: policyTypes: [\"Egress\"]\n}}\n"
        ),
    )
    .unwrap();
    dir
}

fn instance<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["instance"] == name)
        .unwrap_or_else(|| panic!("{name} in {plan:#}"))
}

#[test]
fn a_candidate_that_relabels_everything_changes_every_object_of_every_instance() {
    let registry = LocalRegistry::start().unwrap();
    let candidate = relabelled();
    let reference = publish_module(&registry, candidate.path(), "v1.1.0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let channel = channel_file(dir.path(), "stable", r#"["1", "50%"]"#);

    let mut json_args = examples_args();
    json_args.extend(["-o".to_string(), "json".to_string()]);
    let run = plan(&channel, &reference, &json_args, cache.path());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains(&format!("candidate: {reference} (Unverified")),
        "{}",
        run.stderr
    );
    let report = run.json();
    assert_eq!(report["instances"], 3);
    assert_eq!(report["changed"], 3);
    assert_eq!(report["failed"], 0);
    // Every object of every instance carries the label: all updates, nothing created or
    // pruned; the counts per kind add up to the per-instance lists.
    let objects: usize = report["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["objects"].as_array().unwrap().len())
        .sum();
    assert!(objects >= 3 * 3, "{report:#}");
    assert_eq!(report["actions"]["update"], objects);
    assert_eq!(report["actions"]["create"], 0);
    assert_eq!(report["actions"]["prune"], 0);
    // reports' ServiceAccount and Deployment wait for its role's ARN (an export of the live
    // Role): not known offline, listed as pending rather than compared.
    assert_eq!(report["kinds"]["Deployment"]["update"], 2);
    assert_eq!(
        instance(&report, "apps/reports")["pending"],
        json!(["serviceAccount (on roleArn)", "deployment (on roleArn)"])
    );
    assert_eq!(report["kinds"]["Ingress"]["update"], 1, "shop is Public");
    assert_eq!(report["kinds"]["Role"]["update"], 1, "reports has IAM");
    for p in report["plans"].as_array().unwrap() {
        assert_eq!(p["outcome"], "Changes");
        assert_eq!(p["current"], "embedded:1.0.0");
        for o in p["objects"].as_array().unwrap() {
            assert_eq!(o["action"], "update", "{o}");
            assert!(
                o["fields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == r#"metadata.labels["platform.example.com/release"]"#),
                "{o}"
            );
        }
    }
    // The order a rollout would move them in: one canary, then 50% (2 of 3), then the rest.
    let steps: Vec<u64> = report["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3]);

    // The same as text: the summary, the counts per kind, each object with its fields.
    let run = plan(&channel, &reference, &examples_args(), cache.path());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("3 instances: 3 would change, 0 unchanged, 0 would fail"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            r#"update Deployment apps/hello: metadata.labels["platform.example.com/release"]"#
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn a_candidate_whose_policy_refuses_some_instances_fails_them_naming_the_violation() {
    let registry = LocalRegistry::start().unwrap();
    let strict = stricter_policy();
    let reference = publish_module(&registry, strict.path(), "v1.3.0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let channel = channel_file(dir.path(), "stable", r#"["1"]"#);
    let mut args = examples_args();
    args.extend(["-o".to_string(), "json".to_string()]);
    let run = plan(&channel, &reference, &args, cache.path());
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("2 of 3 instances would fail"),
        "{}",
        run.stderr
    );
    let report = run.json();
    assert_eq!(report["failed"], 2);
    // hello and reports run the default 2 replicas; shop asks for 3.
    for name in ["apps/hello", "apps/reports"] {
        let p = instance(&report, name);
        assert_eq!(p["outcome"], "Fails");
        assert_eq!(p["failure"]["reason"], "PolicyViolation");
        assert_eq!(
            p["failure"]["message"],
            "spec.replicas [replica-bounds]: replicas must be between 3 and 20, got 2"
        );
        assert_eq!(p["failure"]["failsNow"], false);
    }
    // Only the policy changed: shop's objects are the same.
    let shop = instance(&report, "apps/shop");
    assert_eq!(shop["outcome"], "Unchanged");
    assert_eq!(shop["objects"], json!([]));

    let run = plan(&channel, &reference, &examples_args(), cache.path());
    assert_eq!(run.code, 3);
    assert!(
        run.stdout.contains("would halt in its preview"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("apps/hello (step ")
            && run.stdout.contains("): FAILS (PolicyViolation)"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_candidate_that_does_not_render_some_instances_exits_4_naming_them() {
    let registry = LocalRegistry::start().unwrap();
    let broken = broken_for_public();
    let reference = publish_module(&registry, broken.path(), "v1.4.0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let channel = channel_file(dir.path(), "stable", r#"["1"]"#);
    let mut args = examples_args();
    args.extend(["-o".to_string(), "json".to_string()]);
    let run = plan(&channel, &reference, &args, cache.path());
    assert_eq!(run.code, 4, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["failed"], 1);
    let shop = instance(&report, "apps/shop");
    assert_eq!(shop["failure"]["reason"], "ModuleError", "{shop:#}");
    assert!(
        shop["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("policyTypes"),
        "{shop:#}"
    );
    assert_eq!(instance(&report, "apps/hello")["outcome"], "Unchanged");
}

#[test]
fn the_channel_s_own_module_changes_nothing_and_pinned_instances_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let channel = channel_file(dir.path(), "stable", r#"["1", "10%"]"#);
    // One file, two documents: one follows another channel, one pins the embedded module.
    let pinned = dir.path().join("pinned.yaml");
    let simple = std::fs::read_to_string(example("simple.yaml")).unwrap();
    std::fs::write(
        &pinned,
        format!(
            "{}\n  platformRef:\n    channel: beta\n---\n{}\n  platformRef:\n    embedded: 1.0.0\n",
            simple
                .trim_end()
                .replace("name: hello", "name: beta-follower"),
            simple.trim_end().replace("name: hello", "name: pinned")
        ),
    )
    .unwrap();
    let mut args = examples_args();
    args.extend([
        "-f".to_string(),
        pinned.display().to_string(),
        "-o".into(),
        "json".into(),
    ]);
    let run = plan(&channel, "embedded:1.0.0", &args, cache.path());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["instances"], 3);
    assert_eq!(report["unchanged"], 3);
    assert_eq!(
        report["actions"],
        json!({"create": 0, "update": 0, "prune": 0})
    );
    let left_out: Vec<(String, String)> = report["notOnChannel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["instance"].as_str().unwrap().to_string(),
                n["pins"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        left_out,
        [
            ("apps/beta-follower".to_string(), "channel:beta".to_string()),
            ("apps/pinned".to_string(), "embedded:1.0.0".to_string()),
        ]
    );
    assert!(
        report["notOnChannel"][0]["source"]
            .as_str()
            .unwrap()
            .ends_with("pinned.yaml (document 1)")
    );
}

#[test]
fn bad_input_exits_2_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let channel = channel_file(dir.path(), "stable", r#"["1"]"#);
    let simple = vec!["-f".to_string(), example("simple.yaml")];
    let cases: Vec<(PathBuf, &str, Vec<String>, &str)> = vec![
        (
            channel.clone(),
            "embedded:9.9.9",
            simple.clone(),
            "--module: embedded:9.9.9 is not embedded in this binary (embedded versions: 1.0.0)",
        ),
        (
            channel.clone(),
            "1.1.0",
            simple.clone(),
            "expected embedded:VERSION, oci://",
        ),
        (
            channel_file(dir.path(), "shrinking", r#"["50%", "10%"]"#),
            "embedded:1.0.0",
            simple.clone(),
            "spec.strategy.steps[1]",
        ),
        (
            channel.clone(),
            "embedded:1.0.0",
            vec!["-f".to_string(), example("irsa-observed.yaml")],
            "expected apiVersion: platform.example.com/v1alpha1 and kind: WebService",
        ),
        (
            channel.clone(),
            "embedded:1.0.0",
            vec![],
            "give the instances to plan with -f",
        ),
        (
            PathBuf::from(example("simple.yaml")),
            "embedded:1.0.0",
            simple.clone(),
            "expected apiVersion: cuebe.dev/v1alpha1 and kind: PlatformChannel",
        ),
    ];
    for (channel, module, extra, message) in cases {
        let run = plan(&channel, module, &extra, cache.path());
        assert_eq!(run.code, 2, "{module} {extra:?}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{}", run.stderr);
    }
    // A channel of another abstraction.
    let other = dir.path().join("other.yaml");
    let text = std::fs::read_to_string(&channel)
        .unwrap()
        .replace("kind: WebService", "kind: Database");
    std::fs::write(&other, text).unwrap();
    let run = plan(&other, "embedded:1.0.0", &simple, cache.path());
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(
            "spec.abstraction: the channel serves Database.platform.example.com, not WebService.platform.example.com"
        ),
        "{}",
        run.stderr
    );
}

async fn cluster() -> &'static TestCluster {
    let cluster = TestCluster::shared().await.unwrap();
    cluster
        .apply_crds(
            &cuebe::abstraction::crds::<WebService>(),
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    cluster
}

async fn create_channel(cluster: &TestCluster, name: &str) -> Api<PlatformChannel> {
    let channels: Api<PlatformChannel> = Api::all(cluster.client());
    let channel: PlatformChannel = serde_json::from_value(json!({
        "apiVersion": "cuebe.dev/v1alpha1", "kind": "PlatformChannel",
        "metadata": {"name": name},
        "spec": {
            "abstraction": {"group": "platform.example.com", "kind": "WebService"},
            "module": {"embedded": "1.0.0"},
        },
    }))
    .unwrap();
    channels
        .create(&PostParams::default(), &channel)
        .await
        .unwrap();
    channels
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_and_undo_set_the_channel_s_spec_and_status_prints_its_status() {
    let cluster = cluster().await;
    let ns = cluster.namespace("rollout-cli").await.unwrap();
    let name = format!("{ns}-controls");
    let channels = create_channel(cluster, &name).await;
    let cache = tempfile::tempdir().unwrap();
    let kubeconfig = Some(cluster.kubeconfig());
    let run = |args: &[&str]| {
        let mut all = vec!["rollout"];
        all.extend_from_slice(args);
        operator(&all, cache.path(), kubeconfig)
    };
    let spec = |c: &PlatformChannel| (c.spec.channel.paused, c.spec.channel.undo);

    // No operator runs here: the CLI says so rather than wait forever.
    let paused = run(&["pause", &name, "--wait", "1s"]);
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    assert_eq!(spec(&channels.get(&name).await.unwrap()), (true, false));
    assert!(
        paused
            .stdout
            .contains(&format!("platformchannel/{name}: spec.paused: true")),
        "{}",
        paused.stdout
    );
    assert!(
        paused
            .stdout
            .contains("the operator has not acted on the change yet"),
        "{}",
        paused.stdout
    );

    // A status the driver would write, from an operator that has seen the next generation:
    // the CLI prints the phase at once.
    let generation = channels.get(&name).await.unwrap().metadata.generation;
    let status = json!({
        "observedGeneration": generation.map(|g| g + 1),
        "current": {"embedded": "1.0.0"},
        "rollout": {
            "target": {"oci": "oci://registry.example.com/platform@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
            "previous": {"embedded": "1.0.0"},
            "phase": "Progressing",
            "step": 1,
            "threshold": 1000,
            "startedAt": "2026-12-01T10:00:00Z",
            "stepStartedAt": "2026-12-01T10:02:00Z",
            "preview": {"instances": 20, "changed": 20, "failed": 0},
            "problems": [{"instance": "shop/cart", "reason": "NotReady", "message": "not Ready on the new module yet"}],
            "message": "step 2 of 4: waiting for 1 of 2 moved instances to be Ready",
        },
        "history": [{"target": "embedded:1.0.0", "previous": "embedded:0.9.0", "outcome": "Complete", "finishedAt": "2026-11-01T10:00:00Z"}],
        "module": "oci://registry.example.com/platform@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "phase": "Progressing",
        "updated": "2/20",
        "ready": 19,
        "failed": 0,
    });
    channels
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .unwrap();
    let resumed = run(&["resume", &name]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(spec(&channels.get(&name).await.unwrap()), (false, false));
    assert!(
        resumed.stdout.contains("phase: Progressing\n")
            && resumed
                .stdout
                .contains("waiting for 1 of 2 moved instances"),
        "{}",
        resumed.stdout
    );

    let shown = run(&["status", &name]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    for line in [
        "phase: Progressing",
        "rollout: embedded:1.0.0 -> oci://registry.example.com/platform@sha256:0123",
        "(Progressing, step 2 of 4, started 2026-12-01T10:00:00Z)",
        "preview: 20 instances, 20 change, 0 would fail",
        "updated: 2/20  ready: 19  failed: 0",
        "shop/cart NotReady: not Ready on the new module yet",
        "2026-11-01T10:00:00Z embedded:0.9.0 -> embedded:1.0.0: Complete",
    ] {
        assert!(shown.stdout.contains(line), "{line:?} in\n{}", shown.stdout);
    }
    let as_json = run(&["status", &name, "-o", "json"]);
    let parsed: Value = serde_json::from_str(&as_json.stdout).unwrap();
    assert_eq!(parsed["rollout"]["phase"], "Progressing");
    assert_eq!(parsed["updated"], "2/20");

    let undone = run(&["undo", &name, "--wait", "0s"]);
    assert_eq!(undone.code, 0, "{}", undone.stderr);
    assert_eq!(spec(&channels.get(&name).await.unwrap()), (false, true));
    assert!(
        undone
            .stdout
            .contains(&format!("platformchannel/{name}: spec.undo: true")),
        "{}",
        undone.stdout
    );
    let shown = run(&["status", &name]);
    assert!(shown.stdout.contains("spec.undo: true"), "{}", shown.stdout);

    // A channel that does not exist: exit 4, named.
    let missing = run(&["pause", "no-such-channel"]);
    assert_eq!(missing.code, 4);
    assert!(
        missing
            .stderr
            .contains("no PlatformChannel \"no-such-channel\""),
        "{}",
        missing.stderr
    );
    let missing = run(&["status", "no-such-channel"]);
    assert_eq!(missing.code, 4);
    channels.delete(&name, &Default::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_reads_the_channel_and_its_instances_from_the_cluster() {
    let cluster = cluster().await;
    let ns = cluster.namespace("rollout-plan").await.unwrap();
    let name = format!("{ns}-plan");
    let channels = create_channel(cluster, &name).await;
    let webservices: Api<WebService> = Api::namespaced(cluster.client(), &ns);
    for (service, platform_ref) in [
        ("a", json!({"channel": name})),
        ("b", json!({"channel": name})),
        ("pinned", json!({"embedded": "1.0.0"})),
    ] {
        let ws: WebService = serde_json::from_value(json!({
            "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
            "metadata": {"name": service, "namespace": ns},
            "spec": {"image": "registry.example.com/web:1.0.0",
                "resources": {"cpu": "100m", "memory": "64Mi"}, "platformRef": platform_ref},
        }))
        .unwrap();
        webservices
            .create(&PostParams::default(), &ws)
            .await
            .unwrap();
    }
    let registry = LocalRegistry::start().unwrap();
    let candidate = relabelled();
    let reference = publish_module(&registry, candidate.path(), "v1.1.0").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let run = operator(
        &[
            "rollout",
            "plan",
            "--channel",
            &name,
            "--module",
            &reference,
            "--kubeconfig",
            cluster.kubeconfig().to_str().unwrap(),
            "-o",
            "json",
        ],
        cache.path(),
        None,
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let planned: Vec<&str> = report["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["instance"].as_str().unwrap())
        .collect();
    let mut sorted = planned.clone();
    sorted.sort();
    assert_eq!(sorted, [format!("{ns}/a"), format!("{ns}/b")]);
    assert_eq!(report["changed"], 2);
    assert_eq!(report["plans"][0]["source"], "cluster");
    // Writes nothing: the channel still points at its module, nothing was rendered into the
    // namespace.
    let channel = channels.get(&name).await.unwrap();
    assert_eq!(channel.spec.channel.module.to_string(), "embedded:1.0.0");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(cluster.client(), &ns);
    assert!(
        deployments
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    channels.delete(&name, &Default::default()).await.unwrap();
}
