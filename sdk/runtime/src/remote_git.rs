//! Platform modules kept in git repositories (`spec.platformRef.git`), fetched with gix (pure
//! Rust; no `git` binary, except that `git+file://` runs the local `git upload-pack` as git
//! itself does) and read from the repository's objects without a checkout.
//!
//! Each repository is fetched into a bare repository in the module cache
//! (`<cache>/git/<sha256 of the repository URL, 32 hex>`), so a later fetch only brings what is
//! new. The `ref` is resolved to a commit, the tree at `dir` is read into memory (only `.cue`
//! files, at most [`MAX_MODULE_BYTES`](crate::module::MAX_MODULE_BYTES)) and becomes a
//! [`ModuleSource`], as a zip from a registry does.
//!
//! - A full commit sha names fixed content: once that commit is in the cached repository, it is
//!   used without the network, like a cached OCI digest.
//! - A branch or tag moves: it is resolved again at most every
//!   [`ModuleFetcher::git_refresh`] (60 s by default); between two resolutions the commit last
//!   seen is used without the network.
//!
//! The module policy (`crate::trust`) matches `git+https://HOST/REPO` (the repository, without
//! `ref` and `dir`). Signed commits are not verified yet: a rule with `keys` that matches a git
//! source refuses it (`SignatureInvalid`), it never lets it through unverified.
//!
//! ```no_run
//! # async fn f() -> Result<(), cuebe::remote::FetchError> {
//! use cuebe::module::GitReference;
//! let fetcher = cuebe::remote::ModuleFetcher::new(Some(cuebe::remote::default_cache_dir()));
//! let reference = GitReference::parse("git+https://git.example.com/acme/platform?ref=main&dir=cue/platform")
//!     .expect("a git reference");
//! let fetched = fetcher.fetch_git(&reference, "./webservice").await?;
//! println!("{} is {}", fetched.resolved, fetched.module.digest());
//! # Ok(()) }
//! ```
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{FetchError, ModuleFetcher, Verification};
use crate::module::{
    GitReference, GitRepository, GitRevision, MAX_MODULE_BYTES, ModuleSource, ResolvedGitReference,
};

/// How often a branch or tag is resolved again by default.
pub const DEFAULT_GIT_REFRESH: Duration = Duration::from_secs(60);

/// Where local tracking refs of fetched repositories are written (never `refs/heads`: the
/// cached repositories are only ever read by commit).
const TRACKING: &str = "refs/cuebe";

/// Modules read, by (repository, commit, dir, package).
type ModuleCache = HashMap<(String, String, String, String), Arc<ModuleSource>>;

/// The git side of a [`ModuleFetcher`]: resolutions of moving refs, modules read, and one lock
/// per repository so that two reconciles do not fetch into the same repository at once.
#[derive(Debug)]
pub(super) struct GitState {
    refresh: Duration,
    /// (repository, ref) → (commit, when it was resolved).
    resolved: Mutex<HashMap<(String, String), (String, Instant)>>,
    modules: Mutex<ModuleCache>,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Default for GitState {
    fn default() -> Self {
        Self {
            refresh: DEFAULT_GIT_REFRESH,
            resolved: Mutex::default(),
            modules: Mutex::default(),
            locks: Mutex::default(),
        }
    }
}

/// A module read from a git repository at a commit.
#[derive(Debug, Clone)]
pub struct GitModule {
    /// The module.
    pub module: Arc<ModuleSource>,
    /// The reference at the commit it was read from:
    /// `git+https://HOST/REPO@<commit>[?dir=PATH]`.
    pub resolved: ResolvedGitReference,
    /// The reference names a branch or tag, which may move: it is worth asking again after
    /// [`ModuleFetcher::git_refresh`].
    pub moving: bool,
}

impl ModuleFetcher {
    /// Resolves branches and tags again at most this often (default [`DEFAULT_GIT_REFRESH`]).
    /// A commit sha is never resolved again.
    ///
    /// ```
    /// use std::time::Duration;
    /// let fetcher = cuebe::remote::ModuleFetcher::new(None).with_git_refresh(Duration::from_secs(10));
    /// assert_eq!(fetcher.git_refresh(), Duration::from_secs(10));
    /// ```
    pub fn with_git_refresh(mut self, every: Duration) -> Self {
        self.git.refresh = every;
        self
    }

