//! Platform modules: the CUE files a platform team owns, identified by an immutable digest.
//!
//! Owns: [`ModuleSource`] (in-memory files + entry package + digest), [`PlatformRef`] (what an
//! instance asks for) and [`ModuleSet`] (the embedded modules an operator ships, resolved by
//! version). Nothing here evaluates CUE.
//!
//! Invariant: the digest is a pure function of the file names and bytes (sorted by name), so two
//! machines with the same module compute the same digest and the same `renderHash`.
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod git;
pub use git::{
    GitReference, GitRepository, GitRevision, GitScheme, InvalidGitReference, ResolvedGitReference,
};

/// The files of one CUE module, held in memory, and the package to evaluate.
///
/// ```
/// use cuebe_core::module::ModuleSource;
/// let m = ModuleSource::new([("cue.mod/module.cue", "module: \"a.b/c@v0\"\n")], ".");
/// assert!(m.digest().starts_with("sha256:"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ModuleSource {
    files: BTreeMap<String, String>,
    package: String,
    digest: String,
}

impl fmt::Debug for ModuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleSource")
            .field("package", &self.package)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("digest", &self.digest)
            .finish()
    }
}

impl ModuleSource {
    /// The files and package as the CUE bridge loads them, with the standard library
    /// ([`crate::stdlib`]) as the only modules its `deps` may name.
    pub fn module_files(&self) -> cuebe_cue_sys::module::ModuleFiles {
        cuebe_cue_sys::module::ModuleFiles {
            files: self.files.clone(),
            package: self.package.clone(),
            dependencies: crate::stdlib::dependencies(),
        }
    }

    /// Files as `(path relative to the module root, content)`; `package` is the entry package,
    /// e.g. `./webservice`.
    pub fn new<P: Into<String>, C: Into<String>>(
        files: impl IntoIterator<Item = (P, C)>,
        package: impl Into<String>,
    ) -> Self {
        let files: BTreeMap<String, String> = files
            .into_iter()
            .map(|(p, c)| (p.into(), c.into()))
            .collect();
        let package = package.into();
        let mut h = Sha256::new();
        h.update(package.as_bytes());
        h.update([0]);
        for (path, content) in &files {
            h.update(path.as_bytes());
            h.update([0]);
            h.update((content.len() as u64).to_le_bytes());
            h.update(content.as_bytes());
        }
        let digest = format!("sha256:{}", hex::encode(h.finalize()));
        Self {
            files,
            package,
            digest,
        }
    }

    /// Reads every `.cue` file under `root` (including `cue.mod/module.cue`).
    pub fn from_dir(
        root: impl AsRef<std::path::Path>,
        package: impl Into<String>,
    ) -> std::io::Result<Self> {
        let root = root.as_ref();
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "cue") {
                    let rel = path
                        .strip_prefix(root)
                        .map_err(std::io::Error::other)?
                        .to_string_lossy()
                        .replace('\\', "/");
                    files.push((rel, std::fs::read_to_string(&path)?));
                }
            }
        }
        Ok(Self::new(files, package))
    }

    /// A copy with `extra` files added or replaced (used by tests to inject a change).
    pub fn with_files<P: Into<String>, C: Into<String>>(
        &self,
        extra: impl IntoIterator<Item = (P, C)>,
    ) -> Self {
        let mut files = self.files.clone();
        files.extend(extra.into_iter().map(|(p, c)| (p.into(), c.into())));
        Self::new(files, self.package.clone())
    }

    /// `sha256:<hex>` over the package name and every file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The files, by path.
    pub fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }

    /// The entry package.
    pub fn package(&self) -> &str {
        &self.package
    }
}

