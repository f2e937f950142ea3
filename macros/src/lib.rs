//! Macros for cuebe.
//!
//! [`embed_module!`] compiles a CUE platform module into the binary, so the operator never reads
//! its platform logic from disk at run time and the module's digest is fixed at build time.
use proc_macro::TokenStream;
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
