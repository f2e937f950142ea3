//! The validating admission webhook on the real control plane, where the API server calls it:
//! `kubectl apply` of a WebService the platform refuses fails with the field, the rule and the
//! message (also with `--dry-run=server`); a valid one is admitted; with the operator stopped,
//! the `Ignore` failure policy admits the refused one, and the status reports the violation once
//! the operator is back. The same for another abstraction built with the derive (the Worker
//! example, its own module and policy); and two replicas sharing the CA as the chart runs them.
#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::time::{Duration, Instant};

use cuebe::Abstraction;
use cuebe::admission::{AdmissionWebhook, FailurePolicy};
use cuebe::controller::Operator;
use cuebe_testkit::cluster::TestCluster;
use kube::api::Api;
use webservice_operator::WebService;
use worker_operator::Worker;

fn kubectl(cluster: &TestCluster, args: &[&str], manifest: &str) -> Output {
    use std::io::Write;
    let mut child = std::process::Command::new(cluster.kubectl())
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn manifest(ns: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: platform.example.com/v1alpha1\nkind: WebService\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  image: {image}\n  resources: {{cpu: 250m, memory: 256Mi}}\n"
    )
}

/// The shared cluster, a fresh namespace `prefix-…` and `A`'s CRD installed.
async fn cluster_with<A: Abstraction>(prefix: &str) -> (&'static TestCluster, String) {
    let cluster = TestCluster::shared().await.unwrap();
    let ns = cluster.namespace(prefix).await.unwrap();
    cluster
        .apply_crds(
            &[cuebe::abstraction::crd::<A>()],
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    (cluster, ns)
}

/// The operator for `A` in `ns`, its webhook on loopback registering the configuration `config`.
async fn webhook_operator<A: Abstraction>(
    cluster: &TestCluster,
    ns: &str,
    config: &str,
) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(
        Operator::<A>::new(cluster.client())
            .namespace(ns)
            .admission_webhook(
                AdmissionWebhook::self_signed(listener, vec!["127.0.0.1".into()]).register(
                    config,
                    &url,
                    FailurePolicy::Ignore,
                ),
            )
            .run(),
    )
}

/// `kubectl apply --dry-run=server` of `manifest` until the refusal names `expected` (until the
/// webhook answers, nothing is checked); its stderr.
async fn refusal(cluster: &TestCluster, manifest: &str, expected: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl(cluster, &["apply", "--dry-run=server"], manifest);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() && stderr.contains(expected) {
            return stderr;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {stderr}\n{}",
            cluster.log_tails(20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_prints_the_violations_and_an_outage_admits_with_the_status_reporting_them_later()
 {
    let (cluster, ns) = cluster_with::<WebService>("admission").await;
    let config = format!("admission-e2e-{ns}");
    let operator = webhook_operator::<WebService>(cluster, &ns, &config).await;

    // Until its configuration exists and it answers, an apply is not checked at all.
    let refused = manifest(&ns, "refused", "docker.io/library/nginx:1.27");
    let denied = refusal(
        cluster,
        &refused,
        "spec.image [allowed-registries]",
        "the webhook never refused",
    )
    .await;
    assert!(
        denied.contains("denied the request") && denied.contains("is not from an allowed registry"),
        "{denied}"
    );

    // A real apply of the same: refused, nothing stored.
    let out = kubectl(cluster, &["apply"], &refused);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "admitted: {stderr}");
    assert!(
        stderr.contains("spec.image [allowed-registries]"),
        "{stderr}"
    );
    let services: Api<WebService> = Api::namespaced(cluster.client(), &ns);
    assert!(services.get_opt("refused").await.unwrap().is_none());

    // A spec the module's schema refuses names the field.
    let bad_port = manifest(&ns, "bad-port", "registry.example.com/web:1.0.0")
        .replace("resources:", "port: 70000\n  resources:");
    let out = kubectl(cluster, &["apply"], &bad_port);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("spec.port"),
        "{stderr}"
    );

    // A valid one is admitted and becomes Ready.
    let valid = manifest(&ns, "valid", "registry.example.com/web:1.0.0");
    let out = kubectl(cluster, &["apply"], &valid);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The operator stops: Ignore admits the refused spec (developers are never blocked).
    operator.abort();
    let _ = operator.await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = kubectl(cluster, &["apply"], &refused);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not admitted while the operator is down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Back again: the status reports the violation.
    let _operator = webhook_operator::<WebService>(cluster, &ns, &config).await;
    cuebe_testkit::eventually::eventually(
        "the admitted instance's status names the violation",
        Duration::from_secs(60),
        || {
            let services = services.clone();
            async move {
                services
                    .get("refused")
                    .await
                    .ok()
                    .and_then(|s| s.status)
                    .is_some_and(|s| {
                        s.conditions.iter().any(|c| {
                            c.type_ == "PolicyPassed"
                                && c.status == "False"
                                && c.message.contains("allowed-registries")
                        })
                    })
            }
        },
        || async { cluster.log_tails(10) },
    )
    .await;
}

/// Two replicas as the Helm chart runs them: the configuration made by someone else (the chart),
/// the CA shared in a Secret, each replica with its own serving certificate. The first replica
/// creates the Secret and writes the caBundle; the API server then trusts either replica.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_the_ca_in_a_secret_and_keep_the_chart_configuration_ca_bundle_current() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams, PostParams};
    let (cluster, ns) = cluster_with::<WebService>("admission-ha").await;
    let replica = |listener: tokio::net::TcpListener, config: String, ns: String| {
        Operator::<WebService>::new(cluster.client())
            .namespace(ns.clone())
            .admission_webhook(
                AdmissionWebhook::self_signed(listener, vec!["127.0.0.1".into()])
                    .share_certificates_in(&ns, "webhook-tls")
                    .keep_ca_bundle_of(&config),
            )
            .run()
    };
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (url_a, url_b) = (
        format!("https://{}", a.local_addr().unwrap()),
        format!("https://{}", b.local_addr().unwrap()),
    );
    // The chart's configuration, without a caBundle (only this namespace's objects).
    let config = format!("admission-ha-{ns}");
    let mut made = cuebe::admission::webhook_configuration(
        &config,
        "webservices",
        "platform.example.com",
        &["v1alpha1".into()],
        Some(&url_a),
        None,
        FailurePolicy::Fail,
        "",
    );
    for hook in made.webhooks.iter_mut().flatten() {
        hook.namespace_selector = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some(
                    [("kubernetes.io/metadata.name".to_string(), ns.clone())].into(),
                ),
                ..Default::default()
            },
        );
    }
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(cluster.client());
    configs.create(&PostParams::default(), &made).await.unwrap();

    let _a = tokio::spawn(replica(a, config.clone(), ns.clone()));
    let _b = tokio::spawn(replica(b, config.clone(), ns.clone()));
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), &ns);
    let refused = manifest(&ns, "refused", "docker.io/library/nginx:1.27");
    let refused_by =
        |what: &'static str| refusal(cluster, &refused, "spec.image [allowed-registries]", what);
    refused_by("replica a never answered").await;
    // One CA for both, in the Secret, and the bundle the configuration holds is that CA.
    let secret = secrets.get("webhook-tls").await.unwrap();
    let ca = secret.data.as_ref().unwrap()["ca.crt"].0.clone();
    let held = configs.get(&config).await.unwrap();
    let bundle = held.webhooks.as_ref().unwrap()[0]
        .client_config
        .ca_bundle
        .as_ref()
        .unwrap()
        .0
        .clone();
    assert_eq!(bundle, ca);
    // The API server now calls replica b: its own certificate chains to the same CA.
    let mut moved = held.clone();
    for hook in moved.webhooks.iter_mut().flatten() {
        hook.client_config.url = Some(format!(
            "{url_b}{}",
            cuebe::admission::validate_path("webservices", "platform.example.com")
        ));
    }
    configs
        .patch(&config, &PatchParams::default(), &Patch::Merge(&moved))
        .await
        .unwrap();
    refused_by("replica b never answered with a certificate the bundle trusts").await;
    configs.delete(&config, &Default::default()).await.unwrap();
}