/// Which platform module an instance asks for (`spec.platformRef`): exactly one of an embedded
/// version, a published module pinned by digest, or a directory of a git repository at a
/// branch, tag or commit (the CRD enforces "exactly one" at admission).
///
/// ```
/// use cuebe_core::module::PlatformRef;
/// let pinned: PlatformRef = serde_json::from_value(serde_json::json!({
///     "oci": "oci://registry.example.com/platform/webservice@sha256:0000000000000000000000000000000000000000000000000000000000000000"
/// })).unwrap();
/// assert!(pinned.oci_reference().unwrap().is_ok());
/// let tracked: PlatformRef = serde_json::from_value(serde_json::json!({
///     "git": "git+https://git.example.com/platform/modules?ref=main&dir=webservice"
/// })).unwrap();
/// assert!(tracked.git_reference().unwrap().is_ok());
/// assert_eq!(PlatformRef::embedded("1.0.0").embedded.as_deref(), Some("1.0.0"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.embedded), has(self.oci), has(self.git), has(self.channel)].filter(x, x).size() == 1",
    "message": "spec.platformRef: set exactly one of embedded (a version built into the operator), oci (oci://REGISTRY/REPOSITORY@sha256:DIGEST), git (git+https://HOST/REPO?ref=REF&dir=PATH) or channel (the name of a PlatformChannel)"
}]))]
pub struct PlatformRef {
    /// A version of a module embedded in the operator binary, e.g. `1.0.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub embedded: Option<String>,
    /// A module published with `cue mod publish`, pinned by the digest of its OCI manifest:
    /// `oci://REGISTRY/REPOSITORY@sha256:<64 hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^oci://[^@\s]+@sha256:[0-9a-f]{64}$"))]
    #[schemars(length(max = 1024))]
    pub oci: Option<String>,
    /// A directory of a git repository at a branch, tag or full commit sha:
    /// `git+https://HOST/REPO?ref=REF&dir=PATH` (`dir` defaults to the repository's root;
    /// `git+file:///PATH` and, on loopback, `git://HOST/REPO` are accepted too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(git\+https|git\+file|git)://[^?#@\s]+\?([^&#\s]+&)*ref=[^&#\s]+(&[^&#\s]+)*$"
    ))]
    #[schemars(length(max = 1024))]
    pub git: Option<String>,
    /// The name of a `PlatformChannel` (cluster-scoped, group `cuebe.dev`): the instance renders
    /// with the module the channel's rollout gives it (previewed, then moved in steps). An instance that
    /// pins `embedded`, `oci` or `git` is never moved by a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    #[schemars(length(max = 1024))]
    pub channel: Option<String>,
}

impl std::fmt::Display for PlatformRef {
    /// The reference as one string: `embedded:VERSION`, the `oci://…` or `git+…` reference, or
    /// `channel:NAME`. Rollouts compare modules by it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.embedded, &self.oci, &self.git, &self.channel) {
            (Some(v), ..) => write!(f, "embedded:{v}"),
            (_, Some(r), ..) => f.write_str(r),
            (_, _, Some(r), _) => f.write_str(r),
            (_, _, _, Some(c)) => write!(f, "channel:{c}"),
            _ => f.write_str("embedded:default"),
        }
    }
}

impl PlatformRef {
    /// A reference to an embedded version.
    pub fn embedded(version: impl Into<String>) -> Self {
        Self {
            embedded: Some(version.into()),
            ..Self::default()
        }
    }

    /// The parsed `oci` reference, when the instance names one.
    pub fn oci_reference(&self) -> Option<Result<OciReference, InvalidReference>> {
        self.oci.as_deref().map(OciReference::parse)
    }

    /// The parsed `git` reference, when the instance names one.
    pub fn git_reference(&self) -> Option<Result<GitReference, InvalidGitReference>> {
        self.git.as_deref().map(GitReference::parse)
    }
}

/// A published module pinned by digest: `oci://REGISTRY/REPOSITORY@sha256:<manifest digest>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciReference {
    /// `host[:port]`.
    pub registry: String,
    /// The repository, e.g. `platform.example.com/platform`.
    pub repository: String,
    /// `sha256:<64 hex>`: the digest of the OCI manifest.
    pub digest: String,
}

