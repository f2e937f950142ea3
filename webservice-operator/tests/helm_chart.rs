//! The Helm chart (`webservice-operator/chart`) with the real `helm` (built from its Go module
//! and cached by the testkit): it lints, its CRDs and RBAC are the committed `deploy/` files
//! (read through links: one source, which tests/crd.rs and tests/cli.rs check against what `crd`
//! and `rbac` print), every setting reaches the operator's command line,
//! bad values are refused naming the field, and the API server accepts what it renders (a
//! server-side dry run, then a real `helm install` whose uninstall keeps the CRDs).
use std::path::{Path, PathBuf};
use std::process::Command;

use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
use cuebe_testkit::helm::Helm;
use serde::Deserialize;
use serde_json::Value;

const RELEASE: &str = "webservice-operator";
const NAMESPACE: &str = "cuebe-system";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    manifest_dir().join("chart")
}

fn helm() -> Helm {
    Helm::install().expect("helm builds from its Go module")
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}

/// What the chart adds to an object for Helm's sake (labels, the keep annotation) removed, and
/// every number as a float (`toYaml` writes `minimum: 0.0` as `0`): what the API server sees.
fn comparable(doc: &Value) -> Value {
    fn numbers(v: &Value) -> Value {
        match v {
            Value::Number(n) => n
                .as_f64()
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number),
            Value::Array(items) => Value::Array(items.iter().map(numbers).collect()),
            Value::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| (k.clone(), numbers(v))).collect())
            }
            other => other.clone(),
        }
    }
    let mut doc = numbers(doc);
    if let Some(metadata) = doc["metadata"].as_object_mut() {
        metadata.remove("labels");
        metadata.remove("annotations");
    }
    doc
}

fn deployment_args(docs: &[Value], name: &str) -> Vec<String> {
    let deployment = find(docs, "Deployment", name);
    serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone())
        .expect("args are strings")
}

