//! The operator image, as `scripts/image` builds it without pulling a base image: an OCI image
//! layout of the binary (here the test build, stripped of debug sections), its shared libraries
//! and CA certificates from this machine's Debian packages. The test pushes it to the testkit's
//! real registry with the script, pulls it back by digest, and runs `crd` and `render` inside it:
//! with podman when podman can start a container here, else in the unpacked root filesystem
//! under chroot in new mount, PID and network namespaces as user 65532 (it prints which).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cuebe_testkit::crane::crane_binary;
use cuebe_testkit::oci_registry::{LocalRegistry, REGISTRY_VERSION};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A blob of the layout by digest, re-hashed (coreutils' sha256sum): what the layout says it is.
fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    let sum = Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("sha256sum");
    assert!(
        text(&sum.stdout).starts_with(hex),
        "blob {digest} does not hash to its name: {}",
        text(&sum.stdout)
    );
    std::fs::read(&path).expect("the blob is there")
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON")
}

/// How `crd` and `render` were run inside the image.
enum Inside {
    Podman,
    Chroot(PathBuf),
}

impl Inside {
    fn run(&self, reference: &str, input_dir: &Path, args: &[&str]) -> Output {
        match self {
            Inside::Podman => Command::new("podman")
                .args(["run", "--rm", "--network=none", "--read-only", "-v"])
                .arg(format!("{}:/in:ro", input_dir.display()))
                .arg(reference)
                .args(args)
                .output()
                .expect("podman runs"),
            Inside::Chroot(root) => Command::new("unshare")
                .args(["--mount", "--pid", "--net", "--fork"])
                .arg(format!("--mount-proc={}", root.join("proc").display()))
                .args(["chroot", "--userspec=65532:65532"])
                .arg(root)
                .arg("/usr/local/bin/webservice-operator")
                .args(args)
                .output()
                .expect("unshare runs"),
        }
    }
}

/// Podman, when it is installed and can start this image here; why not otherwise.
fn podman(reference: &str) -> Result<(), String> {
    let pull = Command::new("podman")
        .args(["pull", "--tls-verify=false", "--quiet", reference])
        .output()
        .map_err(|e| format!("podman is not installed ({e})"))?;
    if !pull.status.success() {
        return Err(format!("podman pull failed: {}", text(&pull.stderr).trim()));
    }
    // 125-127: podman or the OCI runtime could not start the container at all (a sandbox
    // without the capabilities it needs); the operator's own exit codes are 0-4.
    let probe = Command::new("podman")
        .args(["run", "--rm", "--network=none", reference, "--help"])
        .output()
        .map_err(|e| e.to_string())?;
    match probe.status.code() {
        Some(0) => Ok(()),
        _ => Err(format!(
            "podman cannot start a container on this machine: {}",
            text(&probe.stderr).trim()
        )),
    }
}

#[test]
fn the_image_is_built_without_a_base_pushed_pulled_and_runs_crd_and_render() {
    let binary = env!("CARGO_BIN_EXE_webservice-operator");
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let registry = LocalRegistry::start().expect("registry");
    let crane = crane_binary().expect("crane builds");
    let reference = format!("{}/cuebe/webservice-operator:smoke", registry.host());

    // The script and the testkit pin the same go-containerregistry.
    let script = std::fs::read_to_string(repo().join("scripts/image")).expect("scripts/image");
    assert!(
        script.contains(&format!("CRANE_VERSION={REGISTRY_VERSION}")),
        "scripts/image pins another crane than the testkit's {REGISTRY_VERSION}"
    );

    let build = Command::new(repo().join("scripts/image"))
        .args([
            "--binary", binary, "--tag", "smoke", "--push", &reference, "--out",
        ])
        .arg(&layout)
        .env("CRANE", &crane)
        .output()
        .expect("scripts/image runs");
    assert!(
        build.status.success(),
        "scripts/image: {}",
        text(&build.stderr)
    );
    let stdout = text(&build.stdout);
    let digest = stdout
        .lines()
        .last()
        .expect("the digest")
        .trim()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{stdout}");

    // The layout: index → manifest → config and one layer, each blob what its digest says.
    let index = json(&std::fs::read(layout.join("index.json")).expect("index.json"));
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "smoke"
    );
    let manifest = json(&blob(&layout, &digest));
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().expect("config"),
    ));
    assert_eq!(config["config"]["User"], "65532:65532", "runs as non-root");
    assert_eq!(
        config["config"]["Entrypoint"][0],
        "/usr/local/bin/webservice-operator"
    );
    assert_eq!(config["os"], "linux");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer, no base image: {layers:?}");
    blob(&layout, layers[0]["digest"].as_str().expect("layer digest"));

    // The registry serves what was pushed, by the same digest.
    let remote_digest = Command::new(&crane)
        .args(["digest", &reference])
        .output()
        .expect("crane digest");
    assert_eq!(
        text(&remote_digest.stdout).trim(),
        digest,
        "{}",
        text(&remote_digest.stderr)
    );

    // Pulled back and unpacked: the root filesystem holds the binary, the loader, libc and the
    // CA bundle, and the list of Debian packages they came from.
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("mkdir");
    let pulled = format!("{}/cuebe/webservice-operator@{digest}", registry.host());
    let export = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" export "$1" - | tar -x -C "$2""#)
        .arg(&crane)
        .arg(&pulled)
        .arg(&root)
        .output()
        .expect("crane export");
    assert!(export.status.success(), "{}", text(&export.stderr));
    for file in [
        "usr/local/bin/webservice-operator",
        "lib64/ld-linux-x86-64.so.2",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
    ] {
        assert!(root.join(file).is_file(), "{file} is not in the image");
    }
    let packages = std::fs::read_to_string(
        root.join("usr/share/doc/webservice-operator-image/debian-packages.txt"),
    )
    .expect("the package list");
    assert!(packages.contains(" libc6 "), "{packages}");

    // crd and render inside the image print what the binary prints outside it.
    let input = dir.path().join("in");
    std::fs::create_dir(&input).expect("mkdir");
    std::fs::copy(
        repo().join("examples/webservices/simple.yaml"),
        input.join("simple.yaml"),
    )
    .expect("copy");
    let inside = match podman(&pulled) {
        Ok(()) => {
            eprintln!("running crd and render inside the image with podman");
            Inside::Podman
        }
        Err(why) => {
            eprintln!(
                "{why}; running crd and render inside the image's unpacked root filesystem instead \
                 (chroot in new mount, PID and network namespaces, as user 65532)"
            );
            // The same input at the same path inside.
            std::fs::create_dir_all(root.join("in")).expect("mkdir");
            std::fs::copy(input.join("simple.yaml"), root.join("in/simple.yaml")).expect("copy");
            Inside::Chroot(root.clone())
        }
    };
    let outside = |args: &[&str]| {
        let out = Command::new(binary)
            .args(args)
            .current_dir(&input)
            .output()
            .expect("binary");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let crd = inside.run(&pulled, &input, &["crd"]);
    assert!(
        crd.status.success(),
        "crd inside the image: {}",
        text(&crd.stderr)
    );
    assert!(text(&crd.stdout) == outside(&["crd"]), "crd differs inside");
    let render = inside.run(&pulled, &input, &["render", "-f", "/in/simple.yaml"]);
    assert!(
        render.status.success(),
        "render inside the image (no network): {}",
        text(&render.stderr)
    );
    assert!(
        text(&render.stdout) == outside(&["render", "-f", "simple.yaml"]),
        "render differs inside"
    );
    // Podman keeps what it pulled (also when it then could not run it).
    let _ = Command::new("podman").args(["rmi", "-f", &pulled]).output();
}
