//! Argument parsing for `#[derive(Abstraction)]`: reads the spec struct's `#[kube(...)]` and
//! `#[abstraction(...)]` attributes with darling, checks the rules they must follow and yields an
//! [`Abstraction`], everything [`super::codegen`] needs. Every error says what to write instead.
//!
//! - [`KubeArgs`] (`FromAttributes`): the keys of kube's `#[kube(...)]` the derive reads.
//! - [`StructArgs`] (`FromMeta`): one `#[abstraction(...)]` on the struct.
//! - [`FieldArgs`] (`FromField`): the role `#[abstraction(...)]` gives a field.
//! - [`Abstraction`] implements `FromDeriveInput` by hand from those three, in the order the
//!   checks have always run (the first failing stage is the one reported).
//!
//! Leaf types ([`StrArg`], [`Watches`], [`Role`], [`UnknownKeys`], [`UnknownRoles`]) implement
//! `FromMeta` by hand where darling's generic messages ("Unknown field: `x`", "Unexpected literal
//! type") would be vaguer than saying which attribute, which key and what to write.
use std::collections::BTreeSet;

use darling::ast::NestedMeta;
use darling::util::path_to_string;
use darling::{Error, FromAttributes, FromDeriveInput, FromField, FromMeta, Result};
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Expr, ExprLit, Fields, FieldsNamed, Ident, Lit, LitStr};
use syn::{Meta, Path};

/// The keys `#[abstraction(...)]` takes on the struct, for the unknown-key error.
const STRUCT_KEYS: &str = "module, package, version, field_manager, finalizer or watches";
/// The roles `#[abstraction(...)]` gives a field, for the unknown-role error.
const FIELD_ROLES: &str = "platform_ref, deletion_policy or adopt";
/// What `watches` looks like, for its errors.
const WATCHES_SYNTAX: &str = "expected `watches = [\"apps/v1/Deployment\", \"v1/Service\"]`";
/// The version a module without `version = "..."` gets.
const DEFAULT_VERSION: &str = "0.0.0";

/// `#[derive(Abstraction)]`'s input, parsed and checked: what the generated impl is made of.
pub(super) struct Abstraction {
    /// `kind = "..."` of `#[kube(...)]`; names the default field manager and the modules' static.
    pub kind: LitStr,
    /// The type kube generates (`struct = "..."` if given, else the kind): the impl's target.
    pub kind_type: Ident,
    /// The embedded module versions, in attribute order; never empty, versions distinct.
    pub modules: Vec<Module>,
    /// `field_manager = "..."`, or `cuebe-<kind in lowercase>` spanned at the kind.
    pub field_manager: LitStr,
    /// `finalizer = "..."`; without it the trait's default applies.
    pub finalizer: Option<LitStr>,
    /// `watches = [...]`, each checked to be `group/version/Kind` or `version/Kind`.
    pub watches: Vec<LitStr>,
    /// The field marked `#[abstraction(platform_ref)]`.
    pub platform_ref: Option<RoleField>,
    /// The field marked `#[abstraction(deletion_policy)]`.
    pub deletion_policy: Option<RoleField>,
    /// The field marked `#[abstraction(adopt)]`.
    pub adopt: Option<RoleField>,
}

/// One embedded module version: `module = "dir", package = "./pkg", version = "x.y.z"`.
pub(super) struct Module {
    /// The module directory, relative to `Cargo.toml`.
    pub dir: LitStr,
    /// Its entry package.
    pub package: LitStr,
    /// Its version, or `0.0.0` spanned at `dir`.
    pub version: LitStr,
}

/// A spec field that plays a role.
pub(super) struct RoleField {
    /// The field's name.
    pub ident: Ident,
    /// The span of the field's type: a field of the wrong type is reported there.
    pub ty_span: Span,
}

impl FromDeriveInput for Abstraction {
    fn from_derive_input(input: &DeriveInput) -> Result<Self> {
        let fields = named_fields(input)?;
        let kube = KubeArgs::from_attributes(&input.attrs)?.validate(input)?;
        let settings = struct_settings(input)?;
        let roles = field_roles(fields)?;
        let field_manager = settings.field_manager.unwrap_or_else(|| {
            let name = format!("cuebe-{}", kube.kind.value().to_ascii_lowercase());
            LitStr::new(&name, kube.kind.span())
        });
        Ok(Self {
            kind: kube.kind,
            kind_type: kube.kind_type,
            modules: settings.modules,
            field_manager,
            finalizer: settings.finalizer,
            watches: settings.watches,
            platform_ref: roles.platform_ref,
            deletion_policy: roles.deletion_policy,
            adopt: roles.adopt,
        })
    }
}

