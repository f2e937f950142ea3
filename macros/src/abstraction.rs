//! `#[derive(Abstraction)]`: reads the kube `#[kube(...)]` and `#[abstraction(...)]` attributes of
//! a `CustomResource` spec struct and implements `cuebe::Abstraction` for the generated kind.
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr};

const STRUCT_KEYS: &str = "module, package, version, field_manager, finalizer or watches";
const FIELD_ROLES: &str = "platform_ref, deletion_policy or adopt";

/// One embedded module version.
struct ModuleDecl {
    dir: LitStr,
    package: Option<LitStr>,
    version: Option<LitStr>,
}

/// What the `#[kube(...)]` attribute says.
#[derive(Default)]
struct KubeAttr {
    kind: Option<LitStr>,
    struct_name: Option<LitStr>,
    namespaced: bool,
    status: Option<LitStr>,
    span: Option<Span>,
}

fn kube_attr(input: &DeriveInput) -> syn::Result<KubeAttr> {
    let mut out = KubeAttr::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("kube")) {
        out.span = Some(attr.span());
        attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            if meta.input.peek(syn::token::Paren) {
                let content;
                syn::parenthesized!(content in meta.input);
                content.parse::<TokenStream>()?;
                return Ok(());
            }
            if !meta.input.peek(syn::Token![=]) {
                if key == "namespaced" {
                    out.namespaced = true;
                }
                return Ok(());
            }
            let value = meta.value()?;
            match key.as_str() {
                "kind" => out.kind = Some(value.parse()?),
                "struct" => out.struct_name = Some(value.parse()?),
                "status" => out.status = Some(value.parse()?),
                _ => {
                    value.parse::<syn::Expr>()?;
                }
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// Expands the derive.
pub fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let spec = &input.ident;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            spec.span(),
            "#[derive(Abstraction)] goes on the spec struct of a kube `CustomResource`, not on an enum or union",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new(
            spec.span(),
            "#[derive(Abstraction)] needs a spec struct with named fields (`struct MySpec { ... }`)",
        ));
    };
    let kube = kube_attr(input)?;
    let Some(kube_span) = kube.span else {
        return Err(syn::Error::new(
            spec.span(),
            "#[derive(Abstraction)] needs the kube attributes on the same struct: add \
             #[derive(CustomResource)] and #[kube(group = \"...\", version = \"...\", kind = \"...\", \
             namespaced, status = \"cuebe::status::AbstractionStatus\")]",
        ));
    };
    let Some(kind) = kube.kind else {
        return Err(syn::Error::new(
            kube_span,
            "#[kube(...)] names no kind: add `kind = \"MyKind\"`",
        ));
    };
    if !kube.namespaced {
        return Err(syn::Error::new(
            kube_span,
            "abstractions are namespaced (their children live next to them): add `namespaced` to #[kube(...)]",
        ));
    }
    match &kube.status {
        Some(s) if s.value().replace(' ', "").ends_with("AbstractionStatus") => {}
        Some(s) => {
            return Err(syn::Error::new(
                s.span(),
                "an abstraction's status is the standard one the controller writes: write `status = \"cuebe::status::AbstractionStatus\"`",
            ));
        }
        None => {
            return Err(syn::Error::new(
                kube_span,
                "#[kube(...)] has no status: add `status = \"cuebe::status::AbstractionStatus\"` (the controller writes conditions, nodes and the inventory there)",
            ));
        }
    }
    let type_name = kube.struct_name.as_ref().unwrap_or(&kind);
    let kind_ident = Ident::new(&type_name.value(), type_name.span());

    let mut modules: Vec<ModuleDecl> = Vec::new();
    let mut field_manager: Option<LitStr> = None;
    let mut finalizer: Option<LitStr> = None;
    let mut watches: Option<Vec<LitStr>> = None;
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("abstraction"))
    {
        let mut module: Option<LitStr> = None;
        let mut package: Option<LitStr> = None;
        let mut version: Option<LitStr> = None;
        attr.parse_nested_meta(|meta| {
            let key = meta.path.get_ident().map(ToString::to_string).unwrap_or_default();
            let once = |slot: &Option<LitStr>| -> syn::Result<()> {
                if slot.is_some() {
                    return Err(meta.error(format!("`{key}` is given twice")));
                }
                Ok(())
            };
            match key.as_str() {
                "module" => {
                    once(&module)?;
                    module = Some(meta.value()?.parse()?);
                }
                "package" => {
                    once(&package)?;
                    package = Some(meta.value()?.parse()?);
                }
                "version" => {
                    once(&version)?;
                    version = Some(meta.value()?.parse()?);
                }
                "field_manager" => {
                    once(&field_manager)?;
                    field_manager = Some(meta.value()?.parse()?);
                }
                "finalizer" => {
                    once(&finalizer)?;
                    finalizer = Some(meta.value()?.parse()?);
                }
                "watches" => {
                    if watches.is_some() {
                        return Err(meta.error("`watches` is given twice"));
                    }
                    let array: syn::ExprArray = meta.value()?.parse().map_err(|e| {
                        syn::Error::new(e.span(), "expected `watches = [\"apps/v1/Deployment\", \"v1/Service\"]`")
                    })?;
                    let mut list = Vec::new();
                    for element in array.elems {
                        let syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) = element else {
                            return Err(syn::Error::new(element.span(), "expected a string \"group/version/Kind\""));
                        };
                        let parts = s.value().split('/').count();
                        if !(2..=3).contains(&parts) || s.value().split('/').any(str::is_empty) {
                            return Err(syn::Error::new(
                                s.span(),
                                "expected \"group/version/Kind\" (or \"v1/Kind\" for the core group), e.g. \"apps/v1/Deployment\"",
                            ));
                        }
                        list.push(s);
                    }
                    watches = Some(list);
                }
                _ => {
                    return Err(meta.error(format!(
                        "unknown key `{key}` in #[abstraction(...)]; expected {STRUCT_KEYS}"
                    )));
                }
            }
            Ok(())
        })?;
        match module {
            Some(dir) => {
                if package.is_none() {
                    return Err(syn::Error::new(
                        dir.span(),
                        "the module needs its entry package: add `package = \"./mypackage\"`",
                    ));
                }
                modules.push(ModuleDecl {
                    dir,
                    package,
                    version,
                });
            }
            None => {
                if let Some(p) = package.as_ref().or(version.as_ref()) {
                    return Err(syn::Error::new(
                        p.span(),
                        "`package` and `version` belong to a module: write them next to `module = \"path/to/cue/module\"`",
                    ));
                }
            }
        }
    }
    if modules.is_empty() {
        return Err(syn::Error::new(
            spec.span(),
            "#[derive(Abstraction)] needs its CUE module: add #[abstraction(module = \"path/to/cue/module\", package = \"./mypackage\")] (the path is relative to Cargo.toml)",
        ));
    }
    let mut seen_versions = std::collections::BTreeSet::new();
    for m in &modules {
        let v = m
            .version
            .as_ref()
            .map(LitStr::value)
            .unwrap_or_else(|| "0.0.0".into());
        if !seen_versions.insert(v.clone()) {
            return Err(syn::Error::new(
                m.dir.span(),
                format!("two modules have version {v:?}; give each `version = \"x.y.z\"` its own"),
            ));
        }
    }

    // Field roles.
    let mut platform_ref: Option<(Ident, Span)> = None;
    let mut deletion_policy: Option<(Ident, Span)> = None;
    let mut adopt: Option<(Ident, Span)> = None;
    for field in &fields.named {
        for attr in field
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("abstraction"))
        {
            let Some(ident) = field.ident.clone() else {
                continue;
            };
            attr.parse_nested_meta(|meta| {
                let role = meta
                    .path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let slot = match role.as_str() {
                    "platform_ref" => &mut platform_ref,
                    "deletion_policy" => &mut deletion_policy,
                    "adopt" => &mut adopt,
                    _ => {
                        return Err(meta.error(format!(
                            "unknown field role `{role}`; expected {FIELD_ROLES}"
                        )));
                    }
                };
                if slot.is_some() {
                    return Err(meta.error(format!("two fields are marked `{role}`; keep one")));
                }
                *slot = Some((ident.clone(), field.ty.span()));
                Ok(())
            })?;
        }
    }

    let kind_lower = kind.value().to_ascii_lowercase();
    let field_manager =
        field_manager.unwrap_or_else(|| LitStr::new(&format!("cuebe-{kind_lower}"), kind.span()));
    let finalizer = finalizer.map(|f| quote! { const FINALIZER: &'static str = #f; });
    let watches = watches.unwrap_or_default();
    let module_exprs = modules.iter().map(|m| {
        let dir = &m.dir;
        let package = &m.package;
        let version = m
            .version
            .clone()
            .unwrap_or_else(|| LitStr::new("0.0.0", dir.span()));
        quote! { (#version, ::cuebe::embed_module!(#dir, package = #package)) }
    });
    let platform_ref = platform_ref.map(|(f, span)| {
        quote_spanned! {span=>
            fn platform_ref(&self) -> ::core::option::Option<::cuebe::module::PlatformRef> {
                ::cuebe::abstraction::__fields::platform_ref(&self.spec.#f)
            }
        }
    });
    let deletion_policy = deletion_policy.map(|(f, span)| {
        quote_spanned! {span=>
            fn deletion_policy(&self) -> ::cuebe::lifecycle::DeletionPolicy {
                ::cuebe::abstraction::__fields::deletion_policy(&self.spec.#f)
            }
        }
    });
    let adopt = adopt.map(|(f, span)| {
        quote_spanned! {span=>
            fn adopt(&self) -> ::std::vec::Vec<::cuebe::lifecycle::AdoptRef> {
                ::cuebe::abstraction::__fields::adopt(&self.spec.#f)
            }
        }
    });
    let modules_static = format_ident!("__CUEBE_MODULES_{}", kind_lower.to_ascii_uppercase());
    Ok(quote! {
        impl ::cuebe::Abstraction for #kind_ident {
            const FIELD_MANAGER: &'static str = #field_manager;
            #finalizer
            const WATCHES: &'static [&'static str] = &[#(#watches),*];

            fn modules() -> ::cuebe::module::ModuleSet {
                static #modules_static: ::std::sync::OnceLock<::cuebe::module::ModuleSet> =
                    ::std::sync::OnceLock::new();
                #modules_static
                    .get_or_init(|| ::cuebe::module::ModuleSet::from_versions([#(#module_exprs),*]))
                    .clone()
            }

            fn spec_value(&self) -> ::cuebe::abstraction::__fields::Value {
                ::cuebe::abstraction::__fields::to_value(&self.spec)
            }

            fn abstraction_status(&self) -> ::core::option::Option<&::cuebe::status::AbstractionStatus> {
                self.status.as_ref()
            }

            #platform_ref
            #deletion_policy
            #adopt
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::expand;

    fn expanded(input: proc_macro2::TokenStream) -> String {
        let item: syn::DeriveInput = syn::parse2(input).unwrap();
        let tokens = expand(&item).unwrap();
        prettyplease::unparse(&syn::parse2(tokens).unwrap())
    }

    #[test]
    fn minimal_expansion() {
        insta::assert_snapshot!(expanded(quote::quote! {
            #[kube(group = "example.com", version = "v1", kind = "Worker", namespaced,
                   status = "cuebe::status::AbstractionStatus")]
            #[abstraction(module = "cue", package = "./worker")]
            pub struct WorkerSpec {
                pub image: String,
            }
        }));
    }

    #[test]
    fn full_expansion() {
        insta::assert_snapshot!(expanded(quote::quote! {
            #[kube(group = "platform.example.com", version = "v1alpha1", kind = "WebService",
                   namespaced, shortname = "ws", status = "cuebe::status::AbstractionStatus",
                   printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
            #[abstraction(module = "../cue/platform", package = "./webservice", version = "1.0.0",
                          field_manager = "cuebe-webservice", finalizer = "example.com/cleanup",
                          watches = ["apps/v1/Deployment", "v1/Service"])]
            #[abstraction(module = "../cue/platform-v2", package = "./webservice", version = "2.0.0")]
            pub struct WebServiceSpec {
                pub image: String,
                #[abstraction(platform_ref)]
                pub platform_ref: Option<cuebe::PlatformRef>,
                #[abstraction(deletion_policy)]
                pub deletion_policy: Option<cuebe::lifecycle::DeletionPolicy>,
                #[abstraction(adopt)]
                pub adopt: Option<cuebe::lifecycle::AdoptSpec>,
            }
        }));
    }
}
