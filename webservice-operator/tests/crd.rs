//! The committed CRD (`deploy/crd.yaml`) is what `webservice-operator crd` prints.
//! Regenerate with `cargo run -p webservice-operator -- crd > webservice-operator/deploy/crd.yaml`.
use std::process::Command;

#[test]
fn committed_crd_matches_the_types() {
    let out = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
        .arg("crd")
        .output()
        .expect("binary runs");
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crd.yaml"))
            .expect("deploy/crd.yaml");
    assert!(
        committed == String::from_utf8_lossy(&out.stdout),
        "deploy/crd.yaml is stale: cargo run -p webservice-operator -- crd > webservice-operator/deploy/crd.yaml"
    );
}
