//! Platform modules published to OCI registries (`spec.platformRef.oci`), fetched in Rust and
//! verified before the renderer sees them.
//!
//! A module published with `cue mod publish` is an OCI manifest whose config has the media type
//! `application/vnd.cue.module.v1+json` and whose two layers are the module zip
//! (`application/zip`) and its `cue.mod/module.cue` (`application/vnd.cue.modulefile.v1`).
//! [`ModuleFetcher::fetch`] pulls the manifest by the digest the instance pins, checks that the
//! manifest's bytes hash to that digest and the zip to its layer digest, unpacks the zip into
//! memory ([`ModuleSource::from_zip`]) and caches it:
//!
//! - in memory, by digest, for the life of the process;
//! - on disk (`<cache>/sha256-<hex>/manifest.json` and `module.zip`, written to a temporary
//!   directory and renamed into place), re-hashed every time it is read. A pinned digest that
//!   is cached never touches the network again, so a registry outage does not stop rendering.
//!
//! Plain HTTP is used only for registries on loopback; everything else is HTTPS.
//!
//! With [`ModuleFetcher::with_vendored_modules`], a digest found in an OCI image layout on disk
//! (as `cue mod publish --out` writes one) is served from there, never from the network, with
//! the same checks; its signatures come from the layouts too ([`VendoredModules`]).
//!
//! Modules kept in git repositories (`spec.platformRef.git`) are fetched by the same
//! [`ModuleFetcher`] ([`ModuleFetcher::fetch_git`]), into bare repositories under the same cache
//! directory.
//!
//! ```no_run
//! # async fn f() -> Result<(), cuebe::remote::FetchError> {
//! use cuebe::module::OciReference;
//! let fetcher = cuebe::remote::ModuleFetcher::new(Some(cuebe::remote::default_cache_dir()));
//! let reference = OciReference::parse(
//!     "oci://127.0.0.1:5000/platform.example.com/platform@sha256:602bec774d6b83f7866f4a5f32ce39764383183940408a10dfaa4aa75912d0f6",
//! )
//! .expect("a pinned reference");
//! let module = fetcher.fetch(&reference, "./webservice").await?;
//! println!("{}", module.digest());
//! # Ok(()) }
//! ```
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::module::{ModuleSource, OciReference};

// Git references live beside the OCI code: a child module, so that both share the fetcher's
// cache directory, timeout and error reasons.
#[path = "remote_git.rs"]
mod git;
pub use git::{DEFAULT_GIT_REFRESH, GitModule};

// Image layouts on disk (`--vendored-modules`): a child module too, read by the same checks.
#[path = "remote_vendored.rs"]
mod vendored;
pub use vendored::{REF_NAME_ANNOTATION, VendorError, VendoredModules};

/// Media type of the config of a module `cue mod publish` pushed.
pub const CUE_MODULE_CONFIG: &str = "application/vnd.cue.module.v1+json";
/// Media type of the module zip layer.
pub const CUE_MODULE_ZIP: &str = "application/zip";
/// Media type of the `cue.mod/module.cue` layer.
pub const CUE_MODULE_FILE: &str = "application/vnd.cue.modulefile.v1";

/// The largest module archive pulled (a platform module is a few hundred KiB of text at most).
pub const MAX_ARCHIVE_BYTES: i64 = 64 * 1024 * 1024;

/// Why a published module could not be used. [`FetchError::reason`] is the condition reason
/// the status shows.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The registry could not be reached or did not serve the digest.
    #[error("fetching {reference}: {message}")]
    FetchFailed {
        /// The reference.
        reference: String,
        /// What went wrong.
        message: String,
    },
    /// What the registry served does not hash to the digest that was asked for (tampered or
    /// corrupted content): never used.
    #[error(
        "{reference}: {what} does not match its digest (expected {expected}, got {got}); the content was refused"
    )]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// The manifest or the module zip.
        what: &'static str,
        /// The digest asked for.
        expected: String,
        /// The digest of what was served.
        got: String,
    },
    /// The artifact is not a CUE module as `cue mod publish` pushes one.
    #[error("{reference}: not a CUE module: {message}")]
    NotACueModule {
        /// The reference.
        reference: String,
        /// What is wrong with it.
        message: String,
    },
    /// The operator's module policy refuses this source.
    #[error("{reference}: {message}")]
    SourceDenied {
        /// The reference.
        reference: String,
        /// Which rule refused it, or that none allows it.
        message: String,
    },
    /// The policy requires a signature and none is valid.
    #[error("{reference}: no valid signature: {message}")]
    SignatureInvalid {
        /// The reference.
        reference: String,
        /// What was found and why it does not count.
        message: String,
    },
    /// The policy's rule asks for approval (`requireApproval`) and no approval in the cluster
    /// lists the digest (see `cuebe::approval`).
    #[error("{reference}: {message}")]
    NotApproved {
        /// The reference.
        reference: String,
        /// Which digest, which rule, and how to approve it.
        message: String,
    },
}