/// The spec struct's named fields; anything else is not a kube spec struct.
fn named_fields(input: &DeriveInput) -> Result<&FieldsNamed> {
    let Data::Struct(data) = &input.data else {
        return Err(Error::custom(
            "#[derive(Abstraction)] goes on the spec struct of a kube `CustomResource`, not on an enum or union",
        )
        .with_span(&input.ident));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(Error::custom(
            "#[derive(Abstraction)] needs a spec struct with named fields (`struct MySpec { ... }`)",
        )
        .with_span(&input.ident));
    };
    Ok(fields)
}

/// An error at a span (darling's `with_span` wants a syntax node).
fn error_at(span: Span, message: impl std::fmt::Display) -> Error {
    syn::Error::new(span, message).into()
}

/// The keys of kube's `#[kube(...)]` that the derive reads.
///
/// The attribute belongs to kube's `CustomResource` derive, which validates it. Here
/// `allow_unknown_fields` skips every other key (group, version, shortname, printcolumn,
/// `scale(...)`, `crates(...)`, ...), so what kube accepts and what a later kube adds never
/// trips this derive. Several `#[kube(...)]` attributes are read as one, as kube does.
#[derive(FromAttributes)]
#[darling(attributes(kube), allow_unknown_fields)]
pub(super) struct KubeArgs {
    /// `kind = "MyKind"`.
    kind: Option<StrArg>,
    /// `struct = "MyType"`: the generated type's name when it is not the kind.
    #[darling(rename = "struct")]
    struct_name: Option<StrArg>,
    /// `namespaced` (kube also takes `namespaced = true`).
    #[darling(default)]
    namespaced: bool,
    /// `status = "path::to::Status"`.
    status: Option<StrArg>,
}

/// What the derive takes from `#[kube(...)]`, checked.
struct Kube {
    kind: LitStr,
    kind_type: Ident,
}

impl KubeArgs {
    /// Checks the kube rules an abstraction follows: a kind, namespaced, the standard status.
    fn validate(self, input: &DeriveInput) -> Result<Kube> {
        let Some(kube_attr) = input.attrs.iter().rfind(|a| a.path().is_ident("kube")) else {
            return Err(Error::custom(
                "#[derive(Abstraction)] needs the kube attributes on the same struct: add \
                 #[derive(CustomResource)] and #[kube(group = \"...\", version = \"...\", kind = \"...\", \
                 namespaced, status = \"cuebe::status::AbstractionStatus\")]",
            )
            .with_span(&input.ident));
        };
        let Some(kind) = self.kind.map(|k| k.value) else {
            return Err(
                Error::custom("#[kube(...)] names no kind: add `kind = \"MyKind\"`")
                    .with_span(kube_attr),
            );
        };
        if !self.namespaced {
            return Err(Error::custom(
                "abstractions are namespaced (their children live next to them): add `namespaced` to #[kube(...)]",
            )
            .with_span(kube_attr));
        }
        match self.status.map(|s| s.value) {
            Some(s) if s.value().replace(' ', "").ends_with("AbstractionStatus") => {}
            Some(s) => {
                return Err(Error::custom(
                    "an abstraction's status is the standard one the controller writes: write `status = \"cuebe::status::AbstractionStatus\"`",
                )
                .with_span(&s));
            }
            None => {
                return Err(Error::custom(
                    "#[kube(...)] has no status: add `status = \"cuebe::status::AbstractionStatus\"` (the controller writes conditions, nodes and the inventory there)",
                )
                .with_span(kube_attr));
            }
        }
        let type_name = self.struct_name.map_or_else(|| kind.clone(), |s| s.value);
        let mut kind_type = syn::parse_str::<Ident>(&type_name.value()).map_err(|_| {
            Error::custom(format!(
                "{:?} is not a Rust identifier, so it cannot name the type kube generates",
                type_name.value()
            ))
            .with_span(&type_name)
        })?;
        kind_type.set_span(type_name.span());
        Ok(Kube { kind, kind_type })
    }
}

