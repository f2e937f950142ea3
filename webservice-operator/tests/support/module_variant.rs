//! Copies of the platform module for tests that publish several versions of it.

/// A copy of the platform module with one more comment: the same objects, another digest.
pub fn module_variant(comment: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cue/platform");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", from.display()))
        .arg(dir.path())
        .status()
        .expect("cp runs");
    assert!(status.success());
    let main = dir.path().join("webservice/main.cue");
    let text = std::fs::read_to_string(&main).expect("main.cue is readable");
    std::fs::write(&main, format!("{text}\n// {comment}\n")).expect("main.cue is writable");
    dir
}

/// [`module_variant`] with `from` replaced by `to` in the module's `file` (which must contain it,
/// so a moved line fails the test that relies on it rather than publishing an unchanged module).
#[allow(dead_code)] // each test crate includes this file and uses part of it
pub fn module_variant_with(comment: &str, file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = module_variant(comment);
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).expect("the module file is readable");
    let patched = text.replace(from, to);
    assert_ne!(text, patched, "{file} no longer contains {from:?}");
    std::fs::write(&path, patched).expect("the module file is writable");
    dir
}

/// A release whose policy asks for at least 3 replicas: instances with 2 fail it.
#[allow(dead_code)]
pub fn stricter_policy() -> tempfile::TempDir {
    module_variant_with(
        "stricter policy",
        "policy/input.cue",
        "replicaBounds: {min: 1, max: 20}",
        "replicaBounds: {min: 3, max: 20}",
    )
}