    /// How often a branch or tag is resolved again.
    ///
    /// ```
    /// let fetcher = cuebe::remote::ModuleFetcher::new(None);
    /// assert_eq!(fetcher.git_refresh(), cuebe::remote::DEFAULT_GIT_REFRESH);
    /// ```
    pub fn git_refresh(&self) -> Duration {
        self.git.refresh
    }

    /// The module `reference` names, if `policy` trusts its repository: a denied repository is
    /// refused before anything is fetched, and so is one whose rule lists keys (signed commits
    /// are not verified yet, and a rule asking for a signature is never silently skipped).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), cuebe::remote::FetchError> {
    /// use cuebe::module::GitReference;
    /// use cuebe::trust::{ModulePolicy, SourceRule};
    /// let policy = ModulePolicy { sources: vec![SourceRule {
    ///     pattern: "git+https://git.example.com/acme/*".into(), ..SourceRule::default() }] };
    /// let reference = GitReference::parse("git+https://git.example.com/acme/platform?ref=v1.0.0").expect("valid");
    /// let fetcher = cuebe::remote::ModuleFetcher::new(None);
    /// let (fetched, verification) = fetcher.fetch_git_trusted(&reference, "./webservice", &policy).await?;
    /// assert_eq!(verification, cuebe::remote::Verification::Unverified);
    /// # Ok(()) }
    /// ```
    pub async fn fetch_git_trusted(
        &self,
        reference: &GitReference,
        package: &str,
        policy: &crate::trust::ModulePolicy,
    ) -> Result<(GitModule, Verification), FetchError> {
        check_policy(&reference.repository, &reference.to_string(), policy)?;
        Ok((
            self.fetch_git(reference, package).await?,
            Verification::Unverified,
        ))
    }

    /// The module at a resolved commit when the cached repository has it and `policy` still
    /// trusts the repository, without the network: what an instance keeps rendering with when
    /// its git reference cannot be used.
    ///
    /// ```
    /// use cuebe::module::ResolvedGitReference;
    /// let fetcher = cuebe::remote::ModuleFetcher::new(None);
    /// let resolved = ResolvedGitReference::parse(
    ///     "git+https://git.example.com/acme/platform@0123456789abcdef0123456789abcdef01234567",
    /// ).expect("canonical form");
    /// assert!(fetcher.cached_git_trusted(&resolved, "./webservice", &Default::default()).is_none());
    /// ```
    pub fn cached_git_trusted(
        &self,
        resolved: &ResolvedGitReference,
        package: &str,
        policy: &crate::trust::ModulePolicy,
    ) -> Option<(Arc<ModuleSource>, Verification)> {
        check_policy(&resolved.repository, &resolved.to_string(), policy).ok()?;
        Some((
            self.cached_git(resolved, package)?,
            Verification::Unverified,
        ))
    }

    /// The module at a resolved commit, from memory or from the cached repository; never the
    /// network. No policy is applied.
    ///
    /// ```
    /// use cuebe::module::ResolvedGitReference;
    /// let fetcher = cuebe::remote::ModuleFetcher::new(None);
    /// let resolved = ResolvedGitReference::parse(
    ///     "git+file:///nowhere/platform.git@0123456789abcdef0123456789abcdef01234567",
    /// ).expect("canonical form");
    /// assert!(fetcher.cached_git(&resolved, "./webservice").is_none());
    /// ```
    pub fn cached_git(
        &self,
        resolved: &ResolvedGitReference,
        package: &str,
    ) -> Option<Arc<ModuleSource>> {
        let key = module_key(resolved, package);
        if let Some(found) = self.git_modules().get(&key) {
            return Some(found.clone());
        }
        let dir = self.git_repository_dir(&resolved.repository);
        if !dir.exists() {
            return None;
        }
        let repo = open_isolated(&dir).ok()?;
        let commit = gix::ObjectId::from_hex(resolved.commit.as_bytes()).ok()?;
        if !repo.has_object(commit) {
            return None;
        }
        match read_module(&repo, commit, &resolved.dir, package) {
            Ok(module) => {
                let module = Arc::new(module);
                self.git_modules().insert(key, module.clone());
                Some(module)
            }
            Err(error) => {
                tracing::warn!(%error, reference = %resolved, "the cached repository holds no usable module at this commit");
                None
            }
        }
    }

