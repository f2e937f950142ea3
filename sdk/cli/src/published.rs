//! Published platform modules for the offline commands: `render --module` and `diff --module`
//! fetch, verify and cache a module exactly as the operator does (`cuebe::remote`), so a
//! platform team can preview a module before anyone pins it.
//!
//! Owns: choosing the module (the flag, else the manifest's own `platformRef.oci`, else the
//! embedded one) and turning fetch errors into messages that name the reference and the reason.
use std::sync::Arc;

use cuebe::ModuleSource;
use cuebe::abstraction::Abstraction;
use cuebe::trust::ModulePolicy;

/// Why a published module cannot be used; each maps to the commands' exit codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChooseError {
    /// The reference does not parse (exit 2).
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

/// The published module to render `object` with: `flag` (a `--module` reference) if given,
/// else the module `object` pins with `platformRef.oci`, else `None` (the embedded module).
/// Verified against `policy` (no policy: accepted as Unverified, as the operator does).
///
/// ```no_run
/// # async fn f<A: cuebe::Abstraction>(object: A) -> Result<(), cuebe_cli::published::ChooseError> {
/// let chosen = cuebe_cli::published::choose(&object, Some("oci://registry.example.com/platform@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"), None).await?;
/// if let Some(c) = chosen { eprintln!("rendering with {}", c.described); }
/// # Ok(()) }
/// ```
pub async fn choose<A: Abstraction>(
    object: &A,
    flag: Option<&str>,
    policy: Option<&ModulePolicy>,
) -> Result<Option<Chosen>, ChooseError> {
    let pinned = object.platform_ref().and_then(|r| r.oci);
    let Some(reference) = flag.map(str::to_string).or(pinned) else {
        return Ok(None);
    };
    fetch::<A>(&reference, policy).await.map(Some)
}

#[cfg(feature = "remote-modules")]
async fn fetch<A: Abstraction>(
    reference: &str,
    policy: Option<&ModulePolicy>,
) -> Result<Chosen, ChooseError> {
    use cuebe::remote::{FetchError, ModuleFetcher, Verification, default_cache_dir};
    let parsed = cuebe::module::OciReference::parse(reference)
        .map_err(|e| ChooseError::BadReference(format!("{reference}: {e}")))?;
    let modules = A::modules();
    let package = modules.entry_package().unwrap_or(".");
    let fetcher = ModuleFetcher::new(Some(default_cache_dir()));
    let default_policy = ModulePolicy::default();
    let (module, verification) = fetcher
        .fetch_trusted(&parsed, package, policy.unwrap_or(&default_policy))
        .await
        .map_err(|e| {
            let message = format!("{e} ({})", e.reason());
            match e {
                FetchError::SourceDenied { .. } | FetchError::SignatureInvalid { .. } => {
                    ChooseError::Refused(message)
                }
                _ => ChooseError::Failed(message),
            }
        })?;
    let how = match verification {
        Verification::Signed { key } => format!("Verified: signed by key {key}"),
        Verification::Unverified => "Unverified: no policy rule asks for a signature".into(),
    };
    Ok(Chosen {
        module,
        described: format!("{parsed} ({how})"),
    })
}

#[cfg(not(feature = "remote-modules"))]
async fn fetch<A: Abstraction>(
    reference: &str,
    _policy: Option<&ModulePolicy>,
) -> Result<Chosen, ChooseError> {
    Err(ChooseError::Failed(format!(
        "{reference}: this binary was built without the remote-modules feature of cuebe-cli"
    )))
}