impl FetchError {
    /// A short machine-readable reason, for the `ModuleResolved` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::FetchFailed { .. } => "FetchFailed",
            Self::DigestMismatch { .. } => "DigestMismatch",
            Self::NotACueModule { .. } => "NotACueModule",
            Self::SourceDenied { .. } => "SourceDenied",
            Self::SignatureInvalid { .. } => "SignatureInvalid",
            Self::NotApproved { .. } => "NotApproved",
        }
    }

    /// True when retrying may help (the registry may come back); content that failed its
    /// checks is never retried into use.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::FetchFailed { .. })
    }
}

/// A CA certificate file for [`ModuleFetcher::with_ca_certificates`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("extra CA certificates: {0}")]
pub struct InvalidCaCertificates(pub String);

/// How a fetched module was trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// A valid signature by this key: a cosign key's id for an OCI module (see
    /// [`crate::trust::PublicKey::id`]), or an allowed signer's fingerprint and principal for a
    /// git commit or tag (`SHA256:… (platform@acme.example)`, see
    /// [`crate::trust::GitSigner`]).
    Signed {
        /// The key id, or fingerprint and principal.
        key: String,
    },
    /// Accepted without a signature: no policy, or a rule that asks for none.
    Unverified,
}

/// `$CUEBE_MODULE_CACHE`, else `$XDG_CACHE_HOME/cuebe/modules` (or `~/.cache/cuebe/modules`).
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CUEBE_MODULE_CACHE") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("cuebe")
        .join("modules")
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Fetches, verifies and caches published platform modules. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct ModuleFetcher {
    cache_dir: Option<PathBuf>,
    memory: Mutex<HashMap<(String, String), Arc<ModuleSource>>>,
    /// (digest, policy keys) → the key id whose signature checked out.
    verified: Mutex<HashMap<(String, String), String>>,
    timeout: Duration,
    /// Modules from git repositories (`platformRef.git`): see [`ModuleFetcher::fetch_git`].
    git: git::GitState,
    /// Extra CA certificates (DER) trusted for HTTPS, for registries and git servers alike:
    /// see [`ModuleFetcher::with_ca_certificates`].
    extra_roots: Vec<Vec<u8>>,
    /// Image layouts served before any registry: see [`ModuleFetcher::with_vendored_modules`].
    vendored: Option<VendoredModules>,
}

impl ModuleFetcher {
    /// A fetcher caching on disk under `cache_dir` (`None`: memory only).
    pub fn new(cache_dir: Option<PathBuf>) -> Self {
        Self {
            cache_dir,
            memory: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            timeout: Duration::from_secs(30),
            git: git::GitState::default(),
            extra_roots: Vec::new(),
            vendored: None,
        }
    }

    /// Serves OCI modules from the image layouts under `dir` (`--vendored-modules`) before
    /// asking any registry: a pinned digest found there never touches the network, and its
    /// signatures are read from the layouts too (a rule with keys refuses a vendored module
    /// whose layouts hold no valid signature, without asking the registry). The directory is
    /// checked now: it must hold at least one layout, and each must parse.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), cuebe::remote::VendorError> {
    /// let fetcher = cuebe::remote::ModuleFetcher::new(None)
    ///     .with_vendored_modules("/var/lib/cuebe/vendored")?;
    /// # let _ = fetcher; Ok(()) }
    /// ```
    pub fn with_vendored_modules(mut self, dir: impl Into<PathBuf>) -> Result<Self, VendorError> {
        self.vendored = Some(VendoredModules::open(dir)?);
        Ok(self)
    }

