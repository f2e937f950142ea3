//! Published platform modules for the offline commands: `render --module` and `diff --module`
//! fetch, verify and cache a module exactly as the operator does (`cuebe::remote`), so a
//! platform team can preview a module before anyone pins it.
//!
//! Owns: choosing the module (the flag, else the manifest's own `platformRef.oci` or
//! `platformRef.git`, else the embedded one) and turning fetch errors into messages that name
//! the reference and the reason.
use std::path::Path;
use std::sync::Arc;

use cuebe::ModuleSource;
use cuebe::abstraction::Abstraction;
use cuebe::trust::ModulePolicy;

/// Why a published module cannot be used; each maps to the commands' exit codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChooseError {
    /// The reference does not parse, or `--vendored-modules` is no directory of image layouts
    /// (exit 2).
    #[error("{0}")]
    BadReference(String),
    /// The module policy refuses it: denied source, missing or invalid signature (exit 3).
    #[error("{0}")]
    Refused(String),
    /// It could not be fetched, or is not what its digest says (exit 4).
    #[error("{0}")]
    Failed(String),
}

impl ChooseError {
    /// The exit code of a command that could not use the module.
    pub fn exit(&self) -> crate::exit::Exit {
        match self {
            Self::BadReference(_) => crate::exit::Exit::BadInput,
            Self::Refused(_) => crate::exit::Exit::PolicyViolation,
            Self::Failed(_) => crate::exit::Exit::Failed,
        }
    }
}

/// The module a command renders with and how it was trusted, e.g. `oci://…@sha256:…
/// (Verified: signed by key sha256:…)`.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The module's files.
    pub module: Arc<ModuleSource>,
    /// The canonical reference and verification, for the command's output.
    pub described: String,
}

/// The published module to render `object` with: `flag` (a `--module` reference: `oci://…`,
/// or `git+https://…?ref=…&dir=…` and the other git forms) if given, else the module `object`
/// names with `platformRef.oci` or `platformRef.git`, else `None` (the embedded module).
/// Verified against `policy` (no policy: accepted as Unverified, as the operator does);
/// served from the image layouts under `vendored` when one holds its digest.
///
/// ```no_run
/// # async fn f<A: cuebe::Abstraction>(object: A) -> Result<(), cuebe_cli::published::ChooseError> {
/// let chosen = cuebe_cli::published::choose(&object, Some("oci://registry.example.com/platform@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"), None, None).await?;
/// if let Some(c) = chosen { eprintln!("rendering with {}", c.described); }
/// # Ok(()) }
/// ```
pub async fn choose<A: Abstraction>(
    object: &A,
    flag: Option<&str>,
    policy: Option<&ModulePolicy>,
    vendored: Option<&Path>,
) -> Result<Option<Chosen>, ChooseError> {
    let named = object.platform_ref().and_then(|r| r.oci.or(r.git));
    let Some(reference) = flag.map(str::to_string).or(named) else {
        return Ok(None);
    };
    if is_git(&reference) {
        return fetch_git::<A>(&reference, flag.is_some(), policy)
            .await
            .map(Some);
    }
    fetch::<A>(&reference, policy, vendored).await.map(Some)
}

/// The published module `reference` names (`oci://…` or a git reference), fetched and checked
/// as [`choose`] does: `rollout plan --module` and the modules a channel points at.
///
/// ```no_run
/// # async fn f<A: cuebe::Abstraction>() -> Result<(), cuebe_cli::published::ChooseError> {
/// let c = cuebe_cli::published::fetch_reference::<A>("oci://registry.example.com/platform@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", None, None).await?;
/// eprintln!("{}", c.described);
/// # Ok(()) }
/// ```
pub async fn fetch_reference<A: Abstraction>(
    reference: &str,
    policy: Option<&ModulePolicy>,
    vendored: Option<&Path>,
) -> Result<Chosen, ChooseError> {
    if is_git(reference) {
        return fetch_git::<A>(reference, false, policy).await;
    }
    fetch::<A>(reference, policy, vendored).await
}

#[cfg(feature = "remote-modules")]
async fn fetch<A: Abstraction>(
    reference: &str,
    policy: Option<&ModulePolicy>,
    vendored: Option<&Path>,
) -> Result<Chosen, ChooseError> {
    use cuebe::remote::{ModuleFetcher, default_cache_dir};
    let parsed = cuebe::module::OciReference::parse(reference)
        .map_err(|e| ChooseError::BadReference(format!("{reference}: {e}")))?;
    let modules = A::modules();
    let package = modules.entry_package().unwrap_or(".");
    let mut fetcher = ModuleFetcher::new(Some(default_cache_dir()));
    if let Some(dir) = vendored {
        fetcher = fetcher.with_vendored_modules(dir).map_err(|e| {
            ChooseError::BadReference(format!("--vendored-modules {}: {e}", dir.display()))
        })?;
    }
    let default_policy = ModulePolicy::default();
    let (module, verification) = fetcher
        .fetch_trusted(&parsed, package, policy.unwrap_or(&default_policy))
        .await
        .map_err(not_usable)?;
    let how = trusted_as(&verification);
    let vendored = fetcher
        .vendored_layout(&parsed.digest)
        .map(|layout| format!(", vendored in {}", layout.display()))
        .unwrap_or_default();
    Ok(Chosen {
        module,
        described: format!("{parsed} ({how}{vendored})"),
    })
}

