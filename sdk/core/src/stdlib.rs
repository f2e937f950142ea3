//! cuebe's standard CUE library, `cuebe.dev/lib`: a CUE module of its own, versioned, that any
//! platform module may depend on (`deps: "cuebe.dev/lib@v0": v: "v0.1.0"` in its
//! `cue.mod/module.cue`).
//!
//! Owns: the library's files at every version this build ships (the sources are
//! `sdk/core/cue/lib/`), and the rule that a module's dependencies are resolved from them and
//! from nothing else.
//!
//! Packages:
//! - `cuebe.dev/lib/meta`: the instance's identity, the app.kubernetes.io labels with
//!   `managed-by: cuebe`, metadata per component.
//! - `cuebe.dev/lib/workload`: the pod spec of every workload kind (Deployment, StatefulSet,
//!   DaemonSet, ReplicaSet, Job, CronJob's job template, Pod) and every container, init
//!   containers included.
//! - `cuebe.dev/lib/policy`: output policy packs (`Restricted` and its parts, `Limits`,
//!   `AllowedRegistries`, `PinnedImages`) that check every container of every workload kind.
//! - `cuebe.dev/lib/readiness`: the default `readyWhen` of each kind, as data.
//!
//! Every load of a platform module ([`crate::module::ModuleSource::module_files`]) carries the
//! shipped versions to the CUE bridge, which serves them as the only registry a load has: a
//! module is loaded offline whether it is embedded, fetched by digest or read from git. The
//! `cue` CLI resolves the same dependency from a registry the library was published to
//! ([`LibraryVersion::write_to`] writes it out for `cue mod publish`).
//!
//! Invariant: a released version's files never change (a test pins each version's digest); a
//! change to the library is a new version, and the old version's files stay shipped so that
//! modules published against it keep rendering the same.
//!
//! ```
//! let lib = cuebe_core::stdlib::latest();
//! assert_eq!(lib.module, "cuebe.dev/lib@v0");
//! assert!(lib.files.iter().any(|(path, _)| *path == "policy/policy.cue"));
//! ```
use std::path::Path;
use std::sync::LazyLock;

use cuebe_cue_sys::module::DependencyModule;

/// The library's module path with its major version, as `deps` names it.
pub const MODULE: &str = "cuebe.dev/lib@v0";

/// One version of the library, as shipped.
#[derive(Debug, Clone, Copy)]
pub struct LibraryVersion {
    /// Module path with major version: [`MODULE`].
    pub module: &'static str,
    /// Full version, e.g. `v0.1.0`.
    pub version: &'static str,
    /// Files, path relative to the module root → content (`cue.mod/module.cue` included).
    pub files: &'static [(&'static str, &'static str)],
}

macro_rules! lib_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../cue/lib/", $path)))),*]
    };
}

/// Every shipped version, oldest first.
static VERSIONS: &[LibraryVersion] = &[LibraryVersion {
    module: MODULE,
    version: "v0.1.0",
    files: lib_files![
        "cue.mod/module.cue",
        "meta/meta.cue",
        "policy/policy.cue",
        "readiness/readiness.cue",
        "workload/workload.cue",
    ],
}];

/// Every version of the library this build ships, oldest first.
pub fn versions() -> &'static [LibraryVersion] {
    VERSIONS
}

/// The newest shipped version: the one a new platform module should require.
pub fn latest() -> LibraryVersion {
    // VERSIONS is a non-empty literal.
    VERSIONS[VERSIONS.len() - 1]
}

/// The shipped version `version` (`v0.1.0`), if this build has it.
pub fn version(version: &str) -> Option<LibraryVersion> {
    VERSIONS.iter().copied().find(|v| v.version == version)
}

static DEPENDENCIES: LazyLock<Vec<DependencyModule>> = LazyLock::new(|| {
    VERSIONS
        .iter()
        .map(|v| DependencyModule {
            module: v.module.to_string(),
            version: v.version.to_string(),
            files: v
                .files
                .iter()
                .map(|(p, c)| ((*p).to_string(), (*c).to_string()))
                .collect(),
        })
        .collect()
});

/// Every shipped version as the CUE bridge takes it: the only modules a platform module's
/// `deps` are resolved from.
pub fn dependencies() -> Vec<DependencyModule> {
    DEPENDENCIES.clone()
}

impl LibraryVersion {
    /// Writes the library's files under `dir` (created if missing): a module root that `cue
    /// mod publish <version>` publishes, or that a platform module's
    /// `cue.mod/local-module.cue` can point `replaceWith` at for the `cue` CLI.
    ///
    /// ```no_run
    /// let dir = std::path::Path::new("/tmp/cuebe-lib");
    /// cuebe_core::stdlib::latest().write_to(dir)?;
    /// assert!(dir.join("cue.mod/module.cue").is_file());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        for (path, content) in self.files {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(target, content)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn digest(v: &LibraryVersion) -> String {
        let mut h = Sha256::new();
        for (path, content) in v.files {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(content.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }

    #[test]
    fn the_newest_version_ships_every_file_of_the_library_source() {
        // A file added to sdk/core/cue/lib but not listed in VERSIONS would be missing from
        // every operator while the `cue` CLI (reading the directory) still sees it.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("cue/lib");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("library directory") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "cue") {
                    let rel = path.strip_prefix(&root).expect("under root");
                    on_disk.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        on_disk.sort();
        let shipped: Vec<&str> = latest().files.iter().map(|(p, _)| *p).collect();
        assert_eq!(on_disk, shipped);
    }

    #[test]
    fn a_released_version_never_changes() {
        // Platform modules published against a version must render the same with every later
        // build of cuebe: change the library by adding a version (and keep this one's files).
        let pinned = [(
            "v0.1.0",
            "5f8ba638ca633d06d618eadfe955efd3e606810fcf04550a663d5be5bb6bc026",
        )];
        for (version, want) in pinned {
            let v = super::version(version).expect("shipped");
            assert_eq!(digest(&v), want, "files of {version} changed");
        }
        assert_eq!(
            versions().len(),
            pinned.len(),
            "every shipped version is pinned here"
        );
    }
}