/// A `spec.platformRef.oci` that is not a digest-pinned OCI reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "spec.platformRef.oci: {reason}: {reference:?} (expected oci://REGISTRY/REPOSITORY@sha256:<64 lowercase hex>)"
)]
pub struct InvalidReference {
    /// What was given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl OciReference {
    /// Parses `oci://REGISTRY/REPOSITORY@sha256:<64 hex>`. A tag is refused: a module is pinned
    /// by an immutable digest, so that the same reference always renders the same objects.
    ///
    /// ```
    /// use cuebe_core::module::OciReference;
    /// let r = OciReference::parse("oci://127.0.0.1:5000/platform.example.com/platform@sha256:602bec774d6b83f7866f4a5f32ce39764383183940408a10dfaa4aa75912d0f6").unwrap();
    /// assert_eq!(r.registry, "127.0.0.1:5000");
    /// assert_eq!(r.repository, "platform.example.com/platform");
    /// assert!(r.is_loopback());
    /// ```
    pub fn parse(reference: &str) -> Result<Self, InvalidReference> {
        let bad = |reason| InvalidReference {
            reference: reference.to_string(),
            reason,
        };
        let rest = reference
            .strip_prefix("oci://")
            .ok_or_else(|| bad("must start with oci://"))?;
        let (path, digest) = rest
            .rsplit_once('@')
            .ok_or_else(|| bad("must be pinned by digest (@sha256:...); tags move"))?;
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("the digest must be sha256"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the digest must be 64 lowercase hex characters"));
        }
        let (registry, repository) = path
            .split_once('/')
            .ok_or_else(|| bad("names no repository"))?;
        if registry.is_empty() || repository.is_empty() {
            return Err(bad("names no registry or repository"));
        }
        // The policy matches this string, so it must be the host that is contacted, spelled
        // one way: lowercase, and a host a registry client takes as one (a first component
        // with no '.' or ':' would be read as a Docker Hub path).
        if registry != registry.to_ascii_lowercase() {
            return Err(bad("the registry must be lowercase"));
        }
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad(
                "the registry must be a host name with a dot, a host:port, or localhost",
            ));
        }
        if registry.ends_with(":443") {
            return Err(bad("leave out :443 (HTTPS is the default)"));
        }
        if repository.contains(':') {
            return Err(bad("must not carry a tag besides the digest"));
        }
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if !repository.chars().all(valid) || repository.contains("//") {
            return Err(bad(
                "the repository may hold only lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        Ok(Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            digest: digest.to_string(),
        })
    }

    /// The registry is on this machine (`localhost`, `127.0.0.1`, `[::1]`): plain HTTP is
    /// allowed there, as CUE allows it, and nowhere else.
    pub fn is_loopback(&self) -> bool {
        let host = self
            .registry
            .rsplit_once(':')
            .filter(|(h, port)| !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(self.registry.as_str(), |(h, _)| h);
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }
}

impl fmt::Display for OciReference {
    /// The canonical form, as `status.platformRefResolved` shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "oci://{}/{}@{}",
            self.registry, self.repository, self.digest
        )
    }
}

/// Why a module zip (the first layer `cue mod publish` pushes) cannot be a module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module archive: {0}")]
pub struct BadArchive(pub String);

/// The most a module archive may hold once unpacked: platform modules are text, far below it.
pub const MAX_MODULE_BYTES: u64 = 16 * 1024 * 1024;

impl ModuleSource {
    /// The module in a zip as `cue mod publish` writes it (paths relative to the module root,
    /// `cue.mod/module.cue` included). Only `.cue` files are kept; paths that leave the root,
    /// files that are not UTF-8 and archives over [`MAX_MODULE_BYTES`] are refused.
    pub fn from_zip(bytes: &[u8], package: impl Into<String>) -> Result<Self, BadArchive> {
        use std::io::Read;
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| BadArchive(format!("not a zip archive: {e}")))?;
        let mut files = Vec::new();
        let mut total: u64 = 0;
        for i in 0..archive.len() {
            let mut entry = archive
                .by_index(i)
                .map_err(|e| BadArchive(format!("entry {i}: {e}")))?;
            if entry.is_dir() {
                continue;
            }
            let name = entry.name().to_string();
            let Some(path) = entry.enclosed_name() else {
                return Err(BadArchive(format!("{name:?} leaves the module root")));
            };
            let path = path.to_string_lossy().replace('\\', "/");
            if !path.ends_with(".cue") {
                continue;
            }
            // Count what is actually inflated, not the sizes the archive declares: a zip can
            // claim 0 bytes and unpack to gigabytes.
            let mut text = String::new();
            (&mut entry)
                .take(MAX_MODULE_BYTES - total + 1)
                .read_to_string(&mut text)
                .map_err(|e| BadArchive(format!("{path}: {e}")))?;
            total += text.len() as u64;
            if total > MAX_MODULE_BYTES {
                return Err(BadArchive(format!(
                    "unpacks to more than {} MiB",
                    MAX_MODULE_BYTES / (1024 * 1024)
                )));
            }
            files.push((path, text));
        }
        if !files.iter().any(|(p, _)| p == "cue.mod/module.cue") {
            return Err(BadArchive("has no cue.mod/module.cue".into()));
        }
        Ok(Self::new(files, package))
    }
}