/// Values that turn on every setting (the webhook in self-signed mode, the ServiceMonitor, a module
/// policy, vendored modules in an image volume, a CA), written to a file for `helm -f`.
fn all_settings(dir: &Path, ca_pem: &str) -> PathBuf {
    let values = serde_json::json!({
        "image": {"digest": format!("sha256:{}", "ab".repeat(32))},
        "watchNamespace": "apps",
        "modulePolicy": {"policy": {"sources": [
            {"pattern": "registry.example.com/platform/experimental/*", "deny": true},
            {"pattern": "registry.example.com/platform/*"}
        ]}},
        "vendoredModules": {"volume": {"image": {
            "reference": "registry.example.com/platform/vendored-modules:2026-12",
            "pullPolicy": "IfNotPresent"
        }}},
        "moduleCA": {"pem": ca_pem},
        "webhook": {"enabled": true, "failurePolicy": "Fail", "port": 9444},
        "metrics": {"port": 9090, "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}}},
        "go": {"gogc": "200", "memoryLimit": "400MiB"}
    });
    let path = dir.join("all-settings.yaml");
    std::fs::write(&path, serde_norway::to_string(&values).expect("serializes")).expect("write");
    path
}

const SOME_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";

#[test]
fn the_chart_lints_clean_with_defaults_and_with_every_setting() {
    let helm = helm();
    let dir = tempfile::tempdir().expect("tempdir");
    let report = helm.lint(&chart(), &[]).expect("helm lint --strict passes");
    assert!(report.contains("0 chart(s) failed"), "{report}");
    let values = all_settings(dir.path(), SOME_CA);
    let values = values.to_str().expect("utf-8 path");
    let report = helm
        .lint(&chart(), &["-f", values])
        .expect("helm lint --strict passes with every setting");
    assert!(report.contains("0 chart(s) failed"), "{report}");
}

#[test]
fn the_charts_crds_and_rbac_are_the_deploy_files_objects() {
    // One source: the chart reads the committed deploy/ files (what `crd` and `rbac` print,
    // checked by tests/crd.rs and tests/cli.rs) through links, not copies that could drift.
    for (file, target) in [("crds.yaml", "crd.yaml"), ("rbac.yaml", "rbac.yaml")] {
        let link = chart().join("files").join(file);
        let resolved =
            std::fs::canonicalize(&link).unwrap_or_else(|e| panic!("chart/files/{file}: {e}"));
        let deploy_file =
            std::fs::canonicalize(manifest_dir().join("deploy").join(target)).expect("deploy file");
        assert!(
            link.is_symlink() && resolved == deploy_file,
            "chart/files/{file} must be a link to deploy/{target} (ln -sf ../../deploy/{target} webservice-operator/chart/files/{file})"
        );
    }

    // Rendered with the release name and namespace deploy/ uses, the chart's CRDs and RBAC are
    // deploy/'s objects, field for field (Helm's labels aside).
    let rendered = documents(
        &helm()
            .template(&chart(), RELEASE, NAMESPACE, &[])
            .expect("helm template"),
    );
    let deploy = |file: &str| {
        documents(
            &std::fs::read_to_string(manifest_dir().join("deploy").join(file))
                .expect("deploy file"),
        )
    };
    let mut compared = 0;
    for want in deploy("crd.yaml").iter().chain(deploy("rbac.yaml").iter()) {
        let (kind, name) = (
            want["kind"].as_str().expect("kind"),
            want["metadata"]["name"].as_str().expect("name"),
        );
        let have = find(&rendered, kind, name);
        assert_eq!(
            comparable(have),
            comparable(want),
            "the chart's {kind} {name} differs from deploy/'s"
        );
        compared += 1;
    }
    assert_eq!(compared, 8, "3 CRDs, a ServiceAccount and 4 RBAC objects");
    // Nothing else of those kinds: the chart grants no more than deploy/ does.
    let rbac_kinds = [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let rendered_rbac = rendered
        .iter()
        .filter(|d| rbac_kinds.iter().any(|k| d["kind"] == *k))
        .count();
    assert_eq!(
        rendered_rbac, compared,
        "the chart renders more RBAC or CRDs than deploy/ has"
    );
    // The CRDs survive `helm uninstall` (deleting one deletes every instance).
    for crd in rendered
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }

    // The Deployment runs as deploy/operator.yaml does: two replicas, leader election, probes.
    let deployment = find(&rendered, "Deployment", RELEASE);
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment_args(&rendered, RELEASE),
        ["run", "--leader-elect", "--metrics-bind", "0.0.0.0:8080"]
    );
    let shipped = &deploy("operator.yaml")[0];
    let (pod, shipped_pod) = (
        &deployment["spec"]["template"]["spec"],
        &shipped["spec"]["template"]["spec"],
    );
    for field in ["livenessProbe", "readinessProbe", "securityContext", "env"] {
        assert_eq!(
            pod["containers"][0][field], shipped_pod["containers"][0][field],
            "{field} differs from deploy/operator.yaml"
        );
    }
    assert_eq!(pod["serviceAccountName"], RELEASE);
    // The metrics Service selects the Deployment's pods; a PDB keeps one of them through drains.
    let service = find(&rendered, "Service", "webservice-operator-metrics");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[key], value, "the metrics Service misses the pods");
    }
    assert_eq!(
        find(&rendered, "PodDisruptionBudget", RELEASE)["spec"]["minAvailable"],
        1
    );
    // Off by default: the webhook (until the operator serves it) and the ServiceMonitor.
    for kind in ["ValidatingWebhookConfiguration", "ServiceMonitor"] {
        assert!(
            rendered.iter().all(|d| d["kind"] != kind),
            "{kind} is on by default"
        );
    }
}

