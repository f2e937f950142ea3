//! The [`Abstraction`] trait: what the generic controller, `explain` and the CLI need to know
//! about a custom resource backed by a CUE module.
//!
//! Implement it with `#[derive(cuebe::Abstraction)]` on the spec struct of a kube
//! `CustomResource` (see the macro's documentation); implementing it by hand is possible too.
use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, JSONSchemaProps,
    JSONSchemaPropsOrArray, ValidationRule,
};
use kube::core::NamespaceResourceScope;
use kube::{CustomResourceExt, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::instance::Instance;
use crate::lifecycle::{AdoptRef, DeletionPolicy};
use crate::module::{ModuleSet, PlatformRef};
use crate::renderer::{Capabilities, RenderInput};
use crate::status::AbstractionStatus;

/// The finalizer the controller uses unless the abstraction names another.
pub const DEFAULT_FINALIZER: &str = "cuebe.dev/cleanup";

/// A custom resource whose children are rendered by a CUE module.
///
/// ```
/// use cuebe::Abstraction;
/// use kube::CustomResource;
/// use schemars::JsonSchema;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(CustomResource, cuebe::Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
/// #[kube(group = "example.com", version = "v1", kind = "Greeter", namespaced,
///        status = "cuebe::status::AbstractionStatus")]
/// #[abstraction(module = "../../cue/platform", package = "./webservice",
///               watches = ["apps/v1/Deployment", "v1/Service"])]
/// pub struct GreeterSpec {
///     pub message: String,
/// }
///
/// assert_eq!(Greeter::FIELD_MANAGER, "cuebe-greeter");
/// assert_eq!(Greeter::WATCHES, &["apps/v1/Deployment", "v1/Service"]);
/// assert_eq!(Greeter::FINALIZER, "cuebe.dev/cleanup");
/// ```
pub trait Abstraction:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + CustomResourceExt
    + schemars::JsonSchema
    + Clone
    + std::fmt::Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The field manager every apply uses (e.g. `cuebe-webservice`).
    const FIELD_MANAGER: &'static str;
    /// The finalizer that runs deletion.
    const FINALIZER: &'static str = DEFAULT_FINALIZER;
    /// Kinds of the children to watch, as `group/version/Kind` (`v1/Kind` for the core group).
    /// A kind the cluster does not serve when the controller starts is skipped.
    const WATCHES: &'static [&'static str] = &[];

    /// Every embedded module version, newest last.
    fn modules() -> ModuleSet;
    /// The spec, as the module receives it (`input.spec`).
    fn spec_value(&self) -> serde_json::Value;
    /// The status, if written yet.
    fn abstraction_status(&self) -> Option<&AbstractionStatus>;
    /// Takes the status out of the instance: the instance store keeps statuses apart and
    /// compactly (see [`crate::instance_store`]). The derive implements it; the default leaves
    /// the status in the object, which the store then holds whole (more memory per instance).
    fn take_abstraction_status(&mut self) -> Option<AbstractionStatus> {
        None
    }
    /// The module version the instance pins (default: the newest embedded one).
    fn platform_ref(&self) -> Option<PlatformRef> {
        None
    }
    /// What happens to the children when the instance is deleted.
    fn deletion_policy(&self) -> DeletionPolicy {
        DeletionPolicy::Delete
    }
    /// Existing objects the instance asks to take over.
    fn adopt(&self) -> Vec<AdoptRef> {
        Vec::new()
    }
    /// The optional APIs the module may render for, and how to detect each.
    fn capability_probes() -> Vec<CapabilityProbe> {
        well_known_capabilities()
    }
}

/// How to tell whether a cluster has an optional API: it serves `group/version/kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityProbe {
    /// The capability's name as the module sees it (`input.capabilities`).
    pub name: &'static str,
    /// API group of the kind that proves it.
    pub group: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The kind.
    pub kind: &'static str,
}