    /// The vendored layout holding the manifest `digest`, if this fetcher has vendored modules
    /// and one holds it.
    pub fn vendored_layout(&self, digest: &str) -> Option<PathBuf> {
        self.vendored.as_ref()?.layout_of(digest)
    }

    /// Also trusts the CA certificates in `pem` (one or more `-----BEGIN CERTIFICATE-----`
    /// blocks, e.g. a company CA or the one of a registry mirror) for HTTPS, besides the
    /// system's roots: for OCI registries and for `git+https://` repositories alike. Each
    /// certificate is checked now. Plain HTTP stays for loopback only.
    ///
    /// ```
    /// let err = cuebe::remote::ModuleFetcher::new(None)
    ///     .with_ca_certificates(b"not a certificate")
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("no -----BEGIN CERTIFICATE----- block"), "{err}");
    /// ```
    pub fn with_ca_certificates(mut self, pem: &[u8]) -> Result<Self, InvalidCaCertificates> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut found = Vec::new();
        for (i, der) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let der = der.map_err(|e| InvalidCaCertificates(format!("certificate {i}: {e}")))?;
            // What the TLS clients will do with it: a trust anchor must parse as one.
            rustls::RootCertStore::empty()
                .add(der.clone())
                .map_err(|e| InvalidCaCertificates(format!("certificate {i}: {e}")))?;
            found.push(der.to_vec());
        }
        if found.is_empty() {
            return Err(InvalidCaCertificates(
                "no -----BEGIN CERTIFICATE----- block found".into(),
            ));
        }
        self.extra_roots.extend(found);
        Ok(self)
    }

    /// The module `reference` pins, if `policy` trusts its source: a denied source is refused
    /// before anything is fetched; where the policy lists keys, the module is used only with
    /// a valid cosign signature by one of them (signatures are cached beside the module and
    /// re-checked, so a cached signed module needs no network either).
    pub async fn fetch_trusted(
        &self,
        reference: &OciReference,
        package: &str,
        policy: &crate::trust::ModulePolicy,
    ) -> Result<(Arc<ModuleSource>, Verification), FetchError> {
        let Some(keys) = keys_for(reference, policy)? else {
            return Ok((
                self.fetch(reference, package).await?,
                Verification::Unverified,
            ));
        };
        // The module first: a digest the registry does not have is FetchFailed, not a missing
        // signature. Fetched content is only ever used after the check below.
        let module = self.fetch(reference, package).await?;
        if let Some(key) = self.verified_offline(reference, &keys) {
            return Ok((module, Verification::Signed { key }));
        }
        if let Some(vendored) = &self.vendored
            && let Some(layout) = vendored.layout_of(&reference.digest)
        {
            // A vendored module is for a cluster without the registry: its signatures are
            // where it is, or nowhere.
            let found = vendored.signatures(&reference.digest);
            let why = crate::trust::verify_signatures(&reference.digest, &found, &keys)
                .err()
                .unwrap_or_default();
            return Err(FetchError::SignatureInvalid {
                reference: reference.to_string(),
                message: format!(
                    "{why} (the module is vendored in {}: its signatures are read from the layouts under {} only; copy the cosign signature tag {} into a layout there)",
                    layout.display(),
                    vendored.root().display(),
                    crate::trust::signature_tag(&reference.digest)
                ),
            });
        }
        let signatures = self.pull_signatures(reference).await?;
        let key = crate::trust::verify_signatures(&reference.digest, &signatures, &keys).map_err(
            |message| FetchError::SignatureInvalid {
                reference: reference.to_string(),
                message,
            },
        )?;
        if let Some(dir) = &self.cache_dir {
            store_signatures(dir, &reference.digest, &signatures);
        }
        self.remember_verified(reference, &keys, &key);
        Ok((module, Verification::Signed { key }))
    }

    /// The module when it is cached and `policy` still trusts it, without the network: what an
    /// instance keeps rendering with when its newly pinned module cannot be used. The policy
    /// and the signatures are checked again, as for a fetch.
    pub fn cached_trusted(
        &self,
        reference: &OciReference,
        package: &str,
        policy: &crate::trust::ModulePolicy,
    ) -> Option<(Arc<ModuleSource>, Verification)> {
        let keys = keys_for(reference, policy).ok()?;
        let module = self.cached(reference, package)?;
        match keys {
            None => Some((module, Verification::Unverified)),
            Some(keys) => {
                let key = self.verified_offline(reference, &keys)?;
                Some((module, Verification::Signed { key }))
            }
        }
    }

    /// A signature already checked for these keys (this process), or one cached on disk or in a
    /// vendored layout that checks out again: a verified module needs no network on later
    /// passes.
    fn verified_offline(&self, reference: &OciReference, keys: &[String]) -> Option<String> {
        let memo = (reference.digest.clone(), keys.join("\n"));
        if let Some(key) = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&memo)
        {
            return Some(key.clone());
        }
        let on_disk = self
            .cache_dir
            .as_ref()
            .and_then(|dir| load_signatures(dir, &reference.digest))
            .and_then(|cached| {
                crate::trust::verify_signatures(&reference.digest, &cached, keys).ok()
            });
        let key = on_disk.or_else(|| {
            let found = self.vendored.as_ref()?.signatures(&reference.digest);
            crate::trust::verify_signatures(&reference.digest, &found, keys).ok()
        })?;
        self.remember_verified(reference, keys, &key);
        Some(key)
    }

    fn remember_verified(&self, reference: &OciReference, keys: &[String], key: &str) {
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((reference.digest.clone(), keys.join("\n")), key.to_string());
    }

    async fn pull_signatures(
        &self,
        reference: &OciReference,
    ) -> Result<Vec<crate::trust::FoundSignature>, FetchError> {
        let failed = |message: String| FetchError::FetchFailed {
            reference: reference.to_string(),
            message,
        };
        let client = self.client(reference).map_err(&failed)?;
        let tag = crate::trust::signature_tag(&reference.digest);
        let oci: Reference = format!("{}/{}:{tag}", reference.registry, reference.repository)
            .parse()
            .map_err(|e| failed(format!("{e}")))?;
        let raw = match tokio::time::timeout(
            self.timeout,
            client.pull_manifest_raw(&oci, &RegistryAuth::Anonymous, &[OCI_IMAGE_MEDIA_TYPE]),
        )
        .await
        .map_err(|_| failed("the registry did not answer in time".into()))?
        {
            Ok((raw, _)) => raw,
            // No signature tag: unsigned.
            Err(oci_client::errors::OciDistributionError::ImageManifestNotFoundError(_)) => {
                return Ok(Vec::new());
            }
            Err(oci_client::errors::OciDistributionError::RegistryError { envelope, .. })
                if envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        oci_client::errors::OciErrorCode::ManifestUnknown
                            | oci_client::errors::OciErrorCode::NameUnknown
                    )
                }) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(failed(format!("reading signatures: {e}"))),
        };
        let manifest: OciImageManifest = serde_json::from_slice(&raw)
            .map_err(|e| failed(format!("the signature manifest does not parse: {e}")))?;
        let mut found = Vec::new();
        for (layer, signature_b64) in cosign_layers(&manifest) {
            let mut payload = Vec::new();
            tokio::time::timeout(self.timeout, client.pull_blob(&oci, layer, &mut payload))
                .await
                .map_err(|_| failed("the registry did not answer in time".into()))?
                .map_err(|e| failed(format!("reading a signature payload: {e}")))?;
            found.push(crate::trust::FoundSignature {
                payload,
                signature_b64,
            });
        }
        Ok(found)
    }

    fn client(&self, reference: &OciReference) -> Result<Client, String> {
        // reqwest needs a process-wide rustls provider; kube does not install one. Installing
        // an already installed provider is a harmless no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let protocol = if reference.is_loopback() {
            ClientProtocol::HttpsExcept(vec![reference.registry.clone()])
        } else {
            ClientProtocol::Https
        };
        Client::try_from(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(self.timeout),
            extra_root_certificates: self
                .extra_roots
                .iter()
                .map(|der| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Der,
                    data: der.clone(),
                })
                .collect(),
            ..ClientConfig::default()
        })
        .map_err(|e| e.to_string())
    }

    /// The module `reference` pins, with `package` as its entry package: from memory, from the
    /// disk cache (re-hashed), or from the registry.
    pub async fn fetch(
        &self,
        reference: &OciReference,
        package: &str,
    ) -> Result<Arc<ModuleSource>, FetchError> {
        if let Some(found) = self.cached_locally(reference, package) {
            return Ok(found);
        }
        if let Some(vendored) = self.vendored_module(reference, package) {
            return vendored;
        }
        let (manifest, archive) = self.pull(reference).await?;
        let source = Arc::new(unpack(reference, &manifest, &archive, package)?);
        if let Some(dir) = &self.cache_dir
            && let Err(error) = store(dir, &reference.digest, &manifest, &archive)
        {
            // The module is verified and in memory; only a later restart pays for this.
            tracing::warn!(%error, reference = %reference, "could not write the module cache");
        }
        self.remember(reference, package, source.clone());
        tracing::info!(reference = %reference, digest = %source.digest(), "fetched platform module");
        Ok(source)
    }

    /// The module when it is in memory, in the disk cache or in a vendored layout (and still
    /// hashes right); never touches the network. What a registry outage leaves to render with.
    pub fn cached(&self, reference: &OciReference, package: &str) -> Option<Arc<ModuleSource>> {
        self.cached_locally(reference, package).or_else(|| {
            match self.vendored_module(reference, package)? {
                Ok(found) => Some(found),
                Err(error) => {
                    tracing::warn!(%error, "a vendored module fails its checks; not used");
                    None
                }
            }
        })
    }

    /// The module from a vendored layout holding its manifest, checked as a pull is; `None`
    /// when no layout holds it. Never the network.
    fn vendored_module(
        &self,
        reference: &OciReference,
        package: &str,
    ) -> Option<Result<Arc<ModuleSource>, FetchError>> {
        let (layout, manifest) = self.vendored.as_ref()?.manifest(&reference.digest)?;
        let unreadable = |what: &str, e: std::io::Error| FetchError::FetchFailed {
            reference: reference.to_string(),
            message: format!(
                "reading {what} from the vendored layout {}: {e}",
                layout.display()
            ),
        };
        let loaded = manifest
            .map_err(|e| unreadable("the manifest", e))
            .and_then(|raw| {
                verify(reference, "the manifest", &raw, &reference.digest)?;
                let zip = parse_manifest(reference, &raw)?.layers[0].digest.clone();
                let limit = u64::try_from(MAX_ARCHIVE_BYTES).unwrap_or(u64::MAX);
                let archive = VendoredModules::read_blob(&layout, &zip, limit)
                    .map_err(|e| unreadable("the module zip", e))?;
                Ok((raw, archive))
            })
            .and_then(|(raw, archive)| unpack(reference, &raw, &archive, package));
        Some(loaded.map(|source| {
            let source = Arc::new(source);
            self.remember(reference, package, source.clone());
            tracing::info!(reference = %reference, layout = %layout.display(), digest = %source.digest(), "platform module served from a vendored layout");
            source
        }))
    }

    /// The module from memory or the disk cache.
    fn cached_locally(&self, reference: &OciReference, package: &str) -> Option<Arc<ModuleSource>> {
        let key = (reference.digest.clone(), package.to_string());
        if let Some(found) = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Some(found.clone());
        }
        let dir = self.cache_dir.as_ref()?;
        let (manifest, archive) = load(dir, &reference.digest)?;
        match unpack(reference, &manifest, &archive, package) {
            Ok(source) => {
                let source = Arc::new(source);
                self.remember(reference, package, source.clone());
                Some(source)
            }
            Err(error) => {
                tracing::warn!(%error, "the module cache holds content that fails its checks; fetching again");
                let _ = std::fs::remove_dir_all(entry_dir(dir, &reference.digest));
                None
            }
        }
    }

    fn remember(&self, reference: &OciReference, package: &str, source: Arc<ModuleSource>) {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((reference.digest.clone(), package.to_string()), source);
    }

    /// Pulls the manifest and the module zip, each checked against its digest.
    async fn pull(&self, reference: &OciReference) -> Result<(Vec<u8>, Vec<u8>), FetchError> {
        let failed = |message: String| FetchError::FetchFailed {
            reference: reference.to_string(),
            message,
        };
        let client = self.client(reference).map_err(failed)?;
        let oci: Reference = format!(
            "{}/{}@{}",
            reference.registry, reference.repository, reference.digest
        )
        .parse()
        .map_err(|e| failed(format!("{e}")))?;
        let (raw, _) = tokio::time::timeout(
            self.timeout,
            client.pull_manifest_raw(&oci, &RegistryAuth::Anonymous, &[OCI_IMAGE_MEDIA_TYPE]),
        )
        .await
        .map_err(|_| failed("the registry did not answer in time".into()))?
        .map_err(|e| pull_error(reference, "the manifest", &reference.digest, e))?;
        // The client checks the manifest against the digest too; checking here keeps the rule
        // in one place we test.
        verify(reference, "the manifest", &raw, &reference.digest)?;
        let manifest = parse_manifest(reference, &raw)?;
        let zip = &manifest.layers[0];
        let mut archive = Vec::new();
        tokio::time::timeout(self.timeout, client.pull_blob(&oci, zip, &mut archive))
            .await
            .map_err(|_| failed("the registry did not answer in time".into()))?
            .map_err(|e| pull_error(reference, "the module zip", &zip.digest, e))?;
        verify(reference, "the module zip", &archive, &zip.digest)?;
        Ok((raw.to_vec(), archive))
    }
}