    /// The module `reference` names, with `package` as its entry package. A commit already in
    /// the cached repository, or a branch or tag resolved less than
    /// [`git_refresh`](Self::git_refresh) ago, needs no network; otherwise the repository is
    /// fetched (only what is new) and the ref resolved again. No policy is applied.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), cuebe::remote::FetchError> {
    /// use cuebe::module::GitReference;
    /// let reference = GitReference::parse("git://127.0.0.1:9418/platform.git?ref=main").expect("valid");
    /// let fetched = cuebe::remote::ModuleFetcher::new(None).fetch_git(&reference, "./webservice").await?;
    /// assert!(fetched.moving);
    /// # Ok(()) }
    /// ```
    pub async fn fetch_git(
        &self,
        reference: &GitReference,
        package: &str,
    ) -> Result<GitModule, FetchError> {
        let shown = reference.to_string();
        let failed = |message: String| FetchError::FetchFailed {
            reference: shown.clone(),
            message,
        };
        let repository = reference.repository.to_string();
        let (known, moving) = match &reference.revision {
            GitRevision::Commit(sha) => (Some(sha.clone()), false),
            GitRevision::Name(name) => {
                let fresh = self
                    .git
                    .resolved
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&(repository.clone(), name.clone()))
                    .filter(|(_, at)| at.elapsed() < self.git.refresh)
                    .map(|(commit, _)| commit.clone());
                (fresh, true)
            }
        };
        if let Some(commit) = &known {
            let resolved = reference.resolved(commit.clone());
            if let Some(module) = self.git_modules().get(&module_key(&resolved, package)) {
                return Ok(GitModule {
                    module: module.clone(),
                    resolved,
                    moving,
                });
            }
        }

        if reference.repository.scheme == crate::module::GitScheme::Https {
            // gix's HTTP client (reqwest on rustls) needs the process-wide provider, as the
            // OCI client does; installing it twice is a harmless error.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let dir = self.git_repository_dir(&reference.repository);
        let lock = self
            .git
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(repository.clone())
            .or_default()
            .clone();
        let interrupt = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let work = {
            let (url, revision) = (reference.repository.fetch_url(), reference.revision.clone());
            let (module_dir, package, interrupt) = (
                reference.dir.clone(),
                package.to_string(),
                interrupt.clone(),
            );
            let shown = shown.clone();
            tokio::task::spawn_blocking(move || {
                let _one_fetch_at_a_time = lock.lock().unwrap_or_else(PoisonError::into_inner);
                let repo = open_or_init(&dir).map_err(|message| FetchError::FetchFailed {
                    reference: shown.clone(),
                    message,
                })?;
                let cached = known
                    .as_deref()
                    .and_then(|c| gix::ObjectId::from_hex(c.as_bytes()).ok())
                    .filter(|c| repo.has_object(c));
                let (commit, networked) = match cached {
                    Some(commit) => (commit, false),
                    None => (
                        fetch_revision(&repo, &url, &revision, &interrupt).map_err(|message| {
                            FetchError::FetchFailed {
                                reference: shown.clone(),
                                message,
                            }
                        })?,
                        true,
                    ),
                };
                let module =
                    read_module(&repo, commit, &module_dir, &package).map_err(|message| {
                        FetchError::NotACueModule {
                            reference: shown.clone(),
                            message,
                        }
                    })?;
                Ok::<_, FetchError>((commit.to_string(), module, networked))
            })
        };
        let (commit, module, networked) = match tokio::time::timeout(self.timeout, work).await {
            Err(_) => {
                // The blocking fetch sees the flag between packets and gives up.
                interrupt.store(true, Ordering::Relaxed);
                return Err(failed("the git server did not answer in time".into()));
            }
            Ok(Err(joined)) => return Err(failed(format!("the fetch did not finish: {joined}"))),
            Ok(Ok(result)) => result?,
        };
        if let GitRevision::Name(name) = &reference.revision {
            self.git
                .resolved
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((repository, name.clone()), (commit.clone(), Instant::now()));
        }
        let resolved = reference.resolved(commit);
        let module = Arc::new(module);
        self.git_modules()
            .insert(module_key(&resolved, package), module.clone());
        if networked {
            tracing::info!(reference = %shown, resolved = %resolved, digest = %module.digest(), elapsed_ms = started.elapsed().as_millis() as u64, "fetched platform module");
        }
        Ok(GitModule {
            module,
            resolved,
            moving,
        })
    }

