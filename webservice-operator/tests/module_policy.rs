//! `run --module-policy FILE` and `run --module-ca-file FILE`: a mistake stops the operator at
//! start, naming the flag and the rule.
use std::process::Command;

#[test]
fn a_bad_module_policy_stops_the_operator_at_start_naming_the_rule() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cases = [
        (
            "sources:\n- pattern: \"ghcr.io/acme/*\"\n  keys: [\"not a key\"]\n",
            "sources[0]: keys[0]: not a PEM public key",
        ),
        (
            "sources:\n- pattern: \"x/*\"\n  allow: true\n",
            "unknown field `allow`",
        ),
        (
            "sources:\n- pattern: \"git+https://git.example.com/*\"\n  allowedSigners: [\"platform@acme.example ssh-ed25519 AAAA\"]\n",
            "sources[0]: allowedSigners[0]: the key does not parse",
        ),
    ];
    for (i, (policy, expected)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("policy-{i}.yaml"));
        std::fs::write(&file, policy).expect("written");
        let out = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
            .arg("run")
            .arg("--module-policy")
            .arg(&file)
            // Never reach a cluster: the policy is checked first.
            .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
            .output()
            .expect("the binary runs");
        assert_eq!(out.status.code(), Some(2), "case {i}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--module-policy") && stderr.contains(expected),
            "case {i}: {stderr}"
        );
    }
}

#[test]
fn a_bad_module_ca_file_stops_the_operator_at_start_naming_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let not_a_certificate = dir.path().join("ca.pem");
    std::fs::write(&not_a_certificate, "not a certificate\n").expect("written");
    let missing = dir.path().join("missing.pem");
    for (file, expected) in [
        (
            &not_a_certificate,
            "no -----BEGIN CERTIFICATE----- block found",
        ),
        (&missing, "No such file"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
            .arg("run")
            .arg("--module-ca-file")
            .arg(file)
            .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
            .output()
            .expect("the binary runs");
        assert_eq!(out.status.code(), Some(2), "{}", file.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("--module-ca-file {}", file.display()))
                && stderr.contains(expected),
            "{stderr}"
        );
    }
}