/// `ack-iam` (the ACK IAM controller's `Role`) and `gateway-api` (`HTTPRoute`).
pub fn well_known_capabilities() -> Vec<CapabilityProbe> {
    vec![
        CapabilityProbe {
            name: Capabilities::ACK_IAM,
            group: "iam.services.k8s.aws",
            version: "v1alpha1",
            kind: "Role",
        },
        CapabilityProbe {
            name: Capabilities::GATEWAY_API,
            group: "gateway.networking.k8s.io",
            version: "v1",
            kind: "HTTPRoute",
        },
    ]
}

pub use crate::discovery::{discover_capabilities, served_kind};

/// Every CustomResourceDefinition an operator for `A` uses: `A`'s own ([`crd`]) and cuebe's
/// (`PlatformChannel`, for rollouts, and with the `remote-modules` feature
/// `PlatformModuleApproval`, for a module policy's `requireApproval`). The `crd` command prints
/// them, `dev` installs them.
///
/// ```
/// # use kube::CustomResource;
/// # use schemars::JsonSchema;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(CustomResource, cuebe::Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
/// # #[kube(group = "example.com", version = "v1", kind = "Greeter", namespaced,
/// #        status = "cuebe::status::AbstractionStatus")]
/// # #[abstraction(module = "../../cue/platform", package = "./webservice")]
/// # pub struct GreeterSpec { pub message: String }
/// let names: Vec<_> = cuebe::abstraction::crds::<Greeter>()
///     .into_iter()
///     .filter_map(|c| c.metadata.name)
///     .collect();
/// assert_eq!(names[..2], ["greeters.example.com", "platformchannels.cuebe.dev"]);
/// ```
pub fn crds<A: Abstraction>() -> Vec<CustomResourceDefinition> {
    #[allow(unused_mut)]
    let mut crds = vec![crd::<A>(), crate::rollout::channel_crd()];
    #[cfg(feature = "remote-modules")]
    crds.push(crate::approval::approval_crd());
    crds
}

pub mod conventions;

/// The CRD category every abstraction joins: `kubectl get platform` lists the instances of all
/// of them.
pub const CATEGORY: &str = "platform";