impl ModuleSource {
    /// The module from `(path relative to the module root, bytes)` pairs read from somewhere
    /// other than a zip (a git tree): the same rules as [`ModuleSource::from_zip`]. Only `.cue`
    /// files are kept; a path that leaves the root, a file that is not UTF-8, more than
    /// [`MAX_MODULE_BYTES`] in all and a module without `cue.mod/module.cue` are refused.
    ///
    /// ```
    /// use cuebe_core::module::ModuleSource;
    /// let m = ModuleSource::from_files(
    ///     [("cue.mod/module.cue".to_string(), b"module: \"a.b/c@v0\"\n".to_vec()),
    ///      ("README.md".to_string(), b"skipped".to_vec())],
    ///     ".",
    /// ).unwrap();
    /// assert_eq!(m.files().len(), 1);
    /// ```
    pub fn from_files(
        files: impl IntoIterator<Item = (String, Vec<u8>)>,
        package: impl Into<String>,
    ) -> Result<Self, BadArchive> {
        let mut kept = Vec::new();
        let mut total: u64 = 0;
        for (path, bytes) in files {
            if !path.ends_with(".cue") {
                continue;
            }
            if path.starts_with('/')
                || path
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(BadArchive(format!("{path:?} leaves the module root")));
            }
            total += bytes.len() as u64;
            if total > MAX_MODULE_BYTES {
                return Err(BadArchive(format!(
                    "holds more than {} MiB of .cue files",
                    MAX_MODULE_BYTES / (1024 * 1024)
                )));
            }
            let text =
                String::from_utf8(bytes).map_err(|_| BadArchive(format!("{path}: not UTF-8")))?;
            kept.push((path, text));
        }
        if !kept.iter().any(|(p, _)| p == "cue.mod/module.cue") {
            return Err(BadArchive("has no cue.mod/module.cue".into()));
        }
        Ok(Self::new(kept, package))
    }
}

/// An embedded module with its version.
#[derive(Debug, Clone)]
pub struct EmbeddedModule {
    /// Semantic version, e.g. `1.0.0`.
    pub version: String,
    /// The module's files.
    pub source: Arc<ModuleSource>,
}

/// The embedded modules an operator ships; the newest is the default.
#[derive(Debug, Clone, Default)]
pub struct ModuleSet {
    modules: Vec<EmbeddedModule>,
}

impl ModuleSet {
    /// A set with one module.
    pub fn single(version: impl Into<String>, source: ModuleSource) -> Self {
        Self::default().with(version, source)
    }

    /// A set of (version, module) pairs.
    ///
    /// ```
    /// use cuebe_core::module::{ModuleSet, ModuleSource};
    /// let module = |v: &str| ModuleSource::new([("cue.mod/module.cue", "module: \"example.com/m@v1\"\nlanguage: version: \"v0.12.0\"\n"), ("p/p.cue", v)], "./p");
    /// let set = ModuleSet::from_versions([("1.0.0", module("package p")), ("1.1.0", module("package p\n"))]);
    /// assert_eq!(set.versions().collect::<Vec<_>>(), ["1.0.0", "1.1.0"]);
    /// ```
    pub fn from_versions<V: Into<String>>(
        modules: impl IntoIterator<Item = (V, ModuleSource)>,
    ) -> Self {
        modules
            .into_iter()
            .fold(Self::default(), |set, (version, source)| {
                set.with(version, source)
            })
    }