/// One `#[abstraction(...)]` on the spec struct.
///
/// Each attribute is parsed on its own (not merged by `FromDeriveInput`/`FromAttributes`): an
/// attribute declares at most one module version, and its `package` and `version` belong to
/// the `module` next to them. Every key is `multiple` so that a repeated key is reported as
/// "`key` is given twice" at the repetition, as a repetition across attributes is.
#[derive(FromMeta)]
pub(super) struct StructArgs {
    /// `module = "path/to/cue/module"`.
    #[darling(multiple)]
    module: Vec<StrArg>,
    /// `package = "./pkg"`, the module's entry package.
    #[darling(multiple)]
    package: Vec<StrArg>,
    /// `version = "x.y.z"`, the module's version.
    #[darling(multiple)]
    version: Vec<StrArg>,
    /// `field_manager = "..."`.
    #[darling(multiple)]
    field_manager: Vec<StrArg>,
    /// `finalizer = "..."`.
    #[darling(multiple)]
    finalizer: Vec<StrArg>,
    /// `watches = ["group/version/Kind", ...]`.
    #[darling(multiple)]
    watches: Vec<Watches>,
    /// Any other key: an error naming the keys above.
    #[darling(flatten)]
    _unknown: UnknownKeys,
}

/// What the struct's `#[abstraction(...)]` attributes say, checked.
struct StructSettings {
    modules: Vec<Module>,
    field_manager: Option<LitStr>,
    finalizer: Option<LitStr>,
    watches: Vec<LitStr>,
}

/// Reads and checks every `#[abstraction(...)]` on the spec struct.
fn struct_settings(input: &DeriveInput) -> Result<StructSettings> {
    let mut errors = Error::accumulator();
    let parsed: Vec<StructArgs> = abstraction_attrs(&input.attrs)
        .filter_map(|attr| errors.handle(parse_list::<StructArgs>(attr)))
        .collect();
    let mut errors = errors.checkpoint()?;

    let mut modules = Vec::new();
    for args in &parsed {
        let module = errors.handle(at_most_once(&args.module));
        let package = errors.handle(at_most_once(&args.package));
        let version = errors.handle(at_most_once(&args.version));
        let (Some(module), Some(package), Some(version)) = (module, package, version) else {
            continue;
        };
        match (module, package) {
            (Some(dir), Some(package)) => {
                let version = version.map_or_else(
                    || LitStr::new(DEFAULT_VERSION, dir.value.span()),
                    |v| v.value.clone(),
                );
                modules.push(Module {
                    dir: dir.value.clone(),
                    package: package.value.clone(),
                    version,
                });
            }
            (Some(dir), None) => errors.push(
                Error::custom(
                    "the module needs its entry package: add `package = \"./mypackage\"`",
                )
                .with_span(&dir.value),
            ),
            (None, package) => {
                if let Some(p) = package.or(version) {
                    errors.push(
                        Error::custom(
                            "`package` and `version` belong to a module: write them next to `module = \"path/to/cue/module\"`",
                        )
                        .with_span(&p.value),
                    );
                }
            }
        }
    }
    let field_manager = errors.handle(at_most_once(parsed.iter().flat_map(|a| &a.field_manager)));
    let finalizer = errors.handle(at_most_once(parsed.iter().flat_map(|a| &a.finalizer)));
    let watches = errors.handle(at_most_once(parsed.iter().flat_map(|a| &a.watches)));
    errors.finish()?;

    if modules.is_empty() {
        return Err(Error::custom(
            "#[derive(Abstraction)] needs its CUE module: add #[abstraction(module = \"path/to/cue/module\", package = \"./mypackage\")] (the path is relative to Cargo.toml)",
        )
        .with_span(&input.ident));
    }
    let mut seen_versions = BTreeSet::new();
    for m in &modules {
        let v = m.version.value();
        if !seen_versions.insert(v.clone()) {
            return Err(Error::custom(format!(
                "two modules have version {v:?}; give each `version = \"x.y.z\"` its own"
            ))
            .with_span(&m.dir));
        }
    }
    Ok(StructSettings {
        modules,
        field_manager: field_manager.flatten().map(|f| f.value.clone()),
        finalizer: finalizer.flatten().map(|f| f.value.clone()),
        watches: watches
            .flatten()
            .map(|w| w.kinds.clone())
            .unwrap_or_default(),
    })
}

/// The `#[abstraction(...)]` attributes among `attrs`.
fn abstraction_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("abstraction"))
}

/// Parses `#[abstraction(...)]` (a parenthesized list, nothing else) as `T`.
fn parse_list<T: FromMeta>(attr: &Attribute) -> Result<T> {
    require_list(attr)?;
    T::from_meta(&attr.meta)
}

/// Rejects `#[abstraction]` and `#[abstraction = ...]`, which darling would read as an empty list
/// or reject without saying what to write.
fn require_list(attr: &Attribute) -> Result<()> {
    match &attr.meta {
        Meta::List(_) => Ok(()),
        Meta::Path(path) => Err(Error::custom(
            "expected attribute arguments in parentheses: #[abstraction(...)]",
        )
        .with_span(path)),
        Meta::NameValue(nv) => {
            Err(Error::custom("expected parentheses: #[abstraction(...)]").with_span(&nv.eq_token))
        }
    }
}

