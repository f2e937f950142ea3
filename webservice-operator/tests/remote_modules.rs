//! Published modules fetched from a registry that lies (content is re-hashed, never trusted),
//! and served from image layouts written by the real `cue mod publish --out` with no registry
//! at all (`--vendored-modules`).
#![allow(clippy::unwrap_used)]

#[path = "support/module_variant.rs"]
mod module_variant;
use module_variant::module_variant;

use std::path::Path;
use std::process::Command;

use cuebe::module::OciReference;
use cuebe::remote::{FetchError, ModuleFetcher, Verification};
use cuebe::trust::{ModulePolicy, SourceRule};
use cuebe_testkit::cosign::SigningKey;
use cuebe_testkit::oci_registry::{
    LocalRegistry, Tamper, TamperingRegistry, merge_layouts, publish_module, write_module_layout,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_serving_wrong_bytes_for_a_digest_is_refused_and_nothing_is_cached() {
    let registry = LocalRegistry::start().unwrap();
    let platform = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cue/platform");
    let reference = publish_module(&registry, &platform, "v1.0.0").unwrap();
    for tamper in [Tamper::Blobs, Tamper::Manifests] {
        let evil = TamperingRegistry::start(&registry, tamper).await.unwrap();
        let moved =
            OciReference::parse(&reference.replace(&registry.host(), &evil.host())).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let fetcher = ModuleFetcher::new(Some(cache.path().to_path_buf()));
        let err = fetcher.fetch(&moved, "./webservice").await.unwrap_err();
        assert_eq!(err.reason(), "DigestMismatch", "{tamper:?}: {err}");
        match &err {
            FetchError::DigestMismatch { expected, got, .. } => assert_ne!(expected, got),
            other => panic!("{tamper:?}: {other}"),
        }
        assert!(
            fetcher.cached(&moved, "./webservice").is_none(),
            "{tamper:?}: nothing cached"
        );
        let cached_files = walk(cache.path());
        assert!(cached_files.is_empty(), "{tamper:?}: {cached_files:?}");
    }
    // The same digest from the honest registry is fine.
    let fetcher = ModuleFetcher::new(None);
    let honest = OciReference::parse(&reference).unwrap();
    assert!(fetcher.fetch(&honest, "./webservice").await.is_ok());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Where a vendored module claims to come from: a registry nobody listens on (port 1 refuses at
/// once), so any request to it would fail the test with `FetchFailed`.
const NO_REGISTRY: &str = "127.0.0.1:1/platform.example.com/platform";

fn platform() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cue/platform")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_vendored_by_cue_mod_publish_out_is_served_without_a_registry_with_the_same_checks()
 {
    let vendored = tempfile::tempdir().unwrap();
    let v1_layout = vendored.path().join("platform-v1.0.0");
    let digest = write_module_layout(&platform(), "v1.0.0", &v1_layout).unwrap();
    let pinned = OciReference::parse(&format!("oci://{NO_REGISTRY}@{digest}")).unwrap();

    // The same files published to a registry have the same digest: a vendored module is the
    // module, not a copy of it.
    let registry = LocalRegistry::start().unwrap();
    let published = publish_module(&registry, &platform(), "v1.0.0").unwrap();
    assert!(published.ends_with(&digest), "{published} vs {digest}");
    let from_registry = ModuleFetcher::new(None)
        .fetch(&OciReference::parse(&published).unwrap(), "./webservice")
        .await
        .unwrap();

    let cache = tempfile::tempdir().unwrap();
    let fetcher = ModuleFetcher::new(Some(cache.path().to_path_buf()))
        .with_vendored_modules(vendored.path())
        .unwrap();
    let module = fetcher.fetch(&pinned, "./webservice").await.unwrap();
    assert_eq!(module.digest(), from_registry.digest());
    assert_eq!(fetcher.vendored_layout(&digest), Some(v1_layout.clone()));
    assert!(fetcher.cached(&pinned, "./webservice").is_some());
    // Served from the layout, not copied into the cache.
    assert!(walk(cache.path()).is_empty(), "{:?}", walk(cache.path()));

    // A rule with keys: the layout holds no signature, so the module is refused, saying where
    // the signature is looked for; the registry is never asked.
    let key = SigningKey::generate();
    let policy = ModulePolicy {
        sources: vec![SourceRule {
            pattern: "127.0.0.1:1/*".into(),
            keys: vec![key.public_pem()],
            ..SourceRule::default()
        }],
    };
    let err = fetcher
        .fetch_trusted(&pinned, "./webservice", &policy)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "SignatureInvalid", "{err}");
    let message = err.to_string();
    assert!(
        message.contains("no signature found")
            && message.contains("vendored in")
            && message.contains(&cuebe::trust::signature_tag(&digest)),
        "{message}"
    );
    // Signed into the layout (the cosign tag as `skopeo copy` writes it): verified offline.
    key.sign_layout(&v1_layout, NO_REGISTRY, &digest).unwrap();
    let fresh = ModuleFetcher::new(None)
        .with_vendored_modules(vendored.path())
        .unwrap();
    let (_, verification) = fresh
        .fetch_trusted(&pinned, "./webservice", &policy)
        .await
        .unwrap();
    let key_id = cuebe::trust::PublicKey::from_pem(&key.public_pem())
        .unwrap()
        .id()
        .to_string();
    assert_eq!(verification, Verification::Signed { key: key_id });
    // A signature by another key in the layout does not count.
    let stranger = SigningKey::generate();
    let theirs = ModulePolicy {
        sources: vec![SourceRule {
            pattern: "127.0.0.1:1/*".into(),
            keys: vec![stranger.public_pem()],
            ..SourceRule::default()
        }],
    };
    let err = ModuleFetcher::new(None)
        .with_vendored_modules(vendored.path())
        .unwrap()
        .fetch_trusted(&pinned, "./webservice", &theirs)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("not made by any key the policy lists"),
        "{err}"
    );
    // The source policy still judges the reference's registry and repository.
    let denied = ModulePolicy {
        sources: vec![SourceRule {
            pattern: "127.0.0.1:1/*".into(),
            deny: true,
            ..SourceRule::default()
        }],
    };
    let err = fresh
        .fetch_trusted(&pinned, "./webservice", &denied)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "SourceDenied", "{err}");

    // Several modules in one layout: each is served by its digest.
    let v2 = module_variant("1.1.0");
    let v2_layout = vendored.path().join("v2-alone");
    let v2_digest = write_module_layout(v2.path(), "v1.1.0", &v2_layout).unwrap();
    let merged = tempfile::tempdir().unwrap();
    let both = merged.path().join("platform");
    merge_layouts(&[&v1_layout, &v2_layout], &both).unwrap();
    let fetcher = ModuleFetcher::new(None)
        .with_vendored_modules(merged.path())
        .unwrap();
    for d in [&digest, &v2_digest] {
        let r = OciReference::parse(&format!("oci://{NO_REGISTRY}@{d}")).unwrap();
        fetcher.fetch(&r, "./webservice").await.unwrap();
        assert_eq!(fetcher.vendored_layout(d), Some(both.clone()));
    }

    // A vendored zip with one byte flipped is refused as DigestMismatch (not FetchFailed: the
    // network is not tried instead), and nothing is used or cached.
    let tampered = tempfile::tempdir().unwrap();
    let layout = tampered.path().join("platform");
    write_module_layout(&platform(), "v1.0.0", &layout).unwrap();
    let raw = std::fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let zip_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let zip_path = layout
        .join("blobs/sha256")
        .join(&zip_digest["sha256:".len()..]);
    let mut zip = std::fs::read(&zip_path).unwrap();
    zip[40] ^= 0xff;
    std::fs::write(&zip_path, zip).unwrap();
    let fetcher = ModuleFetcher::new(None)
        .with_vendored_modules(tampered.path())
        .unwrap();
    let err = fetcher.fetch(&pinned, "./webservice").await.unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch", "{err}");
    assert!(err.to_string().contains("the module zip"), "{err}");
    assert!(fetcher.cached(&pinned, "./webservice").is_none());

    // A directory without a layout is refused when the fetcher is made.
    let empty = tempfile::tempdir().unwrap();
    let err = ModuleFetcher::new(None)
        .with_vendored_modules(empty.path())
        .unwrap_err();
    assert!(
        err.to_string().contains("holds no OCI image layout"),
        "{err}"
    );
}