    /// Adds a module version.
    pub fn with(mut self, version: impl Into<String>, source: ModuleSource) -> Self {
        self.modules.push(EmbeddedModule {
            version: version.into(),
            source: Arc::new(source),
        });
        self.modules.sort_by_key(|m| version_key(&m.version));
        self
    }

    /// Resolves a reference; `None` means the newest embedded version.
    pub fn resolve(&self, r: Option<&PlatformRef>) -> Result<&EmbeddedModule, UnknownModule> {
        let found = match r {
            None => self.modules.last(),
            Some(PlatformRef {
                embedded: Some(version),
                ..
            }) => self.modules.iter().find(|m| &m.version == version),
            // Only embedded versions resolve here; published modules are fetched by the runtime
            // and handed to the renderer with the input.
            Some(_) => None,
        };
        found.ok_or_else(|| UnknownModule {
            requested: r
                .map(|r| r.embedded.clone().unwrap_or_else(|| r.to_string()))
                .unwrap_or_default(),
            available: self.modules.iter().map(|m| m.version.clone()).collect(),
        })
    }

    /// The entry package of the newest module (`./webservice`): published modules of the same
    /// abstraction are laid out the same way.
    pub fn entry_package(&self) -> Option<&str> {
        self.modules.last().map(|m| m.source.package())
    }

    /// All versions, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(|m| m.version.as_str())
    }
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// A `platformRef` that names no embedded module.
#[derive(Debug, Clone, thiserror::Error)]
#[error("spec.platformRef.embedded: no embedded platform module {requested:?} (available: {})", available.join(", "))]
pub struct UnknownModule {
    /// What was asked for.
    pub requested: String,
    /// What the operator ships.
    pub available: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "602bec774d6b83f7866f4a5f32ce39764383183940408a10dfaa4aa75912d0f6";

    #[test]
    fn oci_references_are_pinned_by_digest_and_name_what_is_wrong() {
        let ok = |r: &str| OciReference::parse(r).map(|o| (o.registry, o.repository));
        let reason = |r: &str| OciReference::parse(r).err().map(|e| e.reason);
        assert_eq!(
            ok(&format!(
                "oci://ghcr.io/acme/platform/webservice@sha256:{HEX}"
            )),
            Ok(("ghcr.io".into(), "acme/platform/webservice".into()))
        );
        assert_eq!(
            ok(&format!(
                "oci://127.0.0.1:5000/platform.example.com/platform@sha256:{HEX}"
            )),
            Ok((
                "127.0.0.1:5000".into(),
                "platform.example.com/platform".into()
            ))
        );
        let cases: [(String, &str); 10] = [
            (
                format!("ghcr.io/acme/platform@sha256:{HEX}"),
                "must start with oci://",
            ),
            (
                "oci://ghcr.io/acme/platform:v1.0.0".into(),
                "must be pinned by digest (@sha256:...); tags move",
            ),
            (
                format!("oci://ghcr.io/acme/platform@sha512:{HEX}"),
                "the digest must be sha256",
            ),
            (
                "oci://ghcr.io/acme/platform@sha256:abc".into(),
                "the digest must be 64 lowercase hex characters",
            ),
            (
                format!("oci://ghcr.io/acme/platform@sha256:{}", HEX.to_uppercase()),
                "the digest must be 64 lowercase hex characters",
            ),
            (format!("oci://ghcr.io@sha256:{HEX}"), "names no repository"),
            (
                format!("oci://ghcr.io/acme/platform:v1@sha256:{HEX}"),
                "must not carry a tag besides the digest",
            ),
            (
                format!("oci://GHCR.io/acme/platform@sha256:{HEX}"),
                "the registry must be lowercase",
            ),
            (
                format!("oci://myreg/team/platform@sha256:{HEX}"),
                "the registry must be a host name with a dot, a host:port, or localhost",
            ),
            (
                format!("oci://ghcr.io:443/acme/platform@sha256:{HEX}"),
                "leave out :443 (HTTPS is the default)",
            ),
        ];
        for (reference, expected) in cases {
            assert_eq!(reason(&reference), Some(expected), "{reference}");
        }
        let err = OciReference::parse("oci://x/y:v1").unwrap_err().to_string();
        assert!(err.starts_with("spec.platformRef.oci: "), "{err}");
    }