/// The layers of a cosign signature manifest that carry a signature: (layer, base64 signature).
/// A layer larger than 64 KiB is no signature payload and is skipped.
fn cosign_layers(
    manifest: &OciImageManifest,
) -> Vec<(&oci_client::manifest::OciDescriptor, String)> {
    manifest
        .layers
        .iter()
        .filter(|l| l.media_type == crate::trust::COSIGN_PAYLOAD_MEDIA_TYPE)
        .filter(|l| (0..=64 * 1024).contains(&l.size))
        .filter_map(|l| {
            let signature = l
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::trust::COSIGN_SIGNATURE_ANNOTATION))?;
            Some((l, signature.clone()))
        })
        .collect()
}

/// The keys a module from this source must be signed by (`None`: no signature asked), or why
/// the source is refused.
fn keys_for(
    reference: &OciReference,
    policy: &crate::trust::ModulePolicy,
) -> Result<Option<Vec<String>>, FetchError> {
    use crate::trust::SourceDecision;
    let source = format!("{}/{}", reference.registry, reference.repository);
    match policy.decide(&source) {
        SourceDecision::Denied { pattern } => Err(FetchError::SourceDenied {
            reference: reference.to_string(),
            message: format!("the module policy denies sources matching {pattern:?}"),
        }),
        SourceDecision::NotAllowed => Err(FetchError::SourceDenied {
            reference: reference.to_string(),
            message: format!("no rule of the module policy allows {source}"),
        }),
        SourceDecision::Unverified => Ok(None),
        // A rule asking for a signature is never skipped: SSH signers cannot sign an OCI module.
        SourceDecision::Signed { pattern, keys, .. } if keys.is_empty() => {
            Err(FetchError::SignatureInvalid {
                reference: reference.to_string(),
                message: format!(
                    "the rule {pattern:?} lists only allowedSigners, which verify signed git commits and tags; an OCI module is verified against cosign keys: add keys to the rule, or give this registry a rule of its own"
                ),
            })
        }
        SourceDecision::Signed { keys, .. } => Ok(Some(keys)),
    }
}

