//! Code generation for `#[derive(Abstraction)]`: turns the parsed, checked [`Abstraction`] into the
//! `impl ::cuebe::Abstraction for <Kind>` block. Nothing here fails: every rule was checked by
//! [`super::attrs`].
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};

use super::attrs::{Abstraction, Module, RoleField};

/// The `impl ::cuebe::Abstraction` for the kind kube generates from the spec struct.
pub(super) fn impl_abstraction(abstraction: &Abstraction) -> TokenStream {
    let Abstraction {
        kind,
        kind_type,
        modules,
        field_manager,
        finalizer,
        watches,
        platform_ref,
        deletion_policy,
        adopt,
    } = abstraction;
    let finalizer = finalizer
        .as_ref()
        .map(|f| quote! { const FINALIZER: &'static str = #f; });
    let modules_static = format_ident!("__CUEBE_MODULES_{}", kind.value().to_ascii_uppercase());
    let module_exprs = modules.iter().map(module_expr);
    let platform_ref = platform_ref.as_ref().map(|RoleField { ident, ty_span }| {
        quote_spanned! {*ty_span=>
            fn platform_ref(&self) -> ::core::option::Option<::cuebe::module::PlatformRef> {
                ::cuebe::abstraction::__fields::platform_ref(&self.spec.#ident)
            }
        }
    });
    let deletion_policy = deletion_policy
        .as_ref()
        .map(|RoleField { ident, ty_span }| {
            quote_spanned! {*ty_span=>
                fn deletion_policy(&self) -> ::cuebe::lifecycle::DeletionPolicy {
                    ::cuebe::abstraction::__fields::deletion_policy(&self.spec.#ident)
                }
            }
        });
    let adopt = adopt.as_ref().map(|RoleField { ident, ty_span }| {
        quote_spanned! {*ty_span=>
            fn adopt(&self) -> ::std::vec::Vec<::cuebe::lifecycle::AdoptRef> {
                ::cuebe::abstraction::__fields::adopt(&self.spec.#ident)
            }
        }
    });
    quote! {
        impl ::cuebe::Abstraction for #kind_type {
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
    }
}

/// `("x.y.z", ::cuebe::embed_module!("dir", package = "./pkg"))`, one entry of `from_versions`.
fn module_expr(module: &Module) -> TokenStream {
    let Module {
        dir,
        package,
        version,
    } = module;
    quote! { (#version, ::cuebe::embed_module!(#dir, package = #package)) }
}
