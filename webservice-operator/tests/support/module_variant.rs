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