/// An error of a pull: the client's own digest check failing is a DigestMismatch (content
/// that does not hash to what was asked for), anything else a FetchFailed.
fn pull_error(
    reference: &OciReference,
    what: &'static str,
    expected: &str,
    error: oci_client::errors::OciDistributionError,
) -> FetchError {
    match error {
        oci_client::errors::OciDistributionError::DigestError(_) => FetchError::DigestMismatch {
            reference: reference.to_string(),
            what,
            expected: expected.to_string(),
            got: "a different digest".into(),
        },
        other => FetchError::FetchFailed {
            reference: reference.to_string(),
            message: other.to_string(),
        },
    }
}

/// Checks `bytes` hash to `expected`.
fn verify(
    reference: &OciReference,
    what: &'static str,
    bytes: &[u8],
    expected: &str,
) -> Result<(), FetchError> {
    let got = sha256_of(bytes);
    if got == expected {
        Ok(())
    } else {
        Err(FetchError::DigestMismatch {
            reference: reference.to_string(),
            what,
            expected: expected.to_string(),
            got,
        })
    }
}

/// The manifest, checked to be a CUE module's (the checks CUE's own registry client makes).
fn parse_manifest(reference: &OciReference, raw: &[u8]) -> Result<OciImageManifest, FetchError> {
    let not_module = |message: String| FetchError::NotACueModule {
        reference: reference.to_string(),
        message,
    };
    let manifest: OciImageManifest = serde_json::from_slice(raw)
        .map_err(|e| not_module(format!("the manifest does not parse: {e}")))?;
    if manifest.config.media_type != CUE_MODULE_CONFIG {
        return Err(not_module(format!(
            "config media type is {:?}, not {CUE_MODULE_CONFIG:?}",
            manifest.config.media_type
        )));
    }
    let types: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    if types != [CUE_MODULE_ZIP, CUE_MODULE_FILE] {
        return Err(not_module(format!(
            "layers are {types:?}, not [{CUE_MODULE_ZIP:?}, {CUE_MODULE_FILE:?}]"
        )));
    }
    if !(0..=MAX_ARCHIVE_BYTES).contains(&manifest.layers[0].size) {
        return Err(not_module(format!(
            "the module zip is {} bytes; at most {MAX_ARCHIVE_BYTES}",
            manifest.layers[0].size
        )));
    }
    Ok(manifest)
}

