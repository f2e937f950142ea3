//! go-containerregistry's `crane` (the same module and version as the testkit's registry), built
//! into the testkit's cache on first use: `scripts/image` pushes the operator image with it, and
//! tests pull an image back and unpack its filesystem with it.
//!
//! ```no_run
//! let crane = cuebe_testkit::crane::crane_binary()?;
//! let out = std::process::Command::new(crane).arg("version").output()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::path::PathBuf;

use crate::oci_registry::{REGISTRY_VERSION, RegistryError};

/// Path to `crane` at [`REGISTRY_VERSION`], installing it on first use (seconds with a warm Go
/// module cache: it shares its module with the registry).
pub fn crane_binary() -> Result<PathBuf, RegistryError> {
    crate::go_install::go_install(
        "github.com/google/go-containerregistry/cmd/crane",
        REGISTRY_VERSION,
        &format!("crane-{REGISTRY_VERSION}"),
        "crane",
    )
    .map_err(RegistryError::Install)
}
