//! Published modules fetched from a registry that lies: content is re-hashed, never trusted.
#![allow(clippy::unwrap_used)]

use cuebe::module::OciReference;
use cuebe::remote::{FetchError, ModuleFetcher};
use cuebe_testkit::oci_registry::{LocalRegistry, Tamper, TamperingRegistry, publish_module};

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