/// Re-checks a manifest and archive pair (from the registry or the disk cache) and unpacks it.
fn unpack(
    reference: &OciReference,
    raw_manifest: &[u8],
    archive: &[u8],
    package: &str,
) -> Result<ModuleSource, FetchError> {
    verify(reference, "the manifest", raw_manifest, &reference.digest)?;
    let manifest = parse_manifest(reference, raw_manifest)?;
    verify(
        reference,
        "the module zip",
        archive,
        &manifest.layers[0].digest,
    )?;
    ModuleSource::from_zip(archive, package).map_err(|e| FetchError::NotACueModule {
        reference: reference.to_string(),
        message: e.to_string(),
    })
}

fn store_signatures(cache: &Path, digest: &str, found: &[crate::trust::FoundSignature]) {
    let list: Vec<serde_json::Value> = found
        .iter()
        .map(|s| {
            serde_json::json!({
                "payload": String::from_utf8_lossy(&s.payload),
                "signature": s.signature_b64,
            })
        })
        .collect();
    let dir = entry_dir(cache, digest);
    let tmp = dir.join(format!(".signatures.json.{}", std::process::id()));
    let written = serde_json::to_vec(&list)
        .map_err(std::io::Error::other)
        .and_then(|body| std::fs::write(&tmp, body))
        .and_then(|()| std::fs::rename(&tmp, dir.join("signatures.json")));
    if let Err(error) = written {
        tracing::warn!(%error, "could not cache the module's signatures");
    }
}

