//! Raw C ABI of the CUE bridge (`go/bridge.go`), a Go c-archive over `cuelang.org/go`.
//!
//! Every function takes and returns JSON as NUL-terminated strings. Strings returned by the bridge
//! are owned by C's allocator and must be released with [`cuebe_string_free`]. The safe wrapper
//! lives in the `cuebe` crate (`cuebe::cue`); nothing else should call these directly.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_ulonglong};

unsafe extern "C" {
    /// Loads a module from `{"files": {path: content}, "package": "./pkg"}`.
    /// Returns `{"handle": n}` or `{"errors": [...]}`.
    pub fn cuebe_module_load(request: *const c_char) -> *mut c_char;
    /// Evaluates a loaded module: `{"fills": [...], "exports": [...], "timeoutMs": n}`.
    pub fn cuebe_module_eval(handle: c_ulonglong, request: *const c_char) -> *mut c_char;
    /// Releases a module handle. Unknown handles are ignored.
    pub fn cuebe_module_free(handle: c_ulonglong);
    /// Releases a string returned by the bridge.
    pub fn cuebe_string_free(s: *mut c_char);
}