    fn git_modules(&self) -> std::sync::MutexGuard<'_, ModuleCache> {
        self.git
            .modules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `<cache>/git/<32 hex of sha256(repository)>`: named from a hash, so no URL can reach
    /// outside the cache. A fetcher without a disk cache still needs a repository to fetch
    /// into: it uses the temporary directory.
    fn git_repository_dir(&self, repository: &GitRepository) -> PathBuf {
        let base = self.cache_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("cuebe-git-{}", std::process::id()))
        });
        let name = hex::encode(Sha256::digest(repository.to_string().as_bytes()));
        base.join("git").join(&name[..32])
    }
}

fn module_key(resolved: &ResolvedGitReference, package: &str) -> (String, String, String, String) {
    (
        resolved.repository.to_string(),
        resolved.commit.clone(),
        resolved.dir.clone(),
        package.to_string(),
    )
}

/// The policy's word on a git repository; git sources are never signed-checked yet, so a rule
/// asking for keys refuses them.
fn check_policy(
    repository: &GitRepository,
    shown: &str,
    policy: &crate::trust::ModulePolicy,
) -> Result<(), FetchError> {
    use crate::trust::SourceDecision;
    let source = repository.to_string();
    match policy.decide(&source) {
        SourceDecision::Unverified => Ok(()),
        SourceDecision::Denied { pattern } => Err(FetchError::SourceDenied {
            reference: shown.to_string(),
            message: format!("the module policy denies sources matching {pattern:?}"),
        }),
        SourceDecision::NotAllowed => Err(FetchError::SourceDenied {
            reference: shown.to_string(),
            message: format!("no rule of the module policy allows {source}"),
        }),
        SourceDecision::Signed { pattern, .. } => Err(FetchError::SignatureInvalid {
            reference: shown.to_string(),
            message: format!(
                "the rule {pattern:?} asks for a signature, and git signature verification is not supported yet (only cosign signatures of OCI modules are verified); publish the module to an OCI registry and sign it, or give this repository a rule without keys"
            ),
        }),
    }
}