/// Cached signatures are only ever re-verified, never trusted as such: a tampered file fails
/// the signature check like a tampered registry would.
fn load_signatures(cache: &Path, digest: &str) -> Option<Vec<crate::trust::FoundSignature>> {
    let text = std::fs::read(entry_dir(cache, digest).join("signatures.json")).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&text).ok()?;
    Some(
        list.iter()
            .filter_map(|v| {
                Some(crate::trust::FoundSignature {
                    payload: v.get("payload")?.as_str()?.as_bytes().to_vec(),
                    signature_b64: v.get("signature")?.as_str()?.to_string(),
                })
            })
            .collect(),
    )
}

fn entry_dir(cache: &Path, digest: &str) -> PathBuf {
    // Only `sha256:<hex>` names a cache entry (OciReference::parse checks it too); anything
    // else maps to a name that cannot leave the cache directory.
    let safe = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(|| "invalid-digest".to_string(), |h| format!("sha256-{h}"));
    cache.join(safe)
}

fn load(cache: &Path, digest: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = entry_dir(cache, digest);
    match (
        std::fs::read(dir.join("manifest.json")),
        std::fs::read(dir.join("module.zip")),
    ) {
        (Ok(manifest), Ok(archive)) => Some((manifest, archive)),
        _ => {
            // Half an entry is no entry: drop it so the next fetch stores a whole one.
            if dir.exists() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            None
        }
    }
}

