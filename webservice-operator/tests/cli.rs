//! The `render` command as a user runs it: exit codes, formats, and errors that name the field.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn examples(name: &str) -> String {
    format!(
        "{}/../examples/webservices/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn render(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
        .arg("render")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("the binary finishes")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn simple_service_prints_the_graph_as_yaml_and_json() {
    let out = render(&["-f", &examples("simple.yaml")], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let graph: serde_json::Value = serde_norway::from_slice(&out.stdout).expect("YAML graph");
    assert_eq!(graph["graphVersion"], "cuebe.dev/v1alpha1");
    let out = render(&["-f", &examples("simple.yaml"), "-o", "json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON graph");
    assert_eq!(json, graph, "yaml and json carry the same graph");
}

#[test]
fn dot_and_mermaid_draw_edges_and_gates() {
    let out = render(
        &[
            "-f",
            &examples("irsa.yaml"),
            "--capabilities",
            "ack-iam",
            "-o",
            "dot",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dot = text(&out.stdout);
    assert!(dot.starts_with("digraph cuebe {"), "{dot}");
    assert!(dot.contains("iamRole -> serviceAccount;"), "{dot}");
    assert!(
        dot.contains("ready: ACK.ResourceSynced=True within 10m"),
        "{dot}"
    );
    assert!(dot.contains("(pending on roleArn)"), "{dot}");
    let out = render(&["-f", &examples("public.yaml"), "-o", "mermaid"], None);
    let mermaid = text(&out.stdout);
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    assert!(mermaid.contains("deployment --> hpa"), "{mermaid}");
    assert!(mermaid.contains("service --> ingress"), "{mermaid}");
}

#[test]
fn observe_file_resolves_the_pending_service_account() {
    let out = render(
        &[
            "-f",
            &examples("irsa.yaml"),
            "--capabilities",
            "ack-iam",
            "--observe",
            &examples("irsa-observed.yaml"),
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON graph");
    let sa = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "serviceAccount")
        .unwrap();
    assert_eq!(
        sa["object"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::111122223333:role/apps.reports"
    );
    assert!(sa.get("pendingOn").is_none());
}

#[test]
fn policy_violations_exit_3_as_json() {
    let out = render(&["-f", &examples("irsa.yaml"), "-o", "json"], None);
    assert_eq!(out.status.code(), Some(3));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON violations");
    assert_eq!(body["violations"][0]["path"], "spec.iam");
    assert_eq!(body["violations"][0]["rule"], "ack-iam-required");
    assert!(text(&out.stderr).contains("nothing would be applied"));
}

#[test]
fn malformed_yaml_exits_2_naming_the_line() {
    let doc = "apiVersion: platform.example.com/v1alpha1\nkind: WebService\nmetadata: {name: x}\nspec:\n  image: [\n";
    let out = render(&["-f", "-"], Some(doc));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("line 6"), "{err}");
}

#[test]
fn unknown_field_exits_2_naming_the_field_and_line() {
    let doc = "apiVersion: platform.example.com/v1alpha1\nkind: WebService\nmetadata: {name: x}\nspec:\n  image: registry.example.com/x:1\n  replica: 3\n";
    let out = render(&["-f", "-"], Some(doc));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("spec.replica")
            && err.contains("unknown field `replica`")
            && err.contains("line 6"),
        "{err}"
    );
}

#[test]
fn wrong_type_exits_2_naming_the_field() {
    let doc = "apiVersion: platform.example.com/v1alpha1\nkind: WebService\nmetadata: {name: x}\nspec:\n  image: registry.example.com/x:1\n  replicas: two\n";
    let out = render(&["-f", "-"], Some(doc));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("spec.replicas") && err.contains("invalid type"),
        "{err}"
    );
}

#[test]
fn wrong_kind_and_unknown_capability_exit_2() {
    let out = render(
        &["-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("kind: WebService"));
    let out = render(
        &["-f", &examples("simple.yaml"), "--capabilities", "istio"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown capability \"istio\""));
}

#[test]
fn missing_file_exits_2() {
    let out = render(&["-f", "/nonexistent/ws.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/ws.yaml"));
}

/// (apiGroup, resource, verb) of every rule of a ClusterRole document.
fn grants(role: &serde_json::Value) -> std::collections::BTreeSet<(String, String, String)> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = std::collections::BTreeSet::new();
    for rule in role["rules"].as_array().cloned().unwrap_or_default() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

#[test]
fn the_shipped_cluster_role_grants_exactly_what_rbac_computes_no_more() {
    use serde::Deserialize;
    let out = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
        .args([
            "rbac",
            "-f",
            &examples("simple.yaml"),
            "-f",
            &examples("public.yaml"),
        ])
        .args(["-f", &examples("irsa.yaml")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let computed: serde_json::Value = serde_norway::from_slice(&out.stdout).unwrap();
    assert_eq!(computed["kind"], "ClusterRole");
    let shipped_text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml")).unwrap();
    let shipped = serde_norway::Deserializer::from_str(&shipped_text)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "ClusterRole")
        .expect("deploy/rbac.yaml has a ClusterRole");
    let (want, have) = (grants(&computed), grants(&shipped));
    let extra: Vec<_> = have.difference(&want).collect();
    let missing: Vec<_> = want.difference(&have).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "deploy/rbac.yaml grants more than needed: {extra:?}; and lacks: {missing:?}"
    );
    // The rendered kinds are all there, each with the executor's verbs.
    for verb in ["get", "list", "create", "patch", "delete"] {
        assert!(want.contains(&("policy".into(), "poddisruptionbudgets".into(), verb.into())));
        assert!(want.contains(&("iam.services.k8s.aws".into(), "roles".into(), verb.into())));
    }
}

#[test]
fn rbac_names_the_field_of_a_bad_manifest_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: platform.example.com/v1alpha1\nkind: WebService\nmetadata: {name: web}\nspec: {image: web, replicas: many}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
        .args(["rbac", "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("spec.replicas"),
        "{}",
        text(&out.stderr)
    );
}

/// The IAM role and inline policy names a WebService in `namespace` called `name` gets.
fn aws_names(namespace: &str, name: &str) -> (String, String) {
    let manifest = format!(
        "apiVersion: platform.example.com/v1alpha1\nkind: WebService\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  image: registry.example.com/web:1.0.0\n  resources: {{cpu: 250m, memory: 256Mi}}\n  \
         iam: {{policyARNs: [], inlinePolicy: '{{}}'}}\n"
    );
    let out = render(
        &["-f", "-", "-o", "json", "--capabilities", "ack-iam"],
        Some(&manifest),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spec_name = |id: &str| {
        g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["object"]["spec"]["name"].as_str().unwrap().to_string())
            .unwrap()
    };
    (spec_name("iamRole"), spec_name("iamPolicy"))
}

#[test]
fn aws_names_never_collide_across_namespaces_and_fit_aws_limits() {
    // team/a-web and team-a/web were both "team-a-web" under module 1.0.
    let (a, a_policy) = aws_names("team", "a-web");
    let (b, b_policy) = aws_names("team-a", "web");
    assert_ne!(a, b);
    assert_ne!(a_policy, b_policy);
    assert_eq!(b, "team-a.web");
    // The longest names Kubernetes allows still fit AWS: role 64, policy 128 characters.
    let long = "n".repeat(63);
    let (role, policy) = aws_names(&long, &"w".repeat(63));
    assert_eq!(role.len(), 64, "{role}");
    assert_eq!(policy.len(), 128, "{policy}");
    // Two long names that share their first 53 characters still differ.
    let (other_role, _) = aws_names(&long, &format!("{}x", "w".repeat(62)));
    assert_ne!(role, other_role);
    let allowed = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
    };
    assert!(allowed(&role) && allowed(&policy), "{role} {policy}");
}

#[test]
fn a_shard_ring_that_cannot_be_a_label_stops_run_at_start_with_exit_2() {
    let run = |args: &[&str], pod: &str| {
        Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
            .arg("run")
            .args(args)
            .env("POD_NAME", pod)
            // Never reached: the check comes before any connection.
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .output()
            .unwrap()
    };
    let out = run(&["--shard-ring", "Web_Services"], "replica-a");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--shard-ring")
            && text(&out.stderr).contains("\"Web_Services\""),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["--shard-ring", "webservices"], "Replica_A");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("shard identity \"Replica_A\""),
        "{}",
        text(&out.stderr)
    );
    // A replica leads or is a shard, not both.
    let out = run(
        &["--shard-ring", "webservices", "--leader-elect"],
        "replica-a",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
}