/// gix's errors carry their causes as a chain; the status shows all of it, once each.
fn describe(error: &gix::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in error.iter_errors() {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    if parts.is_empty() {
        error.to_string()
    } else {
        parts.join(": ")
    }
}

/// Opened without the user's or the system's git configuration: nothing outside the operator
/// (URL rewrites, credential helpers, proxies) changes what is fetched or from where.
fn open_isolated(dir: &std::path::Path) -> Result<gix::Repository, String> {
    gix::open_opts(dir, gix::open::Options::isolated())
        .map_err(|e| format!("opening the cached repository: {}", describe(&e)))
}

fn open_or_init(dir: &std::path::Path) -> Result<gix::Repository, String> {
    if dir.join("HEAD").exists() {
        return open_isolated(dir);
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating the repository cache: {e}"))?;
    }
    // A half-created repository from an interrupted start is created again.
    let _ = std::fs::remove_dir_all(dir);
    gix::ThreadSafeRepository::init_opts(
        dir,
        gix::create::Kind::Bare,
        gix::create::Options::default(),
        gix::open::Options::isolated(),
    )
    .map(gix::Repository::from)
    .map_err(|e| format!("creating the cached repository: {}", describe(&e)))
}

/// Fetches what `revision` needs into `repo` and returns its commit. A branch or tag is looked
/// up in what the server lists now; a commit is fetched with every branch and tag (servers need
/// not allow asking for an arbitrary sha) and must then be in the repository.
fn fetch_revision(
    repo: &gix::Repository,
    url: &str,
    revision: &GitRevision,
    interrupt: &AtomicBool,
) -> Result<gix::ObjectId, String> {
    use gix::remote::Direction;
    let refspecs: Vec<String> = match revision {
        GitRevision::Commit(_) => vec![
            format!("+refs/heads/*:{TRACKING}/heads/*"),
            format!("+refs/tags/*:{TRACKING}/tags/*"),
        ],
        GitRevision::Name(name) if name.starts_with("refs/") => {
            let local = name.trim_start_matches("refs/");
            vec![format!("+{name}:{TRACKING}/{local}")]
        }
        GitRevision::Name(name) => vec![
            format!("+refs/heads/{name}:{TRACKING}/heads/{name}"),
            format!("+refs/tags/{name}:{TRACKING}/tags/{name}"),
        ],
    };
    let remote = repo
        .remote_at_without_url_rewrite(url)
        .map_err(|e| describe(&e))?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(refspecs.iter().map(String::as_str), Direction::Fetch)
        .map_err(|e| describe(&e))?;
    let connection = remote
        .connect(Direction::Fetch)
        .map_err(|e| describe(&e))?
        // Anonymous: a server asking for credentials gets none (and nobody is prompted).
        .with_credentials(|_| Ok(None));
    let prepare = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| describe(&e))?;
    let wanted = match revision {
        GitRevision::Commit(sha) => {
            gix::ObjectId::from_hex(sha.as_bytes()).map_err(|e| e.to_string())?
        }
        GitRevision::Name(name) => {
            let mut found: Vec<(String, gix::ObjectId)> = Vec::new();
            for mapping in &prepare.ref_map().mappings {
                if let gix::protocol::fetch::refmap::Source::Ref(r) = &mapping.remote {
                    let (full_name, target, _) = r.unpack();
                    if let Some(target) = target {
                        found.push((full_name.to_string(), target.to_owned()));
                    }
                }
            }
            found.sort();
            found.dedup();
            match found.as_slice() {
                [] => return Err(format!("{url} has no branch or tag {name}")),
                [(_, id)] => *id,
                [..] => {
                    return Err(format!(
                        "{name} is both a branch and a tag in {url}; write refs/heads/{name} or refs/tags/{name}"
                    ));
                }
            }
        }
    };
    // The server's tip is already here (the ref did not move): no pack to ask for.
    if !repo.has_object(wanted) {
        prepare
            .receive(gix::progress::Discard, interrupt)
            .map_err(|e| describe(&e))?;
    }
    if !repo.has_object(wanted) {
        return Err(format!("commit {wanted} is on no branch or tag of {url}"));
    }
    // A tag may point at a tag object: the module is the tree of the commit underneath.
    let commit = repo
        .find_object(wanted)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| format!("{wanted} is not a commit: {}", describe(&e)))?;
    Ok(commit.id)
}