/// Another abstraction built with the derive, with its own module and policy (the Worker
/// example): the webhook answers for it too, `kubectl apply` printing each violation of the
/// Worker's policy with its field, rule and message; a valid Worker is admitted.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_is_refused_with_the_violations_of_its_own_module_and_a_valid_one_admitted() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let (cluster, ns) = cluster_with::<Worker>("admission-worker").await;
    let config = format!("admission-worker-{ns}");
    let _operator = webhook_operator::<Worker>(cluster, &ns, &config).await;
    let worker = |name: &str, image: &str, replicas: u32| {
        format!(
            "apiVersion: example.com/v1alpha1\nkind: Worker\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec:\n  image: {image}\n  queue: https://sqs.eu-west-1.amazonaws.com/111122223333/jobs\n  \
             replicas: {replicas}\n"
        )
    };

    // Two violations of the Worker module's policy, one line each.
    let refused = worker("refused", "docker.io/library/busybox:1.36", 20);
    let denied = refusal(
        cluster,
        &refused,
        "spec.image [allowed-registry]",
        "the webhook never refused a Worker",
    )
    .await;
    for expected in [
        "admission webhook \"workers.example.com\" denied the request",
        "the platform policy refuses this Worker (2 violations)",
        "spec.image [allowed-registry]: image docker.io/library/busybox:1.36 is not from an allowed registry",
        "spec.replicas [replica-bounds]: replicas must be between 1 and 10",
    ] {
        assert!(denied.contains(expected), "{expected:?} not in: {denied}");
    }
    let out = kubectl(cluster, &["apply"], &refused);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("spec.replicas [replica-bounds]"),
        "{stderr}"
    );
    let workers: Api<Worker> = Api::namespaced(cluster.client(), &ns);
    assert!(workers.get_opt("refused").await.unwrap().is_none());

    // A valid one is admitted and stored.
    let valid = worker("valid", "registry.example.com/thumbnails:2.4.0", 2);
    let out = kubectl(cluster, &["apply"], &valid);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(workers.get_opt("valid").await.unwrap().is_some());

    // The configuration is cluster-wide: gone with the test, so that no other test's Worker
    // waits on this operator.
    Api::<ValidatingWebhookConfiguration>::all(cluster.client())
        .delete(&config, &Default::default())
        .await
        .unwrap();
}