#[cfg(not(feature = "remote-modules"))]
#[allow(clippy::extra_unused_type_parameters)] // the signature of the feature's `fetch`
async fn fetch<A: Abstraction>(
    reference: &str,
    _policy: Option<&ModulePolicy>,
    _vendored: Option<&Path>,
) -> Result<Chosen, ChooseError> {
    Err(ChooseError::Failed(format!(
        "{reference}: this binary was built without the remote-modules feature of cuebe-cli"
    )))
}

/// Whether `reference` names a git repository (`git+https://`, `git+file://`, `git://`, and the
/// forms refused with a reason, `git+http://` and `git+ssh://`) rather than an OCI artifact.
fn is_git(reference: &str) -> bool {
    reference.starts_with("git+") || reference.starts_with("git://")
}

/// The exit a fetch error means: refused by the policy (3), or not fetched or not a good
/// module (4).
#[cfg(feature = "remote-modules")]
fn not_usable(error: cuebe::remote::FetchError) -> ChooseError {
    use cuebe::remote::FetchError;
    let message = format!("{error} ({})", error.reason());
    match error {
        FetchError::SourceDenied { .. } | FetchError::SignatureInvalid { .. } => {
            ChooseError::Refused(message)
        }
        _ => ChooseError::Failed(message),
    }
}

/// How a module was trusted, as the commands print it.
#[cfg(feature = "remote-modules")]
fn trusted_as(verification: &cuebe::remote::Verification) -> String {
    match verification {
        cuebe::remote::Verification::Signed { key } => format!("Verified: signed by key {key}"),
        cuebe::remote::Verification::Unverified => {
            "Unverified: no policy rule asks for a signature".into()
        }
    }
}

/// The module a git reference names, resolved (a branch or tag to its commit, always asked
/// of the server: a preview shows what the ref names now), read from the tree without a
/// checkout and checked against `policy`, as the operator does. `reference` may also be the
/// resolved form `status.platformRefResolved` shows (`git+https://HOST/REPO@<commit>`).
#[cfg(feature = "remote-modules")]
async fn fetch_git<A: Abstraction>(
    reference: &str,
    from_flag: bool,
    policy: Option<&ModulePolicy>,
) -> Result<Chosen, ChooseError> {
    use cuebe::module::{GitReference, GitRevision, ResolvedGitReference};
    use cuebe::remote::{ModuleFetcher, default_cache_dir};
    let parsed = match GitReference::parse(reference) {
        Ok(parsed) => parsed,
        Err(error) => match ResolvedGitReference::parse(reference) {
            Some(resolved) => GitReference {
                repository: resolved.repository,
                revision: GitRevision::Commit(resolved.commit),
                dir: resolved.dir,
            },
            // The manifest's error names `spec.platformRef.git`; the flag's names the flag.
            None if from_flag => {
                return Err(ChooseError::BadReference(format!(
                    "--module: {}: {reference:?} (expected git+https://HOST/REPO?ref=BRANCH|TAG|COMMIT[&dir=PATH], or git+https://HOST/REPO@COMMIT[?dir=PATH])",
                    error.reason
                )));
            }
            None => return Err(ChooseError::BadReference(error.to_string())),
        },
    };
    let modules = A::modules();
    let package = modules.entry_package().unwrap_or(".");
    let fetcher = ModuleFetcher::new(Some(default_cache_dir()));
    let default_policy = ModulePolicy::default();
    let (fetched, verification) = fetcher
        .fetch_git_trusted(&parsed, package, policy.unwrap_or(&default_policy))
        .await
        .map_err(not_usable)?;
    let from = if fetched.moving {
        format!(", from {}", parsed.revision)
    } else {
        String::new()
    };
    Ok(Chosen {
        module: fetched.module,
        described: format!("{} ({}{from})", fetched.resolved, trusted_as(&verification)),
    })
}

#[cfg(not(feature = "remote-modules"))]
#[allow(clippy::extra_unused_type_parameters)] // the signature of the feature's `fetch_git`
async fn fetch_git<A: Abstraction>(
    reference: &str,
    _from_flag: bool,
    _policy: Option<&ModulePolicy>,
) -> Result<Chosen, ChooseError> {
    Err(ChooseError::Failed(format!(
        "{reference}: this binary was built without the remote-modules feature of cuebe-cli"
    )))
}
