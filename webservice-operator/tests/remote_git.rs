//! Platform modules from git repositories (`platformRef.git`), fetched with gix from a real
//! `git daemon` and from a `git+file://` repository: by branch, by tag and by commit, and a
//! cached commit without the server.
#![allow(clippy::unwrap_used)]

#[path = "support/module_variant.rs"]
mod module_variant;
use module_variant::module_variant;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cuebe::module::{GitReference, ModuleSource};
use cuebe::remote::ModuleFetcher;
use cuebe_testkit::git_server::{GitDaemon, GitRepo};

fn platform() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cue/platform")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_is_fetched_from_git_by_branch_tag_and_commit_and_a_cached_commit_needs_no_server()
{
    let repo = GitRepo::new("platform").unwrap();
    let first = repo
        .commit_module("main", &platform(), "cue/platform", "platform 1.0.0")
        .unwrap();
    repo.tag("v1.0.0", &first, true).unwrap();
    repo.tag("light", &first, false).unwrap();
    let mut daemon = GitDaemon::start(&repo).unwrap();
    let expected = ModuleSource::from_dir(platform(), "./webservice")
        .unwrap()
        .digest()
        .to_string();
    let at = |url: &str, r: &str| {
        GitReference::parse(&format!("{url}?ref={r}&dir=cue/platform")).unwrap()
    };
    let cache = tempfile::tempdir().unwrap();
    // Refresh 0: every fetch by branch or tag asks the server.
    let fetcher =
        ModuleFetcher::new(Some(cache.path().to_path_buf())).with_git_refresh(Duration::ZERO);

    let started = Instant::now();
    let by_branch = fetcher
        .fetch_git(&at(&daemon.url(), "main"), "./webservice")
        .await
        .unwrap();
    let cold = started.elapsed();
    assert_eq!(by_branch.resolved.commit, first);
    assert!(by_branch.moving);
    assert_eq!(
        by_branch.module.digest(),
        expected,
        "the same module as its files"
    );
    assert_eq!(
        by_branch.resolved.to_string(),
        format!("{}@{first}?dir=cue/platform", daemon.url())
    );

    let started = Instant::now();
    let again = fetcher
        .fetch_git(&at(&daemon.url(), "main"), "./webservice")
        .await
        .unwrap();
    let warm_branch = started.elapsed();
    assert_eq!(again.resolved.commit, first);

    for tag in ["v1.0.0", "refs/tags/v1.0.0", "light"] {
        let by_tag = fetcher
            .fetch_git(&at(&daemon.url(), tag), "./webservice")
            .await
            .unwrap();
        assert_eq!(by_tag.resolved.commit, first, "{tag} peels to its commit");
        assert!(by_tag.moving, "{tag}");
    }
    let by_commit = fetcher
        .fetch_git(&at(&daemon.url(), &first), "./webservice")
        .await
        .unwrap();
    assert!(!by_commit.moving);
    assert_eq!(by_commit.module.digest(), expected);

    // The branch moves: the next resolution sees the new commit.
    let changed = module_variant("1.1.0");
    let second = repo
        .commit_module("main", changed.path(), "cue/platform", "platform 1.1.0")
        .unwrap();
    let moved = fetcher
        .fetch_git(&at(&daemon.url(), "main"), "./webservice")
        .await
        .unwrap();
    assert_eq!(moved.resolved.commit, second);
    assert_ne!(moved.module.digest(), expected);

    // Within the refresh interval, a branch is not asked again: the commit last seen is used.
    let patient = ModuleFetcher::new(Some(cache.path().to_path_buf()))
        .with_git_refresh(Duration::from_secs(3600));
    let seen = patient
        .fetch_git(&at(&daemon.url(), "main"), "./webservice")
        .await
        .unwrap();
    assert_eq!(seen.resolved.commit, second);
    let third = repo
        .commit_module(
            "main",
            module_variant("1.2.0").path(),
            "cue/platform",
            "platform 1.2.0",
        )
        .unwrap();
    let still = patient
        .fetch_git(&at(&daemon.url(), "main"), "./webservice")
        .await
        .unwrap();
    assert_eq!(still.resolved.commit, second, "not due for a refresh yet");

    // What does not exist fails with the reason.
    let err = fetcher
        .fetch_git(&at(&daemon.url(), "no-such-branch"), "./webservice")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(
        err.to_string()
            .contains("has no branch or tag no-such-branch"),
        "{err}"
    );
    let wrong_dir =
        GitReference::parse(&format!("{}?ref=main&dir=cue/nothing", daemon.url())).unwrap();
    let err = fetcher
        .fetch_git(&wrong_dir, "./webservice")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NotACueModule", "{err}");
    assert!(err.to_string().contains("has no cue/nothing"), "{err}");
    let no_module = GitReference::parse(&format!("{}?ref=main&dir=cue", daemon.url())).unwrap();
    let err = fetcher
        .fetch_git(&no_module, "./webservice")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NotACueModule", "{err}");
    assert!(err.to_string().contains("no cue.mod/module.cue"), "{err}");

    // The server goes away. A new process (nothing in memory) with the same disk cache serves
    // a cached commit without it; a branch needs the server, and says so.
    daemon.stop();
    let offline = ModuleFetcher::new(Some(cache.path().to_path_buf()));
    let started = Instant::now();
    let cached = offline
        .fetch_git(&at(&daemon.url(), &first), "./webservice")
        .await
        .unwrap();
    let warm_commit_from_disk = started.elapsed();
    assert_eq!(cached.module.digest(), expected);
    assert!(
        offline
            .cached_git(&moved.resolved, "./webservice")
            .is_some_and(|m| m.digest() == moved.module.digest())
    );
    let err = offline
        .fetch_git(&at(&daemon.url(), "main"), "./webservice")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(err.is_transient());

    // git+file:// reads the bare repository through the local git upload-pack.
    let file_cache = tempfile::tempdir().unwrap();
    let from_file = ModuleFetcher::new(Some(file_cache.path().to_path_buf()))
        .fetch_git(&at(&repo.file_url(), "main"), "./webservice")
        .await
        .unwrap();
    assert_eq!(from_file.resolved.commit, third);
    assert!(from_file.resolved.to_string().starts_with("git+file:///"));

    // HTTPS goes through gix's reqwest client on rustls: a server that is not there is a
    // FetchFailed naming the transport's error, not a panic of the blocking fetch.
    let nowhere = GitReference::parse("git+https://127.0.0.1:1/platform.git?ref=main").unwrap();
    let err = offline
        .fetch_git(&nowhere, "./webservice")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(!err.to_string().contains("did not finish"), "{err}");

    eprintln!(
        "git daemon, module cue/platform: cold fetch by branch {cold:?}, warm fetch by branch (ls-refs, no pack) {warm_branch:?}, cached commit from disk without a server {warm_commit_from_disk:?}"
    );
}
