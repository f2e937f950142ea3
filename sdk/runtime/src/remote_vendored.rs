//! Published modules served from OCI image layouts on disk (`--vendored-modules DIR`), for
//! clusters that cannot reach a registry.
//!
//! Owns: finding the layouts under a directory, reading a manifest, a blob or the cosign
//! signatures of a digest from them. The checks (digests, media types, the zip, the policy,
//! signatures) are the fetcher's, the same as for a registry.
//!
//! Workflow:
//!
//! 1. [`VendoredModules::open`] checks the directory at start: it must exist and hold at least
//!    one image layout (a directory with an `oci-layout` file: DIR itself, or any directory up
//!    to three levels below it), and every layout's `oci-layout` and `index.json` must parse. A
//!    mistake stops the operator at start, naming the file.
//! 2. A pinned `oci://REGISTRY/REPO@sha256:X` is served from the first layout (in path order)
//!    whose `blobs/sha256/X` exists; its module zip from the same layout. The registry and
//!    repository are not looked at here (the digest names the content; the source policy still
//!    judges them). Layouts are found again at each lookup, so a layout added while the
//!    operator runs is used without a restart.
//! 3. Signatures of X are the layers of any manifest that a layout's `index.json` names with the
//!    annotation `org.opencontainers.image.ref.name: sha256-X.sig`: cosign's signature tag, as
//!    `skopeo copy` or `oras copy --to-oci-layout` write it into a layout.
//!
//! Invariants: every byte read is re-hashed by the caller against the digest that named it;
//! nothing is written under DIR; a blob larger than the limits is not read past them.
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The annotation an image layout's `index.json` names a manifest (a tag) with.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The largest manifest read from a layout (a module's manifest is under 1 KiB).
const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// How deep below DIR layouts are looked for.
const MAX_DEPTH: usize = 3;

/// A `--vendored-modules` directory that cannot be used: the operator refuses to start with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vendored modules: {path}: {message}")]
pub struct VendorError {
    /// The directory or file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// The image layouts under one directory.
///
/// ```no_run
/// # fn f() -> Result<(), cuebe::remote::VendorError> {
/// let vendored = cuebe::remote::VendoredModules::open("/var/lib/cuebe/vendored")?;
/// for layout in vendored.layouts() {
///     println!("{}", layout.display());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct VendoredModules {
    root: PathBuf,
}

#[derive(Deserialize)]
struct LayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    image_layout_version: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

impl VendoredModules {
    /// Opens `root`, checking every layout under it (see the module docs).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, VendorError> {
        let root = root.into();
        let bad = |path: &Path, message: String| VendorError {
            path: path.to_path_buf(),
            message,
        };
        if !root.is_dir() {
            return Err(bad(&root, "not a directory".into()));
        }
        let vendored = Self { root };
        let layouts = vendored.layouts();
        if layouts.is_empty() {
            return Err(bad(
                &vendored.root,
                "holds no OCI image layout (no oci-layout file in it or up to three levels below it); write one with `cue mod publish VERSION --out DIR/NAME`".into(),
            ));
        }
        for layout in &layouts {
            check_layout(layout)?;
        }
        Ok(vendored)
    }

    /// The directory given.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every image layout under the directory, in path order.
    pub fn layouts(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        find_layouts(&self.root, 0, &mut found);
        found.sort();
        found
    }

    /// The layout holding the blob `digest` (`sha256:<hex>`), if any.
    pub fn layout_of(&self, digest: &str) -> Option<PathBuf> {
        let path = blob_path(Path::new(""), digest)?;
        self.layouts()
            .into_iter()
            .find(|layout| layout.join(&path).is_file())
    }

    /// The bytes of blob `digest` in `layout`, at most `limit` + 1 of them (so that the caller's
    /// hash check fails on a longer file instead of reading all of it).
    pub(super) fn read_blob(layout: &Path, digest: &str, limit: u64) -> std::io::Result<Vec<u8>> {
        let path = blob_path(layout, digest).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{digest} is not a sha256 digest"),
            )
        })?;
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// The manifest `digest` names, from the first layout holding it: (layout, bytes).
    pub(super) fn manifest(&self, digest: &str) -> Option<(PathBuf, std::io::Result<Vec<u8>>)> {
        let layout = self.layout_of(digest)?;
        let bytes = Self::read_blob(&layout, digest, MAX_MANIFEST_BYTES);
        Some((layout, bytes))
    }

    /// The cosign signatures of `digest` found in any layout (see the module docs). A
    /// signature manifest or payload that does not hash to the digest naming it is skipped.
    pub(super) fn signatures(&self, digest: &str) -> Vec<crate::trust::FoundSignature> {
        let tag = crate::trust::signature_tag(digest);
        let mut found = Vec::new();
        for layout in self.layouts() {
            let Some(index) = read_index(&layout).ok() else {
                continue;
            };
            for entry in index
                .manifests
                .iter()
                .filter(|e| e.annotations.get(REF_NAME_ANNOTATION) == Some(&tag))
            {
                let Ok(raw) = Self::read_blob(&layout, &entry.digest, MAX_MANIFEST_BYTES) else {
                    continue;
                };
                if super::sha256_of(&raw) != entry.digest {
                    tracing::warn!(layout = %layout.display(), digest = %entry.digest, "a vendored signature manifest does not match its digest; ignored");
                    continue;
                }
                let Ok(manifest) =
                    serde_json::from_slice::<oci_client::manifest::OciImageManifest>(&raw)
                else {
                    continue;
                };
                for (layer, signature_b64) in super::cosign_layers(&manifest) {
                    let Ok(payload) = Self::read_blob(&layout, &layer.digest, 64 * 1024) else {
                        continue;
                    };
                    if super::sha256_of(&payload) != layer.digest {
                        continue;
                    }
                    found.push(crate::trust::FoundSignature {
                        payload,
                        signature_b64,
                    });
                }
            }
        }
        found
    }
}