#[test]
fn every_setting_reaches_the_operators_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let values = all_settings(dir.path(), SOME_CA);
    let rendered = documents(
        &helm()
            .template(
                &chart(),
                "platform",
                NAMESPACE,
                &["-f", values.to_str().expect("utf-8")],
            )
            .expect("helm template with every setting"),
    );
    let name = "platform-webservice-operator";
    let webhook = "platform-webservice-operator-webhook";
    assert_eq!(
        deployment_args(&rendered, name),
        [
            "run",
            "--leader-elect",
            "--metrics-bind",
            "0.0.0.0:9090",
            "--namespace",
            "apps",
            "--module-policy",
            "/etc/cuebe/module-policy/policy.yaml",
            "--vendored-modules",
            "/var/lib/cuebe/vendored-modules",
            "--module-ca-file",
            "/etc/cuebe/module-ca/ca.crt",
            "--webhook-bind",
            "0.0.0.0:9444",
            "--webhook-service",
            &format!("{NAMESPACE}/{webhook}"),
            "--webhook-config",
            webhook,
            "--webhook-secret",
            &format!("{webhook}-tls"),
        ]
    );
    let deployment = find(&rendered, "Deployment", name);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"],
        format!(
            "registry.example.com/platform/webservice-operator@sha256:{}",
            "ab".repeat(32)
        )
    );
    // Each file the flags name is mounted from what holds it.
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    let mount = |name: &str| {
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("no volume mount {name}"))["mountPath"]
            .clone()
    };
    assert_eq!(mount("module-policy"), "/etc/cuebe/module-policy");
    assert_eq!(
        volume("module-policy")["configMap"]["name"],
        "platform-webservice-operator-module-policy"
    );
    assert_eq!(mount("vendored-modules"), "/var/lib/cuebe/vendored-modules");
    assert_eq!(
        volume("vendored-modules")["image"]["reference"],
        "registry.example.com/platform/vendored-modules:2026-12"
    );
    assert_eq!(mount("module-ca"), "/etc/cuebe/module-ca");
    let env = &pod["containers"][0]["env"];
    let env_value = |name: &str| {
        env.as_array()
            .and_then(|e| e.iter().find(|e| e["name"] == name))
            .map(|e| e["value"].clone())
    };
    assert_eq!(env_value("GOGC"), Some("200".into()));
    assert_eq!(env_value("GOMEMLIMIT"), Some("400MiB".into()));
    // The policy ConfigMap holds the policy as the operator reads it.
    let policy = find(
        &rendered,
        "ConfigMap",
        "platform-webservice-operator-module-policy",
    );
    let policy: Value =
        serde_norway::from_str(policy["data"]["policy.yaml"].as_str().expect("policy.yaml"))
            .expect("the policy is YAML");
    assert_eq!(policy["sources"][0]["deny"], true);
    let ca = find(
        &rendered,
        "ConfigMap",
        "platform-webservice-operator-module-ca",
    );
    assert_eq!(ca["data"]["ca.crt"], SOME_CA);

    // The webhook: one per abstraction CRD (not cuebe's own), with the values' policy, served by
    // the Service in front of the webhook port; the operator may write this configuration's
    // caBundle and its own Secret, and nothing else.
    let config = find(&rendered, "ValidatingWebhookConfiguration", webhook);
    let webhooks = config["webhooks"].as_array().expect("webhooks");
    assert_eq!(webhooks.len(), 1, "{webhooks:?}");
    let ws = &webhooks[0];
    assert_eq!(ws["name"], "webservices.platform.example.com");
    assert_eq!(ws["failurePolicy"], "Fail");
    assert_eq!(ws["rules"][0]["resources"][0], "webservices");
    assert_eq!(
        ws["rules"][0]["operations"],
        serde_json::json!(["CREATE", "UPDATE"])
    );
    assert_eq!(
        ws["clientConfig"]["service"]["path"],
        "/validate/webservices.platform.example.com"
    );
    let service = find(&rendered, "Service", webhook);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "webhook");
    let ports = &pod["containers"][0]["ports"];
    assert!(
        ports.as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["name"] == "webhook" && p["containerPort"] == 9444)),
        "{ports}"
    );
    let role = find(&rendered, "ClusterRole", webhook);
    assert_eq!(role["rules"][0]["resourceNames"][0], webhook);
    let monitor = find(&rendered, "ServiceMonitor", name);
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");

    // cert-manager mode: a Certificate for the Service's names, its CA injected into the
    // configuration, its Secret mounted where --webhook-cert-dir points.
    let rendered = documents(
        &helm()
            .template(
                &chart(),
                "platform",
                NAMESPACE,
                &[
                    "--set",
                    "webhook.enabled=true",
                    "--set",
                    "webhook.certMode=cert-manager",
                    "--set",
                    "webhook.certManager.issuerRef.name=platform-ca",
                    "--set",
                    "webhook.certManager.issuerRef.kind=ClusterIssuer",
                ],
            )
            .expect("helm template in cert-manager mode"),
    );
    let config = find(&rendered, "ValidatingWebhookConfiguration", webhook);
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/{webhook}")
    );
    let certificate = find(&rendered, "Certificate", webhook);
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(
        certificate["spec"]["dnsNames"][0],
        format!("{webhook}.{NAMESPACE}.svc")
    );
    assert!(
        rendered.iter().all(|d| d["kind"] != "Issuer"),
        "an issuer was given"
    );
    let args = deployment_args(&rendered, name);
    let cert_dir = args
        .iter()
        .position(|a| a == "--webhook-cert-dir")
        .map(|i| args[i + 1].clone())
        .expect("--webhook-cert-dir");
    let pod = &find(&rendered, "Deployment", name)["spec"]["template"]["spec"];
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["mountPath"] == cert_dir.as_str())),
        "{cert_dir} is not mounted"
    );
}