    #[test]
    fn only_loopback_registries_are_loopback() {
        let at = |registry: &str| OciReference {
            registry: registry.into(),
            repository: "p".into(),
            digest: format!("sha256:{HEX}"),
        };
        for (registry, loopback) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("127.0.0.1.evil.example.com", false),
            ("ghcr.io", false),
            ("registry.local:5000", false),
        ] {
            assert_eq!(at(registry).is_loopback(), loopback, "{registry}");
        }
    }

    fn zip_of(entries: &[(&str, &str)]) -> Vec<u8> {
        use std::io::Write;
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, content) in entries {
            out.start_file(*name, options).unwrap();
            out.write_all(content.as_bytes()).unwrap();
        }
        out.finish().unwrap().into_inner()
    }

    #[test]
    fn a_published_module_archive_becomes_the_same_module_as_its_files() {
        let module = "module: \"example.com/m@v1\"\nlanguage: version: \"v0.17.1\"\nsource: kind: \"self\"\n";
        let archive = zip_of(&[
            ("README.md", "not CUE"),
            ("cue.mod/module.cue", module),
            ("p/p.cue", "package p\nx: 1\n"),
        ]);
        let from_zip = ModuleSource::from_zip(&archive, "./p").unwrap();
        let from_files = ModuleSource::new(
            [
                ("cue.mod/module.cue", module),
                ("p/p.cue", "package p\nx: 1\n"),
            ],
            "./p",
        );
        assert_eq!(
            from_zip.digest(),
            from_files.digest(),
            "only .cue files, same digest"
        );

        let escaping = zip_of(&[("cue.mod/module.cue", module), ("../evil.cue", "x: 1")]);
        let err = ModuleSource::from_zip(&escaping, "./p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("leaves the module root"), "{err}");
        let no_module = zip_of(&[("p/p.cue", "package p")]);
        let err = ModuleSource::from_zip(&no_module, "./p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no cue.mod/module.cue"), "{err}");
        let err = ModuleSource::from_zip(b"not a zip", "./p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a zip archive"), "{err}");
    }

    #[test]
    fn files_from_a_tree_follow_the_archive_rules() {
        let module = "module: \"example.com/m@v1\"\n";
        let file = |p: &str, c: &[u8]| (p.to_string(), c.to_vec());
        let from_tree = ModuleSource::from_files(
            [
                file("README.md", b"not CUE"),
                file("cue.mod/module.cue", module.as_bytes()),
                file("p/p.cue", b"package p\n"),
            ],
            "./p",
        )
        .unwrap();
        let from_files = ModuleSource::new(
            [("cue.mod/module.cue", module), ("p/p.cue", "package p\n")],
            "./p",
        );
        assert_eq!(from_tree.digest(), from_files.digest());
        let big = vec![b' '; MAX_MODULE_BYTES as usize + 1];
        // (files, the refusal's start)
        type Files = Vec<(String, Vec<u8>)>;
        let cases: [(Files, &str); 4] = [
            (
                vec![file("p/p.cue", b"package p")],
                "has no cue.mod/module.cue",
            ),
            (
                vec![
                    file("cue.mod/module.cue", module.as_bytes()),
                    file("../x.cue", b""),
                ],
                "\"../x.cue\" leaves the module root",
            ),
            (
                vec![
                    file("cue.mod/module.cue", module.as_bytes()),
                    file("p/x.cue", &[0xff]),
                ],
                "p/x.cue: not UTF-8",
            ),
            (
                vec![
                    file("cue.mod/module.cue", module.as_bytes()),
                    file("p/big.cue", &big),
                ],
                "holds more than 16 MiB",
            ),
        ];
        for (files, expected) in cases {
            let err = ModuleSource::from_files(files, "./p").unwrap_err();
            assert!(err.0.starts_with(expected), "{err}");
        }
    }
}