/// The CustomResourceDefinition to install for `A`: kube's [`CustomResourceExt::crd`] with the
/// instance name rule ([`crate::instance::NAME_RULE_CEL`]) at the root of every version's
/// schema, so that the API server refuses — at `kubectl apply`, naming the field — a name the
/// platform module cannot render (64 characters, a dot), instead of the operator half-applying
/// it. The `crd` command, `dev` and the testkit install this one.
///
/// It also makes the kind behave as `kubectl` users expect of a platform API: it joins the
/// [`CATEGORY`] `platform` (`kubectl get platform`), its table answers "is it ready, and if not
/// why" ([`printer_columns`]: Ready, Reason, Nodes, Module, Age, and the Ready message with
/// `-o wide`; columns the kind declares with `printcolumn` are kept, before Age), and `kubectl
/// explain KIND` shows the spec struct's doc comment instead of kube's placeholder.
///
/// ```
/// # use kube::CustomResource;
/// # use schemars::JsonSchema;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(CustomResource, cuebe::Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
/// # #[kube(group = "example.com", version = "v1", kind = "Greeter", namespaced,
/// #        status = "cuebe::status::AbstractionStatus")]
/// # #[abstraction(module = "../../cue/platform", package = "./webservice")]
/// # pub struct GreeterSpec { pub message: String }
/// let crd = cuebe::abstraction::crd::<Greeter>();
/// let schema = crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
/// let rules = schema.x_kubernetes_validations.as_ref().unwrap();
/// assert!(rules[0].rule.contains(cuebe::instance::NAME_RULE_CEL));
/// assert_eq!(crd.spec.names.categories, Some(vec!["platform".to_string()]));
/// let columns = crd.spec.versions[0].additional_printer_columns.as_ref().unwrap();
/// let names: Vec<_> = columns.iter().map(|c| c.name.as_str()).collect();
/// assert_eq!(names, ["Ready", "Reason", "Nodes", "Module", "Age", "Message"]);
/// ```
pub fn crd<A: Abstraction>() -> CustomResourceDefinition {
    let mut crd = A::crd();
    // kube's schema for an optional field of an enum type keeps the enum's doc comment, not the
    // field's (`exposure.type` read "Exposure type."): `kubectl explain` must show what the field
    // means and its default, so every field gets its own doc comment back.
    let raw = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator()
        .into_root_schema_for::<A>();
    let raw = serde_json::to_value(raw).unwrap_or_default();
    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            restore_field_descriptions(root, &raw);
        }
    }
    let categories = crd.spec.names.categories.get_or_insert_with(Vec::new);
    if !categories.iter().any(|c| c == CATEGORY) {
        categories.push(CATEGORY.to_string());
    }
    for version in &mut crd.spec.versions {
        let declared = version
            .additional_printer_columns
            .take()
            .unwrap_or_default();
        version.additional_printer_columns = Some(printer_columns(declared));
        let spec_description = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref()?.get("spec")?.description.clone());
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            && root
                .description
                .as_deref()
                .is_none_or(|d| d.starts_with("Auto-generated derived type"))
        {
            // kube describes the root as "Auto-generated derived type for …Spec via
            // `CustomResource`"; `kubectl explain KIND` should say what the kind is.
            root.description = spec_description;
        }
    }
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        // On create only (names are immutable): checked on every update, the rule would stop
        // an instance admitted before it existed from even losing its finalizer.
        let rule = format!("oldSelf.hasValue() || ({})", crate::instance::NAME_RULE_CEL);
        let rules = schema.x_kubernetes_validations.get_or_insert_with(Vec::new);
        if !rules.iter().any(|r| r.rule == rule) {
            rules.push(ValidationRule {
                rule,
                message: Some(crate::instance::NAME_RULE_MESSAGE.to_string()),
                reason: Some("FieldValueInvalid".to_string()),
                optional_old_self: Some(true),
                ..ValidationRule::default()
            });
        }
    }
    crd
}

/// Gives every property of `schema` the description of its field in `raw` (the schemars schema
/// of the same type before kube's structural rewrites).
fn restore_field_descriptions(schema: &mut JSONSchemaProps, raw: &serde_json::Value) {
    let raw = with_properties(raw);
    if let (Some(properties), Some(raw_properties)) = (
        schema.properties.as_mut(),
        raw.get("properties").and_then(serde_json::Value::as_object),
    ) {
        for (name, property) in properties.iter_mut() {
            let Some(raw_property) = raw_properties.get(name) else {
                continue;
            };
            if let Some(description) = raw_property
                .get("description")
                .and_then(serde_json::Value::as_str)
            {
                property.description = Some(description.to_string());
            }
            restore_field_descriptions(property, raw_property);
        }
    }
    if let (Some(JSONSchemaPropsOrArray::Schema(items)), Some(raw_items)) =
        (schema.items.as_mut(), with_properties(raw).get("items"))
    {
        restore_field_descriptions(items, raw_items);
    }
}

/// `raw`, or the alternative of its `anyOf`/`oneOf` (an `Option<T>`: `T` or null) that has the
/// properties or items.
fn with_properties(raw: &serde_json::Value) -> &serde_json::Value {
    if raw.get("properties").is_some() || raw.get("items").is_some() {
        return raw;
    }
    ["anyOf", "oneOf", "allOf"]
        .iter()
        .filter_map(|k| raw.get(k)?.as_array())
        .flatten()
        .find(|alt| alt.get("properties").is_some() || alt.get("items").is_some())
        .unwrap_or(raw)
}

