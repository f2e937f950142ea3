//! Platform modules from git repositories (`platformRef.git`), fetched with gix from a real
//! `git daemon`, a `git+file://` repository and `git http-backend` over HTTPS: by branch, by tag
//! and by commit, a cached commit without the server, and commits signed with SSH keys checked
//! against the policy's `allowedSigners`.
#![allow(clippy::unwrap_used)]

#[path = "support/module_variant.rs"]
mod module_variant;
use module_variant::module_variant;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cuebe::module::{GitReference, ModuleSource};
use cuebe::remote::{ModuleFetcher, Verification};
use cuebe::trust::{ModulePolicy, SourceRule};
use cuebe_testkit::git_server::{GitDaemon, GitHttpsServer, GitRepo, SshSigningKey};

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

/// `git+https://` against the real `git http-backend` behind TLS from the testkit's PKI: a
/// fetcher given the CA fetches; one without it is refused at the handshake, with a
/// `FetchFailed` that says so, and nothing is used.
#[tokio::test(flavor = "multi_thread")]
async fn git_over_https_is_fetched_with_the_ca_and_refused_without_it() {
    let repo = GitRepo::new("platform").unwrap();
    let first = repo
        .commit_module("main", &platform(), "cue/platform", "platform 1.0.0")
        .unwrap();
    let server = GitHttpsServer::start(&repo).unwrap();
    let reference =
        GitReference::parse(&format!("{}?ref=main&dir=cue/platform", server.url())).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let untrusting = ModuleFetcher::new(Some(cache.path().to_path_buf()));
    let err = untrusting
        .fetch_git(&reference, "./webservice")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "the refusal names the certificate: {message}"
    );

    let trusting = ModuleFetcher::new(Some(cache.path().to_path_buf()))
        .with_ca_certificates(server.ca_pem().as_bytes())
        .unwrap();
    let started = Instant::now();
    let fetched = trusting
        .fetch_git(&reference, "./webservice")
        .await
        .unwrap();
    let cold = started.elapsed();
    assert_eq!(fetched.resolved.commit, first);
    assert_eq!(
        fetched.resolved.to_string(),
        format!("{}@{first}?dir=cue/platform", server.url())
    );
    assert_eq!(
        fetched.module.digest(),
        ModuleSource::from_dir(platform(), "./webservice")
            .unwrap()
            .digest()
    );
    // A CA file that holds no certificate is refused when the fetcher is built.
    let err = ModuleFetcher::new(None)
        .with_ca_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        .unwrap_err();
    assert!(
        err.to_string().starts_with("extra CA certificates: "),
        "{err}"
    );
    eprintln!(
        "git over https (git http-backend, rustls): cold fetch by branch {cold:?}; without the CA: {message}"
    );
}