#[test]
fn bad_values_are_refused_naming_the_field() {
    let helm = helm();
    let refused = |sets: &[&str], says: &[&str]| {
        let mut args = Vec::new();
        for set in sets {
            args.extend(["--set", set]);
        }
        let err = helm
            .template(&chart(), RELEASE, NAMESPACE, &args)
            .expect_err(&format!("{sets:?} is refused"))
            .to_string();
        for part in says {
            assert!(err.contains(part), "{sets:?}: {err}");
        }
    };
    refused(
        &["webhook.failurePolicy=Maybe"],
        &["/webhook/failurePolicy", "'Ignore', 'Fail'"],
    );
    refused(&["webhook.certMode=vault"], &["/webhook/certMode"]);
    refused(&["webhok.enabled=true"], &["webhok"]);
    refused(&["replicaCount=0"], &["/replicaCount"]);
    refused(
        &["leaderElection.enabled=false"],
        &["leaderElection.enabled", "replicaCount > 1"],
    );
    // Part of a label key: the operator would refuse it at start; the chart says so first.
    refused(&["sharding.ring=Web_Services"], &["/sharding/ring"]);
    refused(
        &["moduleCA.pem=not a certificate"],
        &["moduleCA.pem", "PEM"],
    );
    refused(
        &[
            "metrics.service.enabled=false",
            "metrics.serviceMonitor.enabled=true",
        ],
        &["metrics.serviceMonitor.enabled"],
    );
    // One replica without leader election is fine.
    helm.template(
        &chart(),
        RELEASE,
        NAMESPACE,
        &[
            "--set",
            "replicaCount=1",
            "--set",
            "leaderElection.enabled=false",
        ],
    )
    .expect("one replica needs no leader election");
}

fn kubectl(cluster: &TestCluster, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cluster.kubectl())
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_accepts_the_rendered_chart_and_helm_installs_it() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .expect("control plane");
    let helm = helm();
    let dir = tempfile::tempdir().expect("tempdir");
    kubectl(&cluster, &["create", "namespace", NAMESPACE]).expect("namespace");

    // A server-side dry run of the defaults and of every setting whose kinds this cluster serves
    // (the ServiceMonitor and cert-manager's kinds need their operators' CRDs: not here).
    let ca = std::fs::read_to_string(cluster.workdir().join("ca.crt")).expect("the cluster's CA");
    let all = all_settings(dir.path(), &ca);
    for (what, extra) in [
        ("defaults", vec![]),
        (
            "every setting",
            vec![
                "-f",
                all.to_str().expect("utf-8"),
                "--set",
                "metrics.serviceMonitor.enabled=false",
            ],
        ),
    ] {
        let rendered = helm
            .template(&chart(), RELEASE, NAMESPACE, &extra)
            .expect("helm template");
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &rendered).expect("write");
        let out = kubectl(
            &cluster,
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=helm-chart-test",
                "-f",
                file.to_str().expect("utf-8"),
            ],
        )
        .unwrap_or_else(|e| panic!("the API server refuses the chart's {what}: {e}"));
        let kinds = documents(&rendered).len();
        assert_eq!(
            out.lines()
                .filter(|l| l.contains("(server dry run)"))
                .count(),
            kinds,
            "{what}: {out}"
        );
    }

    // A real install: the objects are there, the operator's account may do what it needs.
    let kubeconfig = cluster.kubeconfig().to_str().expect("utf-8");
    helm.run(&[
        "install",
        RELEASE,
        chart().to_str().expect("utf-8"),
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        kubeconfig,
    ])
    .expect("helm install");
    kubectl(
        &cluster,
        &["get", "crd", "webservices.platform.example.com"],
    )
    .expect("CRD installed");
    kubectl(&cluster, &["-n", NAMESPACE, "get", "deployment", RELEASE]).expect("Deployment");
    let account = format!("system:serviceaccount:{NAMESPACE}:{RELEASE}");
    for (verb, resource, namespace) in [
        ("patch", "webservices.platform.example.com", "apps"),
        ("create", "deployments.apps", "apps"),
        ("update", "leases.coordination.k8s.io", NAMESPACE),
    ] {
        let answer = kubectl(
            &cluster,
            &[
                "auth", "can-i", verb, resource, "-n", namespace, "--as", &account,
            ],
        );
        assert_eq!(
            answer.as_deref().map(str::trim),
            Ok("yes"),
            "{account} may not {verb} {resource}"
        );
    }
    // The operator starts with the command line the chart gives it, reading the files its
    // ConfigMaps hold: every flag exists and every file is accepted.
    operator_starts_with_the_charts_arguments(&cluster, &helm, dir.path(), &ca).await;

    // Uninstalling keeps the CRDs (and so every instance), removes the rest.
    helm.run(&[
        "uninstall",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        kubeconfig,
    ])
    .expect("helm uninstall");
    kubectl(
        &cluster,
        &["get", "crd", "webservices.platform.example.com"],
    )
    .expect("the CRD is kept on uninstall");
    assert!(
        kubectl(&cluster, &["-n", NAMESPACE, "get", "deployment", RELEASE]).is_err(),
        "the Deployment is gone"
    );
}

