//! Macros for cuebe (use them through `cuebe`: `cuebe::Abstraction`, `cuebe::embed_module!`).
//!
//! - [`embed_module!`] compiles a CUE platform module into the binary, so the operator never
//!   reads its platform logic from disk at run time and the module's digest is fixed at build
//!   time.
//! - [`macro@Abstraction`] turns a kube `CustomResource` into a CUE-backed abstraction.
use proc_macro::TokenStream;

mod abstraction;
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::{LitStr, Token};

struct EmbedArgs {
    dir: LitStr,
    package: LitStr,
}

impl Parse for EmbedArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let dir: LitStr = input.parse()?;
        input.parse::<Token![,]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected `embed_module!(\"path/to/module\", package = \"./pkg\")`",
            )
        })?;
        let key: syn::Ident = input.parse()?;
        if key != "package" {
            return Err(syn::Error::new(
                key.span(),
                "expected `package = \"./pkg\"` (the entry package)",
            ));
        }
        input.parse::<Token![=]>()?;
        let package: LitStr = input.parse()?;
        Ok(Self { dir, package })
    }
}

/// Embeds every `.cue` file under a directory (relative to the calling crate's `Cargo.toml`) and
/// evaluates to a `cuebe::module::ModuleSource` with the given entry package.
///
/// ```ignore
/// let source: cuebe::module::ModuleSource =
///     cuebe_macros::embed_module!("../cue/platform", package = "./webservice");
/// ```
///
/// Each file is included with `include_str!`, so editing a file rebuilds the crate. Adding a
/// new file needs a rebuild of the crate that calls the macro (`touch` its source).
#[proc_macro]
pub fn embed_module(input: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(input as EmbedArgs);
    match expand(&args) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(args: &EmbedArgs) -> syn::Result<proc_macro2::TokenStream> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").map_err(|_| {
        syn::Error::new(
            args.dir.span(),
            "CARGO_MANIFEST_DIR is not set; build with cargo",
        )
    })?;
    let root = std::path::Path::new(&manifest).join(args.dir.value());
    let root = root.canonicalize().map_err(|e| {
        syn::Error::new(
            args.dir.span(),
            format!("cannot read CUE module directory {}: {e}", root.display()),
        )
    })?;
    if !root.join("cue.mod/module.cue").is_file() {
        return Err(syn::Error::new(
            args.dir.span(),
            format!(
                "{} is not a CUE module: it has no cue.mod/module.cue",
                root.display()
            ),
        ));
    }
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| syn::Error::new(args.dir.span(), format!("{}: {e}", dir.display())))?;
        for entry in entries {
            let path = entry
                .map_err(|e| syn::Error::new(args.dir.span(), e.to_string()))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "cue") {
                let rel = path
                    .strip_prefix(&root)
                    .map_err(|e| syn::Error::new(args.dir.span(), e.to_string()))?
                    .to_string_lossy()
                    .replace('\\', "/");
                files.push((rel, path.to_string_lossy().into_owned()));
            }
        }
    }
    files.sort();
    check_entry_package(&root, &files, &args.package)?;
    let entries = files
        .iter()
        .map(|(rel, abs)| quote! { (#rel, include_str!(#abs)) });
    let package = &args.package;
    Ok(quote! {
        ::cuebe::module::ModuleSource::new([#(#entries),*], #package)
    })
}

/// Checks at build time that the entry package names a package of the module: a typo in
/// `package` would otherwise compile and fail only when the operator first renders.
///
/// `package` is `"."`, `"./dir"` or the module's import path (`"example.com/platform/dir"`),
/// optionally qualified (`"./dir:name"`). The directory must hold `.cue` files; with several
/// packages in it, the qualifier must pick one of them.
fn check_entry_package(
    root: &std::path::Path,
    files: &[(String, String)],
    package: &LitStr,
) -> syn::Result<()> {
    let value = package.value();
    let fail = |message: String| Err(syn::Error::new(package.span(), message));
    // A qualifier follows the last `:` (a path never has one after its last `/`).
    let (path, qualifier) = match value.rsplit_once(':') {
        Some((path, q)) if !q.contains('/') => (path.to_string(), Some(q.to_string())),
        _ => (value.clone(), None),
    };
    let module_path = module_path(root);
    let dir = if path == "." {
        String::new()
    } else if let Some(rel) = path.strip_prefix("./") {
        rel.trim_end_matches('/').to_string()
    } else if let Some(rel) = module_path
        .as_deref()
        .and_then(|m| path.strip_prefix(m))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    {
        rel.trim_start_matches('/').to_string()
    } else {
        return fail(format!(
            "package = {value:?}: not a package of this module; expected \"./dir\" (a directory of \
             the module){}",
            module_path
                .map(|m| format!(" or an import path under {m:?}"))
                .unwrap_or_default()
        ));
    };
    let in_dir = |rel: &str| match rel.rsplit_once('/') {
        Some((parent, _)) => parent == dir,
        None => dir.is_empty(),
    };
    let mut packages = std::collections::BTreeSet::new();
    let mut found = false;
    for (_, abs) in files.iter().filter(|(rel, _)| in_dir(rel)) {
        found = true;
        if let Some(name) = std::fs::read_to_string(abs)
            .ok()
            .and_then(|text| package_clause(&text))
        {
            packages.insert(name);
        }
    }
    if !found {
        let candidates: Vec<String> = files
            .iter()
            .filter(|(rel, _)| !rel.starts_with("cue.mod/"))
            .map(|(rel, _)| match rel.rsplit_once('/') {
                Some((parent, _)) => format!("\"./{parent}\""),
                None => "\".\"".to_string(),
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        return fail(format!(
            "package = {value:?}: the module at {} has no .cue files in {:?}; its packages are {}",
            root.display(),
            if dir.is_empty() { "." } else { dir.as_str() },
            if candidates.is_empty() {
                "none".to_string()
            } else {
                candidates.join(", ")
            }
        ));
    }
    match qualifier {
        Some(q) if !packages.contains(&q) => fail(format!(
            "package = {value:?}: no file in {:?} declares `package {q}` (found: {})",
            if dir.is_empty() { "." } else { dir.as_str() },
            packages.into_iter().collect::<Vec<_>>().join(", ")
        )),
        None if packages.len() > 1 => fail(format!(
            "package = {value:?}: {:?} holds several packages ({}); pick one with \"{path}:name\"",
            if dir.is_empty() { "." } else { dir.as_str() },
            packages.into_iter().collect::<Vec<_>>().join(", ")
        )),
        _ => Ok(()),
    }
}

/// The module's import path without its major version (`module: "example.com/p@v0"` →
/// `example.com/p`), from `cue.mod/module.cue`.
fn module_path(root: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("cue.mod/module.cue")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("module:")?.trim();
        let quoted = rest.strip_prefix('"')?;
        let path = &quoted[..quoted.find('"')?];
        Some(path.split('@').next().unwrap_or(path).to_string())
    })
}

/// The name in a file's `package` clause (comments and attributes may precede it).
fn package_clause(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") || line.starts_with('@') {
            continue;
        }
        let name = line.strip_prefix("package")?;
        if !name.starts_with(char::is_whitespace) {
            return None;
        }
        return name.split_whitespace().next().map(str::to_string);
    }
    None
}

/// Implements `cuebe::Abstraction` for the kind a kube `CustomResource` spec struct generates.
///
/// ```ignore
/// #[derive(CustomResource, cuebe::Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
/// #[kube(group = "platform.example.com", version = "v1alpha1", kind = "Worker", namespaced,
///        status = "cuebe::status::AbstractionStatus")]
/// #[abstraction(module = "cue", package = "./worker", version = "1.0.0",
///               watches = ["apps/v1/Deployment", "v1/ServiceAccount"])]
/// pub struct WorkerSpec {
///     pub image: String,
///     #[abstraction(platform_ref)]
///     pub platform_ref: Option<cuebe::PlatformRef>,
///     #[abstraction(deletion_policy)]
///     pub deletion_policy: Option<cuebe::lifecycle::DeletionPolicy>,
///     #[abstraction(adopt)]
///     pub adopt: Option<cuebe::lifecycle::AdoptSpec>,
/// }
/// ```
///
/// Struct attributes (`#[abstraction(...)]`, may repeat; one `module` per attribute):
/// - `module = "dir"` (required): the CUE module, relative to `Cargo.toml`, embedded with
///   `embed_module!`; `package = "./pkg"` (required with it) its entry package; `version =
///   "x.y.z"` (default `0.0.0`) the version `spec.platformRef.embedded` pins. Several modules
///   make several versions; the newest is the default.
/// - `field_manager = "..."` (default `cuebe-<kind in lowercase>`), `finalizer = "..."`
///   (default `cuebe.dev/cleanup`).
/// - `watches = ["group/version/Kind", ...]`: the children's kinds (`v1/Kind` for core).
///
/// Field attributes: `#[abstraction(platform_ref)]` on an `Option<cuebe::PlatformRef>`,
/// `#[abstraction(deletion_policy)]` on an `Option<cuebe::lifecycle::DeletionPolicy>`,
/// `#[abstraction(adopt)]` on an `Option<cuebe::lifecycle::AdoptSpec>`.
///
/// The `#[kube(...)]` attribute must name the `kind`, be `namespaced` and use `status =
/// "cuebe::status::AbstractionStatus"`; anything else is a compile error saying what to write.
///
/// Two unit tests come with it, so `cargo test` of the crate fails early: every embedded
/// module loads, and every field name of the spec follows the Kubernetes API conventions
/// (lowerCamelCase, acronyms in one case: `targetCPUUtilization`, not `targetCpuUtilization`;
/// see `cuebe::abstraction::conventions`). `cuebe::abstraction::crd` gives the kind the
/// `platform` category and the printer columns of every abstraction.
#[proc_macro_derive(Abstraction, attributes(abstraction))]
pub fn derive_abstraction(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    match abstraction::expand(&input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}