/// Signed commits against a policy with `allowedSigners`, over HTTPS: a commit signed by an
/// allowed key is used and names its signer; the branch moved to another signed commit is
/// followed; moved to an unsigned commit, or one signed by a stranger, it is refused with
/// `SignatureInvalid` while the last good commit stays usable (from the cache, re-verified);
/// a signed annotated tag vouches for the commit it names; a commit signed by the real `git
/// commit -S` verifies too.
#[tokio::test(flavor = "multi_thread")]
async fn only_commits_signed_by_an_allowed_signer_are_used() {
    let ours = SshSigningKey::generate("platform@acme.example");
    let stranger = SshSigningKey::generate("mallory@evil.example");
    let repo = GitRepo::new("platform").unwrap();
    let first = repo
        .commit_module_signed("main", &platform(), "cue/platform", "platform 1.0.0", &ours)
        .unwrap();
    let mut server = GitHttpsServer::start(&repo).unwrap();
    let url = server.url();
    let at = |r: &str| GitReference::parse(&format!("{url}?ref={r}&dir=cue/platform")).unwrap();
    let policy = ModulePolicy {
        sources: vec![SourceRule {
            pattern: "git+https://127.0.0.1:*/*".into(),
            allowed_signers: vec![ours.allowed_signer()],
            ..SourceRule::default()
        }],
    };
    let signed_by_ours = Verification::Signed {
        key: format!("{} (platform@acme.example)", ours.fingerprint()),
    };
    let cache = tempfile::tempdir().unwrap();
    let fetcher = ModuleFetcher::new(Some(cache.path().to_path_buf()))
        .with_git_refresh(Duration::ZERO)
        .with_ca_certificates(server.ca_pem().as_bytes())
        .unwrap();
    let fetch = |r: GitReference| {
        let (fetcher, policy) = (&fetcher, &policy);
        async move { fetcher.fetch_git_trusted(&r, "./webservice", policy).await }
    };

    let (good, verification) = fetch(at("main")).await.unwrap();
    assert_eq!(good.resolved.commit, first);
    assert_eq!(verification, signed_by_ours);

    // Moved to another signed commit: followed.
    let v110 = module_variant("1.1.0");
    let second = repo
        .commit_module_signed("main", v110.path(), "cue/platform", "platform 1.1.0", &ours)
        .unwrap();
    let (moved, verification) = fetch(at("main")).await.unwrap();
    assert_eq!(moved.resolved.commit, second);
    assert_eq!(verification, signed_by_ours);

    // Moved to an unsigned commit: refused; the last good commit is still there, verified.
    let v120 = module_variant("1.2.0");
    let unsigned = repo
        .commit_module(
            "main",
            v120.path(),
            "cue/platform",
            "platform 1.2.0, unsigned",
        )
        .unwrap();
    let err = fetch(at("main")).await.unwrap_err();
    assert_eq!(err.reason(), "SignatureInvalid", "{err}");
    assert!(!err.is_transient());
    assert!(
        err.to_string()
            .contains(&format!("commit {unsigned}: not signed")),
        "{err}"
    );
    let (last_good, verification) = fetcher
        .cached_git_trusted(&moved.resolved, "./webservice", &policy)
        .expect("the last good commit, from the cache");
    assert_eq!(last_good.digest(), moved.module.digest());
    assert_eq!(verification, signed_by_ours);

    // Moved to a commit signed by a key the policy does not list: refused, naming the key.
    let v130 = module_variant("1.3.0");
    let by_stranger = repo
        .commit_module_signed(
            "main",
            v130.path(),
            "cue/platform",
            "platform 1.3.0",
            &stranger,
        )
        .unwrap();
    let err = fetch(at("main")).await.unwrap_err();
    assert_eq!(err.reason(), "SignatureInvalid", "{err}");
    assert!(
        err.to_string().contains(&format!(
            "signed by key {}, which no allowedSigners line of the policy lists",
            stranger.fingerprint()
        )),
        "{err}"
    );

    // An annotated tag signed by an allowed key vouches for the (unsigned) commit it names; an
    // unsigned tag does not.
    repo.tag_signed("v1.2.0", &unsigned, &ours).unwrap();
    repo.tag("v1.3.0", &by_stranger, true).unwrap();
    let (tagged, verification) = fetch(at("v1.2.0")).await.unwrap();
    assert_eq!(tagged.resolved.commit, unsigned);
    assert_eq!(verification, signed_by_ours);
    let err = fetch(at("v1.3.0")).await.unwrap_err();
    assert_eq!(err.reason(), "SignatureInvalid", "{err}");
    assert!(
        err.to_string().contains(&format!(
            "commit {by_stranger}: signed by key {}",
            stranger.fingerprint()
        )) && err.to_string().contains("tag v1.3.0: not signed"),
        "{err}"
    );

    // What the real git writes with `commit -S` and gpg.format=ssh verifies the same way.
    if which("ssh-keygen") {
        let v140 = module_variant("1.4.0");
        let by_git = repo
            .commit_module_signed_by_git(
                "main",
                v140.path(),
                "cue/platform",
                "platform 1.4.0, signed by git",
                &ours,
            )
            .unwrap();
        let (fetched, verification) = fetch(at("main")).await.unwrap();
        assert_eq!(fetched.resolved.commit, by_git);
        assert_eq!(verification, signed_by_ours);
    } else {
        eprintln!("ssh-keygen is not installed: git commit -S was not tried");
    }

    // Offline: a new process with the same cache verifies a pinned signed commit from the
    // cached repository's objects, without the server.
    server.stop();
    let offline = ModuleFetcher::new(Some(cache.path().to_path_buf()));
    let (pinned, verification) = offline
        .fetch_git_trusted(&at(&first), "./webservice", &policy)
        .await
        .unwrap();
    assert_eq!(pinned.resolved.commit, first);
    assert_eq!(verification, signed_by_ours);

    // A rule with only cosign keys never accepts a git source.
    let cosign_only = ModulePolicy {
        sources: vec![SourceRule {
            pattern: "git+https://127.0.0.1:*/*".into(),
            keys: vec![cuebe_testkit::cosign::SigningKey::generate().public_pem()],
            ..SourceRule::default()
        }],
    };
    let err = offline
        .fetch_git_trusted(&at(&first), "./webservice", &cosign_only)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "SignatureInvalid", "{err}");
    assert!(err.to_string().contains("lists only cosign keys"), "{err}");
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