/// Renders the chart with a module policy, a CA and vendored modules, writes what its ConfigMaps
/// hold where its volumes would be mounted (under `dir`), and runs the operator with the
/// Deployment's arguments against `cluster` until `/readyz` answers 200.
async fn operator_starts_with_the_charts_arguments(
    cluster: &TestCluster,
    helm: &Helm,
    dir: &Path,
    ca: &str,
) {
    let values = all_settings(dir, ca);
    let rendered = documents(
        &helm
            .template(
                &chart(),
                RELEASE,
                NAMESPACE,
                &[
                    "-f",
                    values.to_str().expect("utf-8"),
                    // The webhook's flags land with the webhook.
                    "--set",
                    "webhook.enabled=false",
                    "--set",
                    "watchNamespace=",
                ],
            )
            .expect("helm template"),
    );
    let mounts = dir.join("mounts");
    let config_map_file = |name: &str, key: &str, path: &str| {
        let data = find(&rendered, "ConfigMap", name)["data"][key]
            .as_str()
            .expect("ConfigMap data")
            .to_string();
        let file = mounts.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, data).expect("write");
    };
    config_map_file(
        "webservice-operator-module-policy",
        "policy.yaml",
        "/etc/cuebe/module-policy/policy.yaml",
    );
    config_map_file(
        "webservice-operator-module-ca",
        "ca.crt",
        "/etc/cuebe/module-ca/ca.crt",
    );
    // The image volume of vendored modules: an (empty) OCI image layout.
    let vendored = mounts.join("var/lib/cuebe/vendored-modules/platform");
    std::fs::create_dir_all(&vendored).expect("mkdir");
    std::fs::write(
        vendored.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write");
    std::fs::write(
        vendored.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .expect("write");

    let port = cuebe_testkit::cluster::free_port().expect("a free port");
    let args: Vec<String> = deployment_args(&rendered, RELEASE)
        .into_iter()
        .map(|arg| {
            if arg.starts_with("0.0.0.0:") {
                format!("127.0.0.1:{port}")
            } else if arg.starts_with('/') {
                mounts
                    .join(arg.trim_start_matches('/'))
                    .display()
                    .to_string()
            } else {
                arg
            }
        })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
        .args(&args)
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("POD_NAME", "chart-test")
        .env("POD_NAMESPACE", NAMESPACE)
        .env("CUEBE_MODULE_CACHE", dir.join("module-cache"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the operator starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ready = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use std::io::Read;
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("the operator exited with {status} on the chart's arguments {args:?}: {stderr}");
        }
        if readyz(port) == Some(200) {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "/readyz did not answer 200 within 60 s ({args:?})");
}

/// The status code of `GET /readyz` on 127.0.0.1:`port`, if it answers.
fn readyz(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_sharding_ring_runs_every_replica_as_a_shard_instead_of_electing_a_leader() {
    let rendered = documents(
        &helm()
            .template(
                &chart(),
                "platform",
                NAMESPACE,
                &[
                    "--set",
                    "sharding.ring=webservices",
                    "--set",
                    "replicaCount=3",
                ],
            )
            .expect("helm template with sharding.ring"),
    );
    let args = deployment_args(&rendered, "platform-webservice-operator");
    let ring = args.iter().position(|a| a == "--shard-ring");
    assert_eq!(
        ring.and_then(|i| args.get(i + 1)).map(String::as_str),
        Some("webservices"),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a == "--leader-elect"), "{args:?}");
    // The shard Leases need the same Role as the leader's Lease.
    find(
        &rendered,
        "Role",
        "platform-webservice-operator-leader-election",
    );
}