/// `<layout>/blobs/sha256/<hex>` for a `sha256:<64 hex>` digest; `None` for anything else (no
/// path is built from a digest that could leave the layout).
fn blob_path(layout: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))?;
    Some(layout.join("blobs").join("sha256").join(hex))
}

fn find_layouts(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    if dir.join("oci-layout").is_file() {
        found.push(dir.to_path_buf());
        // A layout's own directories are blobs, not layouts.
        return;
    }
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        // Symlinks are followed (a ConfigMap or a volume often mounts through them).
        if entry.path().is_dir() {
            find_layouts(&entry.path(), depth + 1, found);
        }
    }
}

fn read_index(layout: &Path) -> Result<Index, VendorError> {
    let path = layout.join("index.json");
    let text = std::fs::read(&path).map_err(|e| VendorError {
        path: path.clone(),
        message: e.to_string(),
    })?;
    serde_json::from_slice(&text).map_err(|e| VendorError {
        path,
        message: format!("not an OCI image index: {e}"),
    })
}

fn check_layout(layout: &Path) -> Result<(), VendorError> {
    let path = layout.join("oci-layout");
    let text = std::fs::read(&path).map_err(|e| VendorError {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let file: LayoutFile = serde_json::from_slice(&text).map_err(|e| VendorError {
        path: path.clone(),
        message: format!("not an OCI image layout file: {e}"),
    })?;
    if !file.image_layout_version.starts_with("1.") {
        return Err(VendorError {
            path,
            message: format!(
                "imageLayoutVersion {:?}; only 1.x layouts are read",
                file.image_layout_version
            ),
        });
    }
    read_index(layout).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of its own under the temp dir (removed when dropped).
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("cuebe-vendored-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_directory_is_checked_at_open_and_names_the_bad_file() {
        let dir = TempDir::new("open");
        let root = dir.path();
        let err = VendoredModules::open(root.join("missing")).unwrap_err();
        assert_eq!(err.message, "not a directory");
        let err = VendoredModules::open(root).unwrap_err();
        assert!(err.message.contains("holds no OCI image layout"), "{err}");
        write(
            &root.join("a/oci-layout"),
            r#"{"imageLayoutVersion": "1.0.0"}"#,
        );
        write(
            &root.join("a/index.json"),
            r#"{"schemaVersion": 2, "manifests": []}"#,
        );
        write(
            &root.join("x/y/b/oci-layout"),
            r#"{"imageLayoutVersion": "1.0.0"}"#,
        );
        write(&root.join("x/y/b/index.json"), "not json");
        let err = VendoredModules::open(root).unwrap_err();
        assert_eq!(err.path, root.join("x/y/b/index.json"));
        assert!(err.message.starts_with("not an OCI image index"), "{err}");
        write(&root.join("x/y/b/index.json"), r#"{"manifests": []}"#);
        write(
            &root.join("c/oci-layout"),
            r#"{"imageLayoutVersion": "2.0.0"}"#,
        );
        let err = VendoredModules::open(root).unwrap_err();
        assert!(err.message.contains("only 1.x layouts"), "{err}");
        std::fs::remove_dir_all(root.join("c")).unwrap();
        // Deeper than three levels is not looked at.
        write(&root.join("1/2/3/4/oci-layout"), "not json");
        let vendored = VendoredModules::open(root).unwrap();
        assert_eq!(vendored.layouts(), vec![root.join("a"), root.join("x/y/b")]);
    }

    #[test]
    fn blobs_are_found_by_digest_only_in_layouts() {
        let dir = TempDir::new("blobs");
        let root = dir.path();
        let hex = "ab".repeat(32);
        write(
            &root.join("m/oci-layout"),
            r#"{"imageLayoutVersion": "1.0.0"}"#,
        );
        write(&root.join("m/index.json"), r#"{"manifests": []}"#);
        write(&root.join(format!("m/blobs/sha256/{hex}")), "manifest");
        let vendored = VendoredModules::open(root).unwrap();
        assert_eq!(
            vendored.layout_of(&format!("sha256:{hex}")),
            Some(root.join("m"))
        );
        assert_eq!(
            vendored.layout_of(&format!("sha256:{}", "cd".repeat(32))),
            None
        );
        // Not a sha256 digest: no path is built from it.
        assert_eq!(vendored.layout_of("sha256:../../etc/passwd"), None);
        let (_, bytes) = vendored.manifest(&format!("sha256:{hex}")).unwrap();
        assert_eq!(bytes.unwrap(), b"manifest");
        // At most limit + 1 bytes are read.
        let read =
            VendoredModules::read_blob(&root.join("m"), &format!("sha256:{hex}"), 3).unwrap();
        assert_eq!(read, b"mani");
    }
}