/// The `.cue` files under `dir` at `commit`, in memory. Blob sizes are read from the object
/// headers first, so nothing over [`MAX_MODULE_BYTES`] is ever inflated; symbolic links and
/// submodules are skipped (a module is plain files).
fn read_module(
    repo: &gix::Repository,
    commit: gix::ObjectId,
    dir: &str,
    package: &str,
) -> Result<ModuleSource, String> {
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| format!("reading commit {commit}: {}", describe(&e)))?;
    let root = if dir.is_empty() {
        tree
    } else {
        let entry = tree
            .lookup_entry_by_path(dir)
            .map_err(|e| format!("looking up {dir}: {}", describe(&e)))?
            .ok_or_else(|| format!("commit {commit} has no {dir}"))?;
        if !entry.mode().is_tree() {
            return Err(format!("{dir} is not a directory at commit {commit}"));
        }
        entry
            .object()
            .and_then(|o| o.try_into_tree())
            .map_err(|e| format!("reading {dir}: {}", describe(&e)))?
    };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut total: u64 = 0;
    let mut pending = vec![(String::new(), root)];
    while let Some((prefix, tree)) = pending.pop() {
        for entry in tree.iter() {
            let entry = entry.map_err(|e| format!("reading a tree: {}", describe(&e)))?;
            let name = std::str::from_utf8(entry.filename())
                .map_err(|_| format!("{prefix}: a file name is not UTF-8"))?;
            let path = format!("{prefix}{name}");
            let mode = entry.mode();
            if mode.is_tree() {
                let subtree = repo
                    .find_tree(entry.object_id())
                    .map_err(|e| format!("reading {path}: {}", describe(&e)))?;
                pending.push((format!("{path}/"), subtree));
            } else if mode.is_blob() && name.ends_with(".cue") {
                let size = repo
                    .find_header(entry.object_id())
                    .map_err(|e| format!("reading {path}: {}", describe(&e)))?
                    .size();
                total += size;
                if total > MAX_MODULE_BYTES {
                    return Err(format!(
                        "holds more than {} MiB of .cue files",
                        MAX_MODULE_BYTES / (1024 * 1024)
                    ));
                }
                let blob = repo
                    .find_blob(entry.object_id())
                    .map_err(|e| format!("reading {path}: {}", describe(&e)))?;
                files.push((path, blob.data.clone()));
            }
        }
    }
    ModuleSource::from_files(files, package).map_err(|e| e.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_with_keys_refuses_a_git_source_and_patterns_match_the_repository() {
        use crate::trust::{ModulePolicy, SourceRule};
        let key = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n";
        let policy = ModulePolicy {
            sources: vec![
                SourceRule {
                    pattern: "git+https://git.example.com/acme/experimental/*".into(),
                    deny: true,
                    keys: vec![],
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "git+https://git.example.com/acme/signed/*".into(),
                    deny: false,
                    keys: vec![key.into()],
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "git+https://git.example.com/acme/*".into(),
                    deny: false,
                    keys: vec![],
                    ..SourceRule::default()
                },
            ],
        };
        // (reference, Ok or the reason and a piece of the message)
        type Expected<'a> = Result<(), (&'a str, &'a str)>;
        let cases: [(&str, Expected<'_>); 5] = [
            ("git+https://git.example.com/acme/platform?ref=main", Ok(())),
            (
                "git+https://git.example.com/acme/platform?ref=main&dir=acme/experimental/x",
                Ok(()),
            ),
            (
                "git+https://git.example.com/acme/experimental/web?ref=v1",
                Err(("SourceDenied", "denies sources matching")),
            ),
            (
                "git+https://git.example.com/acme/signed/web?ref=v1",
                Err((
                    "SignatureInvalid",
                    "git signature verification is not supported yet",
                )),
            ),
            (
                "git+https://git.example.org/acme/platform?ref=main",
                Err(("SourceDenied", "no rule of the module policy allows")),
            ),
        ];
        for (reference, expected) in cases {
            let parsed = GitReference::parse(reference).unwrap_or_else(|e| panic!("{e}"));
            let got = check_policy(&parsed.repository, reference, &policy);
            match (got, expected) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err((reason, text))) => {
                    assert_eq!(e.reason(), reason, "{reference}: {e}");
                    assert!(e.to_string().contains(text), "{reference}: {e}");
                    assert!(!e.is_transient(), "{reference}");
                }
                (got, expected) => panic!("{reference}: {got:?} vs {expected:?}"),
            }
        }
        // No policy: every repository, unverified.
        let parsed =
            GitReference::parse("git+file:///srv/p.git?ref=main").unwrap_or_else(|e| panic!("{e}"));
        assert!(check_policy(&parsed.repository, "x", &ModulePolicy::default()).is_ok());
    }
}
