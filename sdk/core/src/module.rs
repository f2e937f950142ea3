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
    /// The files and package as the CUE bridge loads them.
    pub fn module_files(&self) -> cuebe_cue_sys::module::ModuleFiles {
        cuebe_cue_sys::module::ModuleFiles {
            files: self.files.clone(),
            package: self.package.clone(),
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

/// Which platform module an instance asks for (`spec.platformRef`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformRef {
    /// A version of a module embedded in the operator binary, e.g. `1.0.0`.
    pub embedded: String,
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
            Some(r) => self.modules.iter().find(|m| m.version == r.embedded),
        };
        found.ok_or_else(|| UnknownModule {
            requested: r.map(|r| r.embedded.clone()).unwrap_or_default(),
            available: self.modules.iter().map(|m| m.version.clone()).collect(),
        })
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