/// A key's single occurrence, if any; a second one is an error at its key.
fn at_most_once<'a, T: Keyed + 'a>(
    occurrences: impl IntoIterator<Item = &'a T>,
) -> Result<Option<&'a T>> {
    let mut occurrences = occurrences.into_iter();
    let first = occurrences.next();
    match occurrences.next() {
        Some(second) => {
            let key = second.key();
            Err(Error::custom(format!("`{}` is given twice", path_to_string(key))).with_span(key))
        }
        None => Ok(first),
    }
}

/// An argument that remembers the key it was given under, for errors that point at the key.
trait Keyed {
    fn key(&self) -> &Path;
}

/// A `key = "string"` argument.
pub(super) struct StrArg {
    key: Path,
    value: LitStr,
}

impl Keyed for StrArg {
    fn key(&self) -> &Path {
        &self.key
    }
}

impl FromMeta for StrArg {
    fn from_meta(item: &Meta) -> Result<Self> {
        let key = item.path();
        let expected = || format!("expected `{} = \"...\"` (a string)", path_to_string(key));
        let Meta::NameValue(nv) = item else {
            return Err(Error::custom(expected()).with_span(item));
        };
        let Expr::Lit(ExprLit {
            lit: Lit::Str(value),
            ..
        }) = ungroup(&nv.value)
        else {
            return Err(Error::custom(expected()).with_span(&nv.value));
        };
        Ok(Self {
            key: key.clone(),
            value: value.clone(),
        })
    }
}

/// `watches = ["group/version/Kind", ...]`: the children's kinds (`version/Kind` for core).
pub(super) struct Watches {
    key: Path,
    kinds: Vec<LitStr>,
}

impl Keyed for Watches {
    fn key(&self) -> &Path {
        &self.key
    }
}

impl FromMeta for Watches {
    fn from_meta(item: &Meta) -> Result<Self> {
        let Meta::NameValue(nv) = item else {
            return Err(Error::custom(WATCHES_SYNTAX).with_span(item));
        };
        let Expr::Array(array) = ungroup(&nv.value) else {
            return Err(Error::custom(WATCHES_SYNTAX).with_span(&nv.value));
        };
        let mut errors = Error::accumulator();
        let kinds = array
            .elems
            .iter()
            .filter_map(|element| errors.handle(watched_kind(element)))
            .collect();
        errors.finish_with(Self {
            key: item.path().clone(),
            kinds,
        })
    }
}

/// One element of `watches`: a string `group/version/Kind` or `version/Kind`.
fn watched_kind(element: &Expr) -> Result<LitStr> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(s), ..
    }) = ungroup(element)
    else {
        return Err(Error::custom("expected a string \"group/version/Kind\"").with_span(element));
    };
    let value = s.value();
    let parts: Vec<&str> = value.split('/').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        return Err(Error::custom(
            "expected \"group/version/Kind\" (or \"v1/Kind\" for the core group), e.g. \"apps/v1/Deployment\"",
        )
        .with_span(s));
    }
    // `"batch/CronJob"` has the right shape but names version `batch`: a kind that would
    // silently never be watched.
    let version = parts[parts.len() - 2];
    let kind = parts[parts.len() - 1];
    if !is_api_version(version) {
        let hint = if parts.len() == 2 {
            format!(" (did you mean \"{version}/v1/{kind}\"?)")
        } else {
            String::new()
        };
        return Err(Error::custom(format!(
            "`{version}` in {value:?} is not a Kubernetes API version (v1, v2, v1beta1, v1alpha2, ...){hint}"
        ))
        .with_span(s));
    }
    if !kind.starts_with(|c: char| c.is_ascii_uppercase())
        || !kind.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(Error::custom(format!(
            "`{kind}` in {value:?} is not a kind: kinds are CamelCase, e.g. \"Deployment\""
        ))
        .with_span(s));
    }
    Ok(s.clone())
}

/// `v<N>`, `v<N>alpha<M>` or `v<N>beta<M>`: the versions Kubernetes API groups use.
fn is_api_version(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || rest.starts_with('0') {
        return false;
    }
    let suffix = &rest[digits..];
    let level = suffix
        .strip_prefix("alpha")
        .or_else(|| suffix.strip_prefix("beta"));
    match level {
        None => suffix.is_empty(),
        Some(n) => !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) && !n.starts_with('0'),
    }
}