fn operator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
}

#[test]
fn render_uses_a_vendored_module_and_run_refuses_a_directory_without_layouts() {
    let vendored = tempfile::tempdir().unwrap();
    let v2 = module_variant("1.1.0");
    let digest =
        write_module_layout(v2.path(), "v1.1.0", &vendored.path().join("platform")).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/webservices/simple.yaml");
    let out = operator()
        .args(["render", "-f"])
        .arg(&example)
        .args(["--module", &format!("oci://{NO_REGISTRY}@{digest}")])
        .arg("--vendored-modules")
        .arg(vendored.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("@{digest} (Unverified")) && stderr.contains("vendored in"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kind: Deployment"));

    let empty = tempfile::tempdir().unwrap();
    for command in ["run", "dev"] {
        let out = operator()
            .arg(command)
            .arg("--vendored-modules")
            .arg(empty.path())
            // Never reach a cluster: the directory is checked first.
            .env("KUBECONFIG", empty.path().join("no-such-kubeconfig"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("--vendored-modules") && stderr.contains("holds no OCI image layout"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn approve_prints_the_approval_of_a_digest_and_refuses_a_tag() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let out = operator()
        .args([
            "approve",
            &format!("oci://ghcr.io/acme/platform.example.com/platform@{digest}"),
            "--note",
            "v1.1.0, reviewed in PLAT-42",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let approval: serde_json::Value = serde_norway::from_slice(&out.stdout).unwrap();
    assert_eq!(approval["apiVersion"], "cuebe.dev/v1alpha1");
    assert_eq!(approval["kind"], "PlatformModuleApproval");
    assert_eq!(approval["metadata"]["name"], "platform-abababababab");
    assert_eq!(approval["spec"]["digest"], digest.as_str());
    assert_eq!(approval["spec"]["note"], "v1.1.0, reviewed in PLAT-42");

    let out = operator()
        .args(["approve", "oci://ghcr.io/acme/platform:v1.0.0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("give a pinned reference"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_module_that_depends_on_the_standard_library_renders_from_its_digest_offline() {
    // `cue mod publish` needs the module's dependencies resolvable: the testkit publishes the
    // standard library to the same registry first. The operator fetches only the platform
    // module by digest; its `deps: "cuebe.dev/lib@v0"` is served by the copy the SDK ships.
    let mut registry = LocalRegistry::start().unwrap();
    let published = publish_module(&registry, &platform(), "v1.0.0").unwrap();
    let module = ModuleFetcher::new(None)
        .fetch(&OciReference::parse(&published).unwrap(), "./webservice")
        .await
        .unwrap();
    assert!(
        module.files()["cue.mod/module.cue"].contains("\"cuebe.dev/lib@v0\""),
        "the published module names the library as a dependency"
    );
    // Nothing is fetched while rendering: the registry is gone.
    registry.stop();
    let published_source = module.as_ref().clone();
    let renderer =
        cuebe::CueRenderer::new(cuebe::ModuleSet::single("1.0.0", published_source.clone()));
    let spec = serde_json::json!({"image": "registry.example.com/web:1.4.2",
        "resources": {"cpu": "250m", "memory": "256Mi"}});
    let plan = renderer
        .render_blocking(&cuebe::renderer::RenderInput {
            instance: cuebe::instance::Instance {
                name: "web".into(),
                namespace: "apps".into(),
                ..Default::default()
            },
            spec: spec.clone(),
            ..Default::default()
        })
        .unwrap();
    let graph = plan.graph();
    assert!(graph.violations.is_empty(), "{:?}", graph.violations);
    assert!(graph.nodes.iter().any(|n| n.id == "deployment"));
    // The library's packs run in the published module: an unhardened container added by a
    // module change is caught (a policy the platform gets from the library).
    let insecure = published_source.with_files([(
        "webservice/zz_sidecar.cue",
        "package webservice\nnodes: deployment: object: spec: template: spec: initContainers: \
         [{name: \"sidecar\", image: \"registry.example.com/s:1\"}]\n",
    )]);
    let plan = cuebe::CueRenderer::new(cuebe::ModuleSet::single("1.0.0", insecure))
        .render_blocking(&cuebe::renderer::RenderInput {
            instance: cuebe::instance::Instance {
                name: "web".into(),
                namespace: "apps".into(),
                ..Default::default()
            },
            spec,
            ..Default::default()
        })
        .unwrap();
    let rules: Vec<&str> = plan
        .graph()
        .violations
        .iter()
        .map(|v| v.rule.as_str())
        .collect();
    assert_eq!(
        rules,
        [
            "read-only-root-filesystem",
            "drop-all-capabilities",
            "limits-required"
        ],
        "the pod's securityContext covers runAsNonRoot and seccomp"
    );
}
