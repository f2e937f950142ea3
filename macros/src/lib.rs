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
    let entries = files
        .iter()
        .map(|(rel, abs)| quote! { (#rel, include_str!(#abs)) });
    let package = &args.package;
    Ok(quote! {
        ::cuebe::module::ModuleSource::new([#(#entries),*], #package)
    })
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
#[proc_macro_derive(Abstraction, attributes(abstraction))]
pub fn derive_abstraction(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    match abstraction::expand(&input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}
