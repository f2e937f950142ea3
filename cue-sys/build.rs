//! Builds `go/` (the cgo bridge to cuelang.org/go) as a static c-archive and links it.
//!
//! Only one Go c-archive can be linked into an executable: this crate is the only one.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let go_dir = manifest.join("go");
    for f in ["bridge.go", "go.mod", "go.sum"] {
        println!("cargo:rerun-if-changed={}", go_dir.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=GOFLAGS");
    let go = env::var("GO").unwrap_or_else(|_| "go".to_string());
    let archive = out.join("libcuebridge.a");
    let status = Command::new(&go)
        .current_dir(&go_dir)
        .env("CGO_ENABLED", "1")
        // `-s -w` leaves out the symbol table and DWARF: the archive halves (50 → 24 MB) and is
        // linked into every test binary; Go's own tracebacks use pclntab and keep working.
        .args([
            "build",
            "-trimpath",
            "-ldflags=-s -w",
            "-buildmode=c-archive",
            "-o",
        ])
        .arg(&archive)
        .arg(".")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "`go build -buildmode=c-archive` of the CUE bridge failed ({s}); see the Go error above"
        ),
        Err(e) => panic!(
            "cannot run `{go}` to build the CUE bridge: {e}. Install Go 1.26+ (or set GO=/path/to/go)"
        ),
    }
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=cuebridge");
    println!("cargo:rustc-link-lib=dylib=pthread");
    println!("cargo:rustc-link-lib=dylib=resolv");
}
