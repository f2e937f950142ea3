//! `#[derive(Abstraction)]`: reads the kube `#[kube(...)]` and `#[abstraction(...)]` attributes of
//! a `CustomResource` spec struct and implements `cuebe::Abstraction` for the generated kind.
//!
//! Parsing and generation are separate: [`attrs`] reads the attributes with darling and checks
//! them into an [`attrs::Abstraction`]; [`codegen`] turns that into tokens and cannot fail.
use darling::FromDeriveInput;
use proc_macro2::TokenStream;
use syn::DeriveInput;

mod attrs;
mod codegen;

/// Expands the derive.
pub fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let abstraction = attrs::Abstraction::from_derive_input(input)?;
    Ok(codegen::impl_abstraction(&abstraction))
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

    /// The first error `expand` reports for a spec struct with `attrs` and `fields`.
    fn first_error(attrs: proc_macro2::TokenStream, fields: proc_macro2::TokenStream) -> String {
        let item: syn::DeriveInput = syn::parse2(quote::quote! {
            #attrs
            pub struct WorkerSpec { #fields }
        })
        .unwrap();
        match expand(&item) {
            Ok(_) => String::from("expanded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn misuse_not_covered_by_the_ui_tests_says_what_to_write() {
        use quote::quote;
        let kube = quote! {
            #[kube(group = "g", version = "v1", kind = "Worker", namespaced,
                   status = "cuebe::status::AbstractionStatus")]
        };
        let module = quote! { #[abstraction(module = "cue", package = "./worker")] };
        let cases = [
            (
                quote! { #kube #[abstraction(module = "a", module = "b", package = "./w")] },
                quote! {},
                "`module` is given twice",
            ),
            (
                quote! { #kube #module #[abstraction(field_manager = "x")] #[abstraction(field_manager = "y")] },
                quote! {},
                "`field_manager` is given twice",
            ),
            (
                quote! { #kube #[abstraction(module = 5, package = "./w")] },
                quote! {},
                "expected `module = \"...\"` (a string)",
            ),
            (
                quote! { #kube #[abstraction] },
                quote! {},
                "expected attribute arguments in parentheses: #[abstraction(...)]",
            ),
            (
                quote! { #kube #[abstraction(version = "1.0.0")] #module },
                quote! {},
                "`package` and `version` belong to a module",
            ),
            (
                quote! { #kube #module #[abstraction(module = "b", package = "./w")] },
                quote! {},
                "two modules have version \"0.0.0\"",
            ),
            (
                quote! { #kube #module #[abstraction(watches = "apps/v1/Deployment")] },
                quote! {},
                "expected `watches = [\"apps/v1/Deployment\", \"v1/Service\"]`",
            ),
            (
                quote! { #kube #module #[abstraction(watches = ["batch/CronJob"])] },
                quote! {},
                "`batch` in \"batch/CronJob\" is not a Kubernetes API version (v1, v2, v1beta1, v1alpha2, ...) (did you mean \"batch/v1/CronJob\"?)",
            ),
            (
                quote! { #kube #module #[abstraction(watches = ["apps/1/Deployment"])] },
                quote! {},
                "`1` in \"apps/1/Deployment\" is not a Kubernetes API version",
            ),
            (
                quote! { #kube #module #[abstraction(watches = ["apps/v1/deployment"])] },
                quote! {},
                "`deployment` in \"apps/v1/deployment\" is not a kind",
            ),
            (
                quote! { #kube #module #[abstraction(watches = ["v1/ConfigMap", "batch/v1/CronJob", "gateway.networking.k8s.io/v1beta1/HTTPRoute", "iam.services.k8s.aws/v1alpha1/Role"])] },
                quote! {},
                "expanded",
            ),
            (
                quote! { #kube #module },
                quote! { #[abstraction(adopt)] a: Option<A>, #[abstraction(adopt)] b: Option<A> },
                "two fields are marked `adopt`; keep one",
            ),
            (
                quote! { #kube #module },
                quote! { #[abstraction(adopt = true)] a: Option<A> },
                "the field role `adopt` takes no value: write #[abstraction(adopt)]",
            ),
            (
                quote! {
                    #[kube(group = "g", version = "v1", kind = "My-Kind", namespaced,
                           status = "cuebe::status::AbstractionStatus")]
                    #module
                },
                quote! {},
                "\"My-Kind\" is not a Rust identifier",
            ),
            (
                quote! {
                    #[kube(group = "g", version = "v1", kind = "Worker", namespaced = true,
                           status = "cuebe::status::AbstractionStatus")]
                    #module
                },
                quote! {},
                "expanded",
            ),
        ];
        for (attrs, fields, expected) in cases {
            let error = first_error(attrs.clone(), fields);
            assert!(error.starts_with(expected), "{attrs}: {error}");
        }
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