/// Writes both files into a temporary directory and renames it into place, so a reader never
/// sees half an entry.
fn store(cache: &Path, digest: &str, manifest: &[u8], archive: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(cache)?;
    let target = entry_dir(cache, digest);
    if target.exists() {
        return Ok(());
    }
    // Unique per call: two reconciles in one process may store the same digest at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = cache.join(format!(
        ".tmp-{}-{}-{}",
        digest.replace(':', "-"),
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(tmp.join("manifest.json"), manifest)?;
    std::fs::write(tmp.join("module.zip"), archive)?;
    match std::fs::rename(&tmp, &target) {
        Ok(()) => Ok(()),
        // Another process stored the same digest first: same content by construction.
        Err(_) if target.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(digest: &str) -> OciReference {
        OciReference {
            registry: "127.0.0.1:5000".into(),
            repository: "platform.example.com/platform".into(),
            digest: digest.into(),
        }
    }

    fn manifest(zip_digest: &str, config_type: &str, layers: &[&str]) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|t| serde_json::json!({"mediaType": t, "digest": zip_digest, "size": 10}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config_type, "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn content_is_used_only_when_every_digest_matches() {
        let archive = b"zip bytes".to_vec();
        let good = manifest(
            &sha256_of(&archive),
            CUE_MODULE_CONFIG,
            &[CUE_MODULE_ZIP, CUE_MODULE_FILE],
        );
        let pinned = reference(&sha256_of(&good));
        // (manifest, archive, reference) → expected reason; None: the checks pass (the zip then
        // fails to unpack, which is a NotACueModule of its own).
        let tampered_archive = b"zip bytez".to_vec();
        let wrong_type = manifest(
            &sha256_of(&archive),
            "application/vnd.oci.image.config.v1+json",
            &[CUE_MODULE_ZIP, CUE_MODULE_FILE],
        );
        let one_layer = manifest(&sha256_of(&archive), CUE_MODULE_CONFIG, &[CUE_MODULE_ZIP]);
        type Case<'a> = (&'a [u8], &'a [u8], OciReference, &'a str, &'a str);
        let cases: [Case<'_>; 5] = [
            (
                &good,
                &archive,
                pinned.clone(),
                "NotACueModule",
                "not a zip archive",
            ),
            (
                &good,
                &tampered_archive,
                pinned.clone(),
                "DigestMismatch",
                "the module zip does not match",
            ),
            (
                &good,
                &archive,
                reference(&sha256_of(b"another manifest")),
                "DigestMismatch",
                "the manifest does not match",
            ),
            (
                &wrong_type,
                &archive,
                reference(&sha256_of(&wrong_type)),
                "NotACueModule",
                "config media type",
            ),
            (
                &one_layer,
                &archive,
                reference(&sha256_of(&one_layer)),
                "NotACueModule",
                "layers are",
            ),
        ];
        for (i, (raw, zip, r, reason, text)) in cases.into_iter().enumerate() {
            let err = unpack(&r, raw, zip, "./p").unwrap_err();
            assert_eq!(err.reason(), reason, "case {i}: {err}");
            assert!(err.to_string().contains(text), "case {i}: {err}");
            assert!(
                !err.is_transient(),
                "case {i}: content that fails a check is never retried into use"
            );
        }
    }

    #[test]
    fn the_disk_cache_is_rehashed_when_read() {
        let dir = std::env::temp_dir().join(format!("cuebe-remote-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let archive = b"zip bytes".to_vec();
        let raw = manifest(
            &sha256_of(&archive),
            CUE_MODULE_CONFIG,
            &[CUE_MODULE_ZIP, CUE_MODULE_FILE],
        );
        let digest = sha256_of(&raw);
        store(&dir, &digest, &raw, &archive).unwrap();
        assert_eq!(load(&dir, &digest), Some((raw.clone(), archive.clone())));
        // Someone edits the cached zip: the fetcher does not use it, and drops the entry.
        std::fs::write(entry_dir(&dir, &digest).join("module.zip"), b"zip bytez").unwrap();
        let fetcher = ModuleFetcher::new(Some(dir.clone()));
        assert!(fetcher.cached(&reference(&digest), "./p").is_none());
        assert!(!entry_dir(&dir, &digest).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