/// The table `kubectl get` prints for an abstraction: Ready (the `Ready` condition's status),
/// Reason (its reason: why not), Nodes (`ready/total`), Module (the module the last graph was
/// rendered with), the columns the kind declares (`printcolumn`), Age, and with `-o wide` the
/// Ready condition's message. A declared column with a standard column's name replaces it.
///
/// ```
/// let names: Vec<_> = cuebe::abstraction::printer_columns(vec![])
///     .into_iter()
///     .map(|c| (c.name, c.priority.unwrap_or(0)))
///     .collect();
/// assert_eq!(names[0], ("Ready".to_string(), 0));
/// assert_eq!(names[5], ("Message".to_string(), 1));
/// ```
pub fn printer_columns(
    declared: Vec<CustomResourceColumnDefinition>,
) -> Vec<CustomResourceColumnDefinition> {
    let column = |name: &str, path: &str, type_: &str, description: &str, priority| {
        CustomResourceColumnDefinition {
            name: name.to_string(),
            json_path: path.to_string(),
            type_: type_.to_string(),
            description: Some(description.to_string()),
            priority,
            format: None,
        }
    };
    let ready = r#".status.conditions[?(@.type=="Ready")]"#;
    let leading = [
        column(
            "Ready",
            &format!("{ready}.status"),
            "string",
            "Whether every node of the graph is ready (True, False or Unknown).",
            None,
        ),
        column(
            "Reason",
            &format!("{ready}.reason"),
            "string",
            "Why it is or is not ready, in one word (PolicyViolation, Progressing, Stalled, ...).",
            None,
        ),
        column(
            "Nodes",
            ".status.readyNodes",
            "string",
            "Ready nodes of the graph, out of all.",
            None,
        ),
        column(
            "Module",
            ".status.moduleRef",
            "string",
            "The platform module the last graph was rendered with.",
            None,
        ),
    ];
    let age = column(
        "Age",
        ".metadata.creationTimestamp",
        "date",
        "Time since the instance was created.",
        None,
    );
    let message = column(
        "Message",
        &format!("{ready}.message"),
        "string",
        "What the Ready condition says (shown with -o wide).",
        Some(1),
    );
    let is_declared = |name: &str| declared.iter().any(|c| c.name == name);
    let mut columns: Vec<_> = leading
        .into_iter()
        .filter(|c| !is_declared(&c.name))
        .collect();
    let (declared_age, declared): (Vec<_>, Vec<_>) =
        declared.into_iter().partition(|c| c.name == "Age");
    columns.extend(declared);
    columns.extend(declared_age.into_iter().next().or(Some(age)));
    if !columns.iter().any(|c| c.name == message.name) {
        columns.push(message);
    }
    columns
}

/// The live objects of `inventory`, by node id: what `input.exports` is read from when an
/// instance is rendered outside the controller (`explain`, `diff`). An object that cannot be
/// read is left out, as if not yet observed.
///
/// ```no_run
/// # async fn f(executor: &dyn cuebe::executor::Executor, status: &cuebe::status::AbstractionStatus) {
/// let observed = cuebe::abstraction::observed_exports(executor, &status.inventory).await;
/// # }
/// ```
pub async fn observed_exports(
    executor: &dyn crate::executor::Executor,
    inventory: &[crate::inventory::InventoryEntry],
) -> BTreeMap<String, serde_json::Value> {
    let mut observed = BTreeMap::new();
    for entry in inventory {
        if let Ok(Some(live)) = executor.live(entry).await {
            observed.insert(entry.node_id.clone(), live);
        }
    }
    observed
}

pub use crate::discovery::parse_watch;

/// An embedded platform module that does not load (a syntax error, a wrong `package`).
#[derive(Debug, thiserror::Error)]
#[error(
    "the embedded platform module {version} of {kind} (package {package:?}) does not load: {source}"
)]
pub struct EmbeddedModuleError {
    /// The abstraction's kind.
    pub kind: String,
    /// The module version (`version = ...` of the derive).
    pub version: String,
    /// Its entry package.
    pub package: String,
    /// What CUE said.
    #[source]
    pub source: Box<crate::renderer::RenderError>,
}