/// An expression without the invisible groups `macro_rules!` wraps around fragments.
fn ungroup(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(group) => ungroup(&group.expr),
        _ => expr,
    }
}

/// The keys [`StructArgs`] does not declare (darling hands them to its `flatten` field): each
/// is an error that names the attribute and lists the keys it takes.
pub(super) struct UnknownKeys;

impl FromMeta for UnknownKeys {
    fn from_list(items: &[NestedMeta]) -> Result<Self> {
        reject_each(items, |key| {
            format!("unknown key `{key}` in #[abstraction(...)]; expected {STRUCT_KEYS}")
        })?;
        Ok(Self)
    }
}

/// The roles [`FieldArgs`] does not declare: each is an error that lists the roles.
pub(super) struct UnknownRoles;

impl FromMeta for UnknownRoles {
    fn from_list(items: &[NestedMeta]) -> Result<Self> {
        reject_each(items, |key| {
            format!("unknown field role `{key}`; expected {FIELD_ROLES}")
        })?;
        Ok(Self)
    }
}

/// One error per item, at its key.
fn reject_each(items: &[NestedMeta], message: impl Fn(&str) -> String) -> Result<()> {
    let mut errors = Error::accumulator();
    for item in items {
        errors.push(match item {
            NestedMeta::Meta(meta) => {
                Error::custom(message(&path_to_string(meta.path()))).with_span(meta.path())
            }
            NestedMeta::Lit(lit) => {
                Error::custom(message(&quote::quote!(#lit).to_string())).with_span(lit)
            }
        });
    }
    errors.finish()
}

/// The role `#[abstraction(...)]` gives a spec field (a field may play several).
#[derive(FromField)]
#[darling(attributes(abstraction))]
pub(super) struct FieldArgs {
    ident: Option<Ident>,
    ty: syn::Type,
    /// `#[abstraction(platform_ref)]` on an `Option<cuebe::PlatformRef>`.
    platform_ref: Role,
    /// `#[abstraction(deletion_policy)]` on an `Option<cuebe::lifecycle::DeletionPolicy>`.
    deletion_policy: Role,
    /// `#[abstraction(adopt)]` on an `Option<cuebe::lifecycle::AdoptSpec>`.
    adopt: Role,
    /// Any other role: an error naming the roles above.
    #[darling(flatten)]
    _unknown: UnknownRoles,
}

/// A field role, a bare word (`#[abstraction(adopt)]`): where it is written, if it is. Like
/// darling's `Flag`, but a value (`adopt = true`) is an error that says what to write.
pub(super) struct Role(Option<Span>);

impl FromMeta for Role {
    fn from_none() -> Option<Self> {
        Some(Self(None))
    }

    fn from_meta(item: &Meta) -> Result<Self> {
        match item {
            Meta::Path(path) => Ok(Self(Some(path.span()))),
            _ => {
                let role = path_to_string(item.path());
                Err(Error::custom(format!(
                    "the field role `{role}` takes no value: write #[abstraction({role})]"
                ))
                .with_span(item))
            }
        }
    }
}

/// The fields that play the roles, checked.
#[derive(Default)]
struct Roles {
    platform_ref: Option<RoleField>,
    deletion_policy: Option<RoleField>,
    adopt: Option<RoleField>,
}

/// Reads every field's `#[abstraction(...)]`; each role goes to one field at most.
fn field_roles(fields: &FieldsNamed) -> Result<Roles> {
    let mut errors = Error::accumulator();
    let mut roles = Roles::default();
    for field in &fields.named {
        let malformed = abstraction_attrs(&field.attrs)
            .filter_map(|attr| require_list(attr).err())
            .fold(0, |n, e| {
                errors.push(e);
                n + 1
            });
        if malformed > 0 {
            continue;
        }
        let Some(args) = errors.handle(FieldArgs::from_field(field)) else {
            continue;
        };
        let Some(ident) = args.ident else {
            continue;
        };
        let ty_span = args.ty.span();
        for (role, flag, slot) in [
            ("platform_ref", &args.platform_ref, &mut roles.platform_ref),
            (
                "deletion_policy",
                &args.deletion_policy,
                &mut roles.deletion_policy,
            ),
            ("adopt", &args.adopt, &mut roles.adopt),
        ] {
            let Role(Some(marked_at)) = flag else {
                continue;
            };
            if slot.is_some() {
                errors.push(error_at(
                    *marked_at,
                    format!("two fields are marked `{role}`; keep one"),
                ));
                continue;
            }
            *slot = Some(RoleField {
                ident: ident.clone(),
                ty_span,
            });
        }
    }
    errors.finish_with(roles)
}
