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
//! `ref` and `dir`). Where the matching rule lists `allowedSigners`, the module is used only at
//! a commit that carries a valid SSH signature by one of them, or that a validly signed
//! annotated tag names (a tag fetched into the cached repository); otherwise the fetch is a
//! `SignatureInvalid`, and the instance stays on its last good module. Signatures are read from
//! the cached repository's objects and checked in-process ([`crate::trust::verify_git_signature`]),
//! so a verified commit needs no network either. A rule with only cosign `keys` refuses a git
//! source: those keys sign OCI modules, never commits.
//!
//! HTTPS uses the system's roots and the fetcher's extra CA certificates
//! ([`ModuleFetcher::with_ca_certificates`]).
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

/// Commits whose signature checked out, by (repository, commit, the allowed signers' lines).
type VerifiedCommits = HashMap<(String, String, String), crate::trust::GitSigner>;

/// The git side of a [`ModuleFetcher`]: resolutions of moving refs, modules read, and one lock
/// per repository so that two reconciles do not fetch into the same repository at once.
#[derive(Debug)]
pub(super) struct GitState {
    refresh: Duration,
    /// (repository, ref) → (commit, when it was resolved).
    resolved: Mutex<HashMap<(String, String), (String, Instant)>>,
    modules: Mutex<ModuleCache>,
    verified: Mutex<VerifiedCommits>,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Default for GitState {
    fn default() -> Self {
        Self {
            refresh: DEFAULT_GIT_REFRESH,
            resolved: Mutex::default(),
            modules: Mutex::default(),
            verified: Mutex::default(),
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
    /// refused before anything is fetched. Where the rule lists `allowedSigners`, the commit the
    /// reference resolves to must carry a valid SSH signature by one of them (or be named by a
    /// validly signed annotated tag): [`Verification::Signed`] names the signer's fingerprint
    /// and principal, anything else is a `SignatureInvalid`. A rule with only cosign `keys`
    /// refuses the repository (a rule asking for a signature is never silently skipped).
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
        let signers = check_policy(&reference.repository, &reference.to_string(), policy)?;
        let fetched = self.fetch_git(reference, package).await?;
        let Some(signers) = signers else {
            return Ok((fetched, Verification::Unverified));
        };
        let signer = self.verify_commit(&fetched.resolved, &signers).await?;
        Ok((
            fetched,
            Verification::Signed {
                key: signer.to_string(),
            },
        ))
    }

    /// Who validly signed `resolved`'s commit (or an annotated tag naming it), among
    /// `signers`; read from the cached repository, never the network. Remembered per commit and
    /// signers, so a verified commit is checked once per process.
    async fn verify_commit(
        &self,
        resolved: &ResolvedGitReference,
        signers: &[String],
    ) -> Result<crate::trust::GitSigner, FetchError> {
        let memo = (
            resolved.repository.to_string(),
            resolved.commit.clone(),
            signers.join("\n"),
        );
        if let Some(signer) = self.git_verified().get(&memo) {
            return Ok(signer.clone());
        }
        let dir = self.git_repository_dir(&resolved.repository);
        let (commit, owned) = (resolved.commit.clone(), signers.to_vec());
        let checked = tokio::task::spawn_blocking(move || {
            let repo = open_isolated(&dir)?;
            let commit = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| e.to_string())?;
            verify_signed(&repo, commit, &owned)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match checked {
            Ok(signer) => {
                self.git_verified().insert(memo, signer.clone());
                Ok(signer)
            }
            Err(message) => Err(FetchError::SignatureInvalid {
                reference: resolved.to_string(),
                message,
            }),
        }
    }

    /// The module at a resolved commit when the cached repository has it and `policy` still
    /// trusts the repository (and, where it lists `allowedSigners`, the commit's signature
    /// still checks out), without the network: what an instance keeps rendering with when its
    /// git reference cannot be used.
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
        let signers = check_policy(&resolved.repository, &resolved.to_string(), policy).ok()?;
        let module = self.cached_git(resolved, package)?;
        let Some(signers) = signers else {
            return Some((module, Verification::Unverified));
        };
        let memo = (
            resolved.repository.to_string(),
            resolved.commit.clone(),
            signers.join("\n"),
        );
        let remembered = self.git_verified().get(&memo).cloned();
        let signer = match remembered {
            Some(signer) => signer,
            None => {
                // Synchronous (the caller is a fallback with no await): reading two objects
                // from the cached repository.
                let repo = open_isolated(&self.git_repository_dir(&resolved.repository)).ok()?;
                let commit = gix::ObjectId::from_hex(resolved.commit.as_bytes()).ok()?;
                let signer = verify_signed(&repo, commit, &signers)
                    .map_err(|error| tracing::warn!(%error, reference = %resolved, "the last good commit's signature does not check out under the current policy"))
                    .ok()?;
                self.git_verified().insert(memo, signer.clone());
                signer
            }
        };
        Some((
            module,
            Verification::Signed {
                key: signer.to_string(),
            },
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
            let extra_roots = self.extra_roots.clone();
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
                        fetch_revision(&repo, &url, &revision, &interrupt, &extra_roots).map_err(
                            |message| FetchError::FetchFailed {
                                reference: shown.clone(),
                                message,
                            },
                        )?,
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

    fn git_verified(&self) -> std::sync::MutexGuard<'_, VerifiedCommits> {
        self.git
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

/// The policy's word on a git repository: `Some(allowed signers)` when its commits must be
/// signed, `None` when they need not be, or why it is refused. A rule with only cosign keys
/// refuses it: those keys verify OCI modules, and a rule asking for a signature is never
/// skipped.
fn check_policy(
    repository: &GitRepository,
    shown: &str,
    policy: &crate::trust::ModulePolicy,
) -> Result<Option<Vec<String>>, FetchError> {
    use crate::trust::SourceDecision;
    let source = repository.to_string();
    match policy.decide(&source) {
        SourceDecision::Unverified => Ok(None),
        SourceDecision::Denied { pattern } => Err(FetchError::SourceDenied {
            reference: shown.to_string(),
            message: format!("the module policy denies sources matching {pattern:?}"),
        }),
        SourceDecision::NotAllowed => Err(FetchError::SourceDenied {
            reference: shown.to_string(),
            message: format!("no rule of the module policy allows {source}"),
        }),
        SourceDecision::Signed {
            pattern,
            allowed_signers,
            ..
        } if allowed_signers.is_empty() => Err(FetchError::SignatureInvalid {
            reference: shown.to_string(),
            message: format!(
                "the rule {pattern:?} lists only cosign keys, which verify OCI modules; a git source is verified against allowedSigners (the SSH keys that sign its commits and tags): add allowedSigners to the rule, or give this repository a rule of its own"
            ),
        }),
        SourceDecision::Signed {
            allowed_signers, ..
        } => Ok(Some(allowed_signers)),
    }
}

/// Who validly signed `commit` among `signers`: the commit's own SSH signature (its `gpgsig`
/// header), else the signature of an annotated tag in the cached repository that names it
/// (tags are fetched under `refs/cuebe/tags/`). The error says what was found on each.
fn verify_signed(
    repo: &gix::Repository,
    commit: gix::ObjectId,
    signers: &[String],
) -> Result<crate::trust::GitSigner, String> {
    let object = repo
        .find_object(commit)
        .map_err(|e| format!("reading commit {commit}: {}", describe(&e)))?;
    if object.kind != gix::object::Kind::Commit {
        return Err(format!("{commit} is not a commit"));
    }
    let mut problems = match commit_signature(&object.data, signers) {
        Ok(signer) => return Ok(signer),
        Err(why) => vec![format!("commit {commit}: {why}")],
    };
    for (name, tag) in tags_naming(repo, commit) {
        match tag_signature(&tag, signers) {
            Ok(signer) => return Ok(signer),
            Err(why) => problems.push(format!("tag {name}: {why}")),
        }
    }
    Err(problems.join("; "))
}

/// The signer of a raw commit object (its `gpgsig` header over the rest of the object).
fn commit_signature(raw: &[u8], signers: &[String]) -> Result<crate::trust::GitSigner, String> {
    match gix::objs::CommitRefIter::signature(raw, gix::hash::Kind::Sha1) {
        Ok(Some((signature, signed))) => {
            crate::trust::verify_git_signature(&signed.to_bstring(), &signature, signers)
        }
        Ok(None) => Err("not signed".into()),
        Err(e) => Err(format!("does not parse: {e}")),
    }
}

/// The signer of a raw tag object (the signature that ends its message, over what precedes it).
fn tag_signature(raw: &[u8], signers: &[String]) -> Result<crate::trust::GitSigner, String> {
    match gix::objs::TagRefIter::signature(raw) {
        Some((signature, signed)) => {
            crate::trust::verify_git_signature(&signed.to_bstring(), signature.data, signers)
        }
        None => Err("not signed".into()),
    }
}

/// The annotated tags fetched into the cached repository (`refs/cuebe/tags/…`) whose object
/// names `commit` directly, with their raw objects.
fn tags_naming(repo: &gix::Repository, commit: gix::ObjectId) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let Ok(references) = repo.references() else {
        return found;
    };
    let Ok(tags) = references.prefixed(format!("{TRACKING}/tags/").as_str()) else {
        return found;
    };
    for reference in tags.flatten() {
        let Some(id) = reference.target().try_id().map(ToOwned::to_owned) else {
            continue;
        };
        let Ok(object) = repo.find_object(id) else {
            continue;
        };
        if object.kind != gix::object::Kind::Tag {
            continue;
        }
        let names_commit = gix::objs::TagRefIter::from_bytes(&object.data, gix::hash::Kind::Sha1)
            .target_id()
            .is_ok_and(|target| target == commit);
        if names_commit {
            let full = reference.name().as_bstr().to_string();
            let name = full
                .strip_prefix(&format!("{TRACKING}/tags/"))
                .unwrap_or(&full)
                .to_string();
            found.push((name, object.data.clone()));
        }
    }
    found.sort();
    found
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
    extra_roots: &[Vec<u8>],
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
    let mut connection = remote
        .connect(Direction::Fetch)
        .map_err(|e| describe(&e))?
        // Anonymous: a server asking for credentials gets none (and nobody is prompted).
        .with_credentials(|_| Ok(None));
    if url.starts_with("https://") && !extra_roots.is_empty() {
        connection.set_transport_options(https_options(repo, url, extra_roots)?);
    }
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

/// gix's HTTP options for `url` with the extra CA certificates added to the system's roots
/// (reqwest's `tls_certs_merge`: the platform verifier with extra roots).
fn https_options(
    repo: &gix::Repository,
    url: &str,
    extra_roots: &[Vec<u8>],
) -> Result<Box<dyn std::any::Any>, String> {
    use gix::protocol::transport::client::blocking_io::http;
    let mut options = repo
        .transport_options(url, None)
        .map_err(|e| format!("configuring HTTPS: {e}"))?
        .and_then(|o| o.downcast::<http::Options>().ok())
        .map(|o| *o)
        .unwrap_or_default();
    let certificates = extra_roots
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("an extra CA certificate: {e}"))?;
    options.backend = Some(Arc::new(Mutex::new(http::reqwest::Options {
        configure_client: Some(Box::new(move |builder| {
            Ok(builder.tls_certs_merge(certificates.clone()))
        })),
        configure_request: None,
    })));
    Ok(Box::new(options))
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

    fn ssh_key() -> ssh_key::PrivateKey {
        ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .unwrap()
    }

    fn signer_line(key: &ssh_key::PrivateKey, principal: &str) -> String {
        format!("{principal} {}", key.public_key().to_openssh().unwrap())
    }

    fn armored(key: &ssh_key::PrivateKey, namespace: &str, data: &[u8]) -> String {
        ssh_key::SshSig::sign(key, namespace, ssh_key::HashAlg::Sha512, data)
            .unwrap()
            .to_pem(ssh_key::LineEnding::LF)
            .unwrap()
    }

    const UNSIGNED_COMMIT: &str = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nparent 0123456789abcdef0123456789abcdef01234567\nauthor Platform <platform@acme.example> 1700000000 +0000\ncommitter Platform <platform@acme.example> 1700000000 +0000\n\nplatform 1.1.0\n";

    /// A commit object as `git commit -S` writes it: the signature of the object without it,
    /// as a `gpgsig` header after the committer (continuation lines start with a space).
    fn signed_commit(signature: &str) -> Vec<u8> {
        let header = format!("gpgsig {}", signature.trim_end().replace('\n', "\n "));
        UNSIGNED_COMMIT
            .replacen("\n\n", &format!("\n{header}\n\n"), 1)
            .into_bytes()
    }

    /// A tag object as `git tag -s` writes it: the signature appended to the message.
    fn signed_tag(key: &ssh_key::PrivateKey, namespace: &str) -> Vec<u8> {
        let body = "object 0123456789abcdef0123456789abcdef01234567\ntype commit\ntag v1.1.0\ntagger Platform <platform@acme.example> 1700000000 +0000\n\nplatform 1.1.0\n";
        format!("{body}{}", armored(key, namespace, body.as_bytes())).into_bytes()
    }

    #[test]
    fn a_commit_or_tag_is_trusted_only_with_a_valid_ssh_signature_by_an_allowed_signer() {
        let ours = ssh_key();
        let theirs = ssh_key();
        let signers = vec![signer_line(&ours, "platform@acme.example")];
        let fingerprint = ours
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string();
        let by_ours = signed_commit(&armored(&ours, "git", UNSIGNED_COMMIT.as_bytes()));
        // The content changed after signing (another tree), the signature kept.
        let tampered = String::from_utf8(by_ours.clone())
            .unwrap()
            .replace("tree 4b825dc6", "tree 5b825dc6")
            .into_bytes();
        let with_gpg = signed_commit(
            "-----BEGIN PGP SIGNATURE-----\n\niQEzBAABCAAdFiEE\n-----END PGP SIGNATURE-----\n",
        );
        // (what, raw object, a commit or a tag, Ok(status text) or a piece of the refusal)
        type Case = (&'static str, Vec<u8>, bool, Result<String, String>);
        let cases: Vec<Case> = vec![
            (
                "signed by an allowed key",
                by_ours.clone(),
                true,
                Ok(format!("{fingerprint} (platform@acme.example)")),
            ),
            (
                "signed by another key",
                signed_commit(&armored(&theirs, "git", UNSIGNED_COMMIT.as_bytes())),
                true,
                Err("which no allowedSigners line of the policy lists".into()),
            ),
            (
                "unsigned",
                UNSIGNED_COMMIT.as_bytes().to_vec(),
                true,
                Err("not signed".into()),
            ),
            (
                "signed in another namespace",
                signed_commit(&armored(&ours, "file", UNSIGNED_COMMIT.as_bytes())),
                true,
                Err("was made in the namespace \"file\", not \"git\"".into()),
            ),
            (
                "tampered content",
                tampered,
                true,
                Err("does not match the content".into()),
            ),
            (
                "signed with GPG",
                with_gpg,
                true,
                Err("signed with GPG (OpenPGP)".into()),
            ),
            (
                "a tag signed by an allowed key",
                signed_tag(&ours, "git"),
                false,
                Ok(format!("{fingerprint} (platform@acme.example)")),
            ),
            (
                "a tag signed by another key",
                signed_tag(&theirs, "git"),
                false,
                Err("which no allowedSigners line".into()),
            ),
            (
                "a lightweight-looking tag without a signature",
                b"object 0123456789abcdef0123456789abcdef01234567\ntype commit\ntag v1\ntagger P <p@x> 1700000000 +0000\n\nv1\n".to_vec(),
                false,
                Err("not signed".into()),
            ),
        ];
        for (what, raw, is_commit, expected) in cases {
            let got = if is_commit {
                commit_signature(&raw, &signers)
            } else {
                tag_signature(&raw, &signers)
            };
            match (got, expected) {
                (Ok(signer), Ok(text)) => assert_eq!(signer.to_string(), text, "{what}"),
                (Err(why), Err(piece)) => assert!(why.contains(&piece), "{what}: {why}"),
                (got, expected) => panic!("{what}: {got:?} vs {expected:?}"),
            }
        }
    }

    #[test]
    fn the_policy_decides_which_git_sources_need_signed_commits() {
        use crate::trust::{ModulePolicy, SourceRule};
        let key = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n";
        let signer = signer_line(&ssh_key(), "platform@acme.example");
        let policy = ModulePolicy {
            sources: vec![
                SourceRule {
                    pattern: "git+https://git.example.com/acme/experimental/*".into(),
                    deny: true,
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "git+https://git.example.com/acme/cosign/*".into(),
                    keys: vec![key.into()],
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "git+https://git.example.com/acme/signed/*".into(),
                    allowed_signers: vec![signer.clone()],
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "git+https://git.example.com/acme/both/*".into(),
                    keys: vec![key.into()],
                    allowed_signers: vec![signer.clone()],
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "git+https://git.example.com/acme/*".into(),
                    ..SourceRule::default()
                },
            ],
        };
        // (reference, Ok(signers asked for) or the reason and a piece of the message)
        type Expected<'a> = Result<Option<Vec<String>>, (&'a str, &'a str)>;
        let cases: [(&str, Expected<'_>); 7] = [
            (
                "git+https://git.example.com/acme/platform?ref=main",
                Ok(None),
            ),
            (
                "git+https://git.example.com/acme/platform?ref=main&dir=acme/experimental/x",
                Ok(None),
            ),
            (
                "git+https://git.example.com/acme/experimental/web?ref=v1",
                Err(("SourceDenied", "denies sources matching")),
            ),
            (
                "git+https://git.example.com/acme/cosign/web?ref=v1",
                Err((
                    "SignatureInvalid",
                    "lists only cosign keys, which verify OCI modules; a git source is verified against allowedSigners",
                )),
            ),
            (
                "git+https://git.example.com/acme/signed/web?ref=v1",
                Ok(Some(vec![signer.clone()])),
            ),
            (
                "git+https://git.example.com/acme/both/web?ref=v1",
                Ok(Some(vec![signer.clone()])),
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
                (Ok(signers), Ok(wanted)) => assert_eq!(signers, wanted, "{reference}"),
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
        assert_eq!(
            check_policy(&parsed.repository, "x", &ModulePolicy::default()).ok(),
            Some(None)
        );
    }
}