/// Loads every embedded module version of `A` and reports the first that does not: the
/// derive generates a unit test calling this for every abstraction, and `run` and `dev` call it
/// before they start, so a broken module fails at build or start, never at the first render.
///
/// ```
/// # use cuebe::Abstraction;
/// # use kube::CustomResource;
/// # use schemars::JsonSchema;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(CustomResource, cuebe::Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
/// # #[kube(group = "example.com", version = "v1", kind = "Greeter", namespaced,
/// #        status = "cuebe::status::AbstractionStatus")]
/// # #[abstraction(module = "../../cue/platform", package = "./webservice")]
/// # pub struct GreeterSpec { pub message: String }
/// cuebe::abstraction::check_embedded_modules::<Greeter>().expect("the module loads");
/// ```
pub fn check_embedded_modules<A: Abstraction>() -> Result<(), EmbeddedModuleError> {
    let modules = A::modules();
    let renderer = crate::renderer::CueRenderer::new(modules.clone());
    for version in modules.versions() {
        let package = modules
            .resolve(Some(&PlatformRef::embedded(version)))
            .map(|m| m.source.package().to_string())
            .unwrap_or_default();
        if let Err(source) = renderer.preload(Some(&PlatformRef::embedded(version))) {
            return Err(EmbeddedModuleError {
                kind: A::kind(&()).into_owned(),
                version: version.to_string(),
                package,
                source: Box::new(source),
            });
        }
    }
    Ok(())
}

/// The executor's view of an instance.
pub fn instance_of<A: Abstraction>(object: &A) -> Instance {
    let meta = object.meta();
    Instance {
        kind: A::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        generation: meta.generation,
        adopt: object.adopt(),
    }
}

/// The renderer input for an instance, exactly as the controller builds it (a published module
/// the instance names is fetched by the caller and set as `module`).
pub fn render_input<A: Abstraction>(
    object: &A,
    capabilities: Capabilities,
    observed: BTreeMap<String, serde_json::Value>,
) -> RenderInput {
    RenderInput {
        instance: instance_of(object),
        spec: object.spec_value(),
        platform_ref: object.platform_ref(),
        module: None,
        capabilities,
        observed,
    }
}

/// Helpers the derive's expansion calls; their signatures give type errors that name the field.
#[doc(hidden)]
pub mod __fields {
    use crate::lifecycle::{AdoptRef, AdoptSpec, DeletionPolicy};
    use crate::module::PlatformRef;
    pub use serde_json::Value;

    pub fn platform_ref(field: &Option<PlatformRef>) -> Option<PlatformRef> {
        field.clone()
    }

    pub fn deletion_policy(field: &Option<DeletionPolicy>) -> DeletionPolicy {
        field.unwrap_or_default()
    }

    pub fn adopt(field: &Option<AdoptSpec>) -> Vec<AdoptRef> {
        field
            .as_ref()
            .map(|a| a.resources.clone())
            .unwrap_or_default()
    }

    /// The body of the unit test the derive generates: every embedded module loads.
    pub fn assert_embedded_modules_load<A: crate::Abstraction>() {
        if let Err(e) = crate::abstraction::check_embedded_modules::<A>() {
            panic!("{e}");
        }
    }

    /// The body of the other unit test the derive generates: every field name of the spec
    /// follows the Kubernetes API conventions. The status is cuebe's, checked by its own tests.
    pub fn assert_field_names_follow_conventions<A: crate::Abstraction>() {
        let problems: Vec<_> =
            crate::abstraction::conventions::field_name_problems(&crate::abstraction::crd::<A>())
                .into_iter()
                .filter(|p| p.path.starts_with("spec."))
                .collect();
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            panic!(
                "field names break the Kubernetes API conventions (lowerCamelCase, acronyms in one case; rename with #[serde(rename = \"...\")]):\n{}",
                list.join("\n")
            );
        }
    }

    pub fn to_value<T: serde::Serialize>(spec: &T) -> Value {
        // A spec is plain data (strings, numbers, maps with string keys): it always serialises.
        serde_json::to_value(spec).unwrap_or(Value::Null)
    }
}
