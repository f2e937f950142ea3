//! The cgo bridge from cuebe to `cuelang.org/go` (`go/bridge.go`, built as a Go c-archive by
//! `build.rs`), and its safe wrapper.
//!
//! This crate is the one place of the workspace with `unsafe` code: [`ffi`] is the raw C ABI,
//! [`module`] the safe API every other crate uses (they all `#![forbid(unsafe_code)]`).
//!
//! Start with [`module::LoadedModule`]: build a module once from in-memory files, evaluate it
//! many times with values filled at paths and a wall-clock limit per evaluation.
#![allow(unsafe_code)]

pub mod module;

/// Raw C ABI of the bridge. Every function takes and returns JSON as NUL-terminated strings.
/// Strings returned by the bridge are owned by C's allocator and must be released with
/// [`ffi::cuebe_string_free`]. Only [`module`] calls these.
pub mod ffi {
    use std::ffi::{c_char, c_int, c_longlong, c_ulonglong};

    unsafe extern "C" {
        /// Loads a module from `{"files": {path: content}, "package": "./pkg"}`.
        /// Returns `{"handle": n}` or `{"errors": [...]}`.
        pub fn cuebe_module_load(request: *const c_char) -> *mut c_char;
        /// Evaluates a loaded module: `{"fills": [...], "exports": [...], "timeoutMs": n}`.
        pub fn cuebe_module_eval(handle: c_ulonglong, request: *const c_char) -> *mut c_char;
        /// Releases a module handle. Unknown handles are ignored.
        pub fn cuebe_module_free(handle: c_ulonglong);
        /// 1 while the handle's worker still runs an evaluation that exceeded its limit (the
        /// handle may already be freed), else 0.
        pub fn cuebe_module_abandoned(handle: c_ulonglong) -> c_int;
        /// How many goroutines the bridge's Go runtime has (a diagnostic: abandoned evaluations
        /// each keep one).
        pub fn cuebe_goroutines() -> c_longlong;
        /// Writes the Go runtime's memory figures into `out` (room for 4 values): live heap,
        /// heap goal, everything mapped, and of that what was returned to the OS, in bytes.
        pub fn cuebe_go_memory(out: *mut c_ulonglong);
        /// Collects garbage, then writes a pprof heap profile of the Go runtime to the file at
        /// `path`. Returns NULL, or the error as a string to release with `cuebe_string_free`.
        pub fn cuebe_go_heap_profile(path: *const c_char) -> *mut c_char;
        /// Releases a string returned by the bridge.
        pub fn cuebe_string_free(s: *mut c_char);
    }
}
