//! One source of truth for the spec: checks that an abstraction's Rust type (the CRD's OpenAPI
//! schema, which admission and the CLI also use) and its platform module's CUE schema (what
//! `input.spec` accepts) describe the same API.
//!
//! The two are written by hand in two languages; this check is what keeps them from drifting.
//! It walks the CRD's `spec` schema and asks the module's CUE, through the same in-process
//! bridge the renderer uses, about values the CRD accepts or refuses:
//!
//! - every CRD field is a CUE field (a sample value of the CRD's type is accepted, not "field
//!   not allowed"), and CUE accepts a spec with only the CRD's required fields;
//! - a field the CRD requires is required by CUE (removing it is an error);
//! - a value of another JSON type is refused by CUE as by the CRD;
//! - bounds agree: the CRD's `minimum`/`maximum`/`minLength` and enum values are accepted, the
//!   values just outside them refused; where the CRD has no bound, CUE accepts `0`, `-1` and `""`
//!   too (otherwise CUE is stricter than the CRD, and the user meets the rule at render time
//!   instead of at `kubectl apply`);
//! - defaults live in the CUE module (it is the platform's: a new module version may change
//!   them for every instance, which a `default:` written into stored objects by the API server
//!   would prevent). Every CUE default must be stated in the CRD field's description as
//!   `(default <value>)`, which is what `kubectl explain` shows, and must equal a CRD `default:`
//!   if one is set. A CUE default on a field the CRD does not have is reported too.
//!
//! What a probe cannot see: an optional CUE field without a default that the CRD lacks (CUE
//! never asks for it, and nothing enumerates optional fields through the bridge).
//!
//! ```no_run
//! # fn check<A: cuebe::Abstraction>() {
//! // In a test of your abstraction's crate: `check_schema_agrees::<WebService>()`.
//! cuebe_testkit::spec::check_schema_agrees::<A>().expect("the CRD and the CUE schema agree");
//! # }
//! ```
use std::fmt;
use std::time::Duration;

use cuebe::Abstraction;
use cuebe::cue::{CueErrorKind, CueErrors, ExportRequest, Exported, Fill, LoadedModule};
use cuebe::module::ModuleSource;
use serde_json::{Map, Value, json};

/// One disagreement between the CRD and the CUE schema, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The field, e.g. `spec.autoscaling.minReplicas`.
    pub field: String,
    /// What differs.
    pub problem: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaCheckError {
    /// The two schemas disagree; one entry per problem.
    #[error("the CRD and the CUE schema disagree:\n{}", .0.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"))]
    Drift(Vec<Drift>),
    /// The CRD has no `spec` schema.
    #[error("the CRD has no openAPIV3Schema with a spec property")]
    NoSpecSchema,
    /// The module does not load or evaluate.
    #[error("the platform module: {0}")]
    Module(#[from] CueErrors),
}

/// Checks that `A`'s CRD and its newest embedded module agree on the spec (see the module docs).
pub fn check_schema_agrees<A: Abstraction>() -> Result<(), SchemaCheckError> {
    let crd = cuebe::abstraction::crd::<A>();
    let schema = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage)
        .or(crd.spec.versions.first())
        .and_then(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref()?.get("spec"))
        .map(serde_json::to_value)
        .transpose()
        .map_err(|_| SchemaCheckError::NoSpecSchema)?
        .ok_or(SchemaCheckError::NoSpecSchema)?;
    // `platformRef.channel` is the operator's: it replaces a channel reference with the
    // channel's module reference before rendering, so a module never sees one.
    let mut schema = schema;
    if let Some(platform_ref) = schema.pointer_mut("/properties/platformRef/properties")
        && let Some(props) = platform_ref.as_object_mut()
    {
        props.remove("channel");
    }
    let modules = A::modules();
    let module = modules
        .resolve(None)
        .map_err(|_| SchemaCheckError::NoSpecSchema)?;
    let drift = schema_drift(&schema, &module.source)?;
    if drift.is_empty() {
        Ok(())
    } else {
        Err(SchemaCheckError::Drift(drift))
    }
}

/// Every disagreement between a CRD `spec` schema (OpenAPI v3, as JSON) and what the module's
/// `input.spec` accepts.
pub fn schema_drift(crd_spec: &Value, module: &ModuleSource) -> Result<Vec<Drift>, CueErrors> {
    let mut cue = CueSpec {
        module: LoadedModule::load(module.module_files(), 1)?,
        known: Vec::new(),
    };
    let mut drift = Vec::new();
    let base = minimal(crd_spec);
    match cue.check(&base)? {
        Verdict::Accepted(defaulted) => {
            check_defaults(crd_spec, &base, &defaulted, "spec", &mut drift)
        }
        Verdict::Refused(errors) => {
            // Reported once here, not again by every probe below.
            cue.known = errors.iter().map(|(field, _)| field.clone()).collect();
            for (field, message) in errors {
                drift.push(Drift {
                    field,
                    problem: format!(
                        "CUE refuses a spec with only the CRD's required fields: {message}"
                    ),
                });
            }
        }
    }
    walk(&cue, crd_spec, &base, &mut Vec::new(), &mut drift)?;
    drift.sort_by(|a, b| a.field.cmp(&b.field).then(a.problem.cmp(&b.problem)));
    drift.dedup();
    Ok(drift)
}

struct CueSpec {
    module: LoadedModule,
    /// Fields the minimal spec is already refused for.
    known: Vec<String>,
}

enum Verdict {
    /// CUE accepts the spec; the value with CUE's defaults.
    Accepted(Value),
    /// CUE refuses it: (field, message) pairs.
    Refused(Vec<(String, String)>),
}

impl CueSpec {
    fn check(&self, spec: &Value) -> Result<Verdict, CueErrors> {
        let out = self.module.eval(
            &[Fill {
                path: "input.spec",
                value: spec,
            }],
            &[ExportRequest::whole("input.spec")],
            Duration::from_secs(30),
        )?;
        Ok(match out.into_iter().next() {
            Some(Exported::Value(v)) => Verdict::Accepted(v),
            Some(Exported::Errors(errors)) => Verdict::Refused(
                errors
                    .into_iter()
                    .map(|e| {
                        let field = e.path.strip_prefix("input.").unwrap_or(&e.path).to_string();
                        let message = match e.kind {
                            CueErrorKind::Incomplete => format!("{} (required)", e.message),
                            _ => e.message,
                        };
                        (field, message)
                    })
                    .collect(),
            ),
            _ => Verdict::Refused(vec![("spec".into(), "no value at input.spec".into())]),
        })
    }

    fn accepts(&self, spec: &Value) -> Result<Result<(), String>, CueErrors> {
        Ok(match self.check(spec)? {
            Verdict::Accepted(_) => Ok(()),
            Verdict::Refused(errors) => {
                let new: Vec<String> = errors
                    .into_iter()
                    .filter(|(f, _)| !self.known.contains(f))
                    .map(|(f, m)| format!("{f}: {m}"))
                    .collect();
                if new.is_empty() {
                    Ok(())
                } else {
                    Err(new.join("; "))
                }
            }
        })
    }
}

fn types(schema: &Value) -> &str {
    schema.get("type").and_then(Value::as_str).unwrap_or("")
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A value the CRD accepts for `schema`, as small as it gets.
fn sample(schema: &Value) -> Value {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(alternatives) = schema
        .get("oneOf")
        .or(schema.get("anyOf"))
        .and_then(Value::as_array)
        && types(schema).is_empty()
        && let Some(first) = alternatives.first()
    {
        return sample(&merged(schema, first));
    }
    match types(schema) {
        // An object that must have some property gets its first one: `minProperties`, or CEL
        // rules, which this check cannot evaluate (`platformRef`: exactly one of its fields).
        "object"
            if schema.get("minProperties").and_then(Value::as_u64) > Some(0)
                || schema.get("x-kubernetes-validations").is_some() =>
        {
            let mut out = minimal(schema);
            if let (Value::Object(out), Some(props)) = (&mut out, properties(schema))
                && out.is_empty()
                && let Some((name, prop)) = props.iter().next()
            {
                out.insert(name.clone(), sample(prop));
            }
            out
        }
        "object" => minimal(schema),
        "array" => json!([]),
        "integer" | "number" => {
            let bound = |name: &str| schema.get(name).and_then(Value::as_f64).map(|b| b as i64);
            let min = bound("minimum").unwrap_or(1);
            json!(min.max(1).min(bound("maximum").unwrap_or(i64::MAX)))
        }
        "boolean" => json!(true),
        "string" => {
            if let Some(matching) = schema
                .get("pattern")
                .and_then(Value::as_str)
                .and_then(string_matching)
            {
                return json!(matching);
            }
            let len = schema.get("minLength").and_then(Value::as_u64).unwrap_or(1);
            json!("x".repeat(usize::try_from(len.max(1)).unwrap_or(1)))
        }
        _ => json!({}),
    }
}

/// A string the regular expression `pattern` (as the API server reads it: anywhere in the
/// string unless anchored) matches, generated from the pattern; `None` when it cannot be
/// generated (look-arounds, back references).
fn string_matching(pattern: &str) -> Option<String> {
    use proptest::strategy::{Strategy, ValueTree};
    // proptest generates whole strings and has no anchors: a whole string that matches the
    // pattern without its `^`/`$` matches it with them too.
    let unanchored = pattern.strip_prefix('^').unwrap_or(pattern);
    let unanchored = unanchored.strip_suffix('$').unwrap_or(unanchored);
    let strategy = proptest::string::string_regex(unanchored).ok()?;
    let checker = regex::Regex::new(pattern).ok()?;
    // Deterministic: the same sample on every run, so a drift report does not flicker.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut tree = strategy.new_tree(&mut runner).ok()?;
    // Every value of the strategy matches, so shrinking all the way gives the smallest sample
    // (and readable reports): bounded, as the shrinking of repetitions can take many steps.
    for _ in 0..10_000 {
        if !tree.simplify() {
            break;
        }
    }
    let candidate = tree.current();
    checker.is_match(&candidate).then_some(candidate)
}

/// `schema` with one of its `oneOf` alternatives folded in.
fn merged(schema: &Value, alternative: &Value) -> Value {
    let mut out = schema.clone();
    if let (Some(out), Some(alt)) = (out.as_object_mut(), alternative.as_object()) {
        out.remove("oneOf");
        out.remove("anyOf");
        for (k, v) in alt {
            out.entry(k.clone()).or_insert(v.clone());
        }
        out.entry("type").or_insert(json!("object"));
    }
    out
}

/// The object with only the required fields, each sampled.
fn minimal(schema: &Value) -> Value {
    let mut out = Map::new();
    if let Some(props) = properties(schema) {
        for name in required(schema) {
            if let Some(p) = props.get(name) {
                out.insert(name.to_string(), sample(p));
            }
        }
    }
    Value::Object(out)
}

/// `base` with `value` at `path` (absent parents get their minimal objects from `root`).
fn with(root: &Value, base: &Value, path: &[String], value: Option<Value>) -> Value {
    let mut out = base.clone();
    let mut schema = root;
    let mut cursor = &mut out;
    for (i, name) in path.iter().enumerate() {
        let prop = properties(schema).and_then(|p| p.get(name));
        let Some(obj) = cursor.as_object_mut() else {
            return out;
        };
        if i + 1 == path.len() {
            match value {
                Some(v) => obj.insert(name.clone(), v),
                None => obj.remove(name),
            };
            return out;
        }
        let Some(prop) = prop else { return out };
        cursor = obj.entry(name.clone()).or_insert_with(|| minimal(prop));
        schema = prop;
    }
    out
}

fn field_name(path: &[String]) -> String {
    std::iter::once("spec")
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(".")
}

fn walk(
    cue: &CueSpec,
    root: &Value,
    base: &Value,
    path: &mut Vec<String>,
    drift: &mut Vec<Drift>,
) -> Result<(), CueErrors> {
    let schema = path
        .iter()
        .try_fold(root, |s, name| properties(s)?.get(name));
    let Some(schema) = schema else { return Ok(()) };
    let Some(props) = properties(schema) else {
        return Ok(());
    };
    let required_here = required(schema);
    for (name, prop) in props {
        path.push(name.clone());
        let field = field_name(path);
        let mut report = |problem: String| {
            drift.push(Drift {
                field: field.clone(),
                problem,
            })
        };
        let at = |v: Value| with(root, base, path, Some(v));
        // The field exists in CUE and takes the CRD's sample.
        let good = sample(prop);
        if let Err(e) = cue.accepts(&at(good.clone()))? {
            report(if e.contains("not allowed") {
                "in the CRD, not in the CUE schema".to_string()
            } else {
                format!("CUE refuses {good}, which the CRD accepts: {e}")
            });
            path.pop();
            continue;
        }
        if required_here.contains(&name.as_str())
            && cue.accepts(&with(root, base, path, None))?.is_ok()
        {
            report("required in the CRD, optional (or defaulted) in CUE".into());
        }
        // Another JSON type.
        let other = match types(prop) {
            "string" => Some(json!(12)),
            "integer" | "number" | "boolean" | "array" | "object" => Some(json!("x")),
            _ => None,
        };
        if let Some(other) = other
            && cue.accepts(&at(other.clone()))?.is_ok()
        {
            report(format!(
                "CUE accepts {other}, the CRD wants type {}",
                types(prop)
            ));
        }
        check_bounds(cue, prop, &at, &mut report)?;
        if types(prop) == "object" {
            walk(cue, root, base, path, drift)?;
        }
        path.pop();
    }
    Ok(())
}

fn check_bounds(
    cue: &CueSpec,
    prop: &Value,
    at: &dyn Fn(Value) -> Value,
    report: &mut dyn FnMut(String),
) -> Result<(), CueErrors> {
    let mut expect = |value: Value, crd_accepts: bool, why: &str| -> Result<(), CueErrors> {
        let cue_accepts = cue.accepts(&at(value.clone()))?;
        match (crd_accepts, cue_accepts) {
            (true, Err(e)) => report(format!(
                "CUE refuses {value}, which the CRD accepts ({why}): {e}"
            )),
            (false, Ok(())) => report(format!(
                "CUE accepts {value}, which the CRD refuses ({why})"
            )),
            _ => {}
        }
        Ok(())
    };
    if let Some(values) = prop.get("enum").and_then(Value::as_array) {
        for v in values {
            expect(v.clone(), true, "an enum value")?;
        }
        expect(json!("NotOneOfTheEnumValues"), false, "not an enum value")?;
        return Ok(());
    }
    match types(prop) {
        "integer" => {
            // schemars writes integer bounds as numbers (`minimum: 1.0`).
            let bound = |name: &str| prop.get(name).and_then(Value::as_f64).map(|b| b as i64);
            let (min, max) = (bound("minimum"), bound("maximum"));
            match min {
                Some(min) => {
                    expect(json!(min), true, "the minimum")?;
                    expect(json!(min - 1), false, "below the minimum")?;
                }
                None => {
                    expect(json!(0), true, "no minimum in the CRD")?;
                    expect(json!(-1), true, "no minimum in the CRD")?;
                }
            }
            match max {
                Some(max) => {
                    expect(json!(max), true, "the maximum")?;
                    expect(json!(max + 1), false, "above the maximum")?;
                }
                None => expect(json!(i32::MAX), true, "no maximum in the CRD")?,
            }
        }
        "string" if prop.get("pattern").is_none() && prop.get("format").is_none() => {
            match prop.get("minLength").and_then(Value::as_u64) {
                Some(n) if n > 0 => expect(json!(""), false, "shorter than minLength")?,
                _ => expect(json!(""), true, "no minLength in the CRD")?,
            }
        }
        _ => {}
    }
    Ok(())
}

/// CUE's defaults (what its export adds to `sent`) must be in the CRD and shown there.
fn check_defaults(
    crd: &Value,
    sent: &Value,
    defaulted: &Value,
    field: &str,
    drift: &mut Vec<Drift>,
) {
    let Some(out) = defaulted.as_object() else {
        return;
    };
    for (name, value) in out {
        let here = format!("{field}.{name}");
        let prop = properties(crd).and_then(|p| p.get(name));
        let sent_here = sent.get(name);
        let Some(prop) = prop else {
            drift.push(Drift {
                field: here,
                problem: format!("in the CUE schema (default {value}), not in the CRD"),
            });
            continue;
        };
        match sent_here {
            Some(sent_value) if value.is_object() => {
                check_defaults(prop, sent_value, value, &here, drift);
            }
            Some(_) => {}
            None => check_default(prop, value, &here, drift),
        }
    }
}

fn check_default(prop: &Value, value: &Value, field: &str, drift: &mut Vec<Drift>) {
    // An empty list or object is "nothing": there is no default to show.
    if value.as_array().is_some_and(Vec::is_empty) {
        return;
    }
    if let Some(object) = value.as_object() {
        let props = properties(prop);
        for (name, v) in object {
            let here = format!("{field}.{name}");
            match props.and_then(|p| p.get(name)) {
                Some(p) => check_default(p, v, &here, drift),
                None => drift.push(Drift {
                    field: here,
                    problem: format!("in the CUE schema (default {v}), not in the CRD"),
                }),
            }
        }
        return;
    }
    if let Some(crd_default) = prop.get("default")
        && crd_default != value
    {
        drift.push(Drift {
            field: field.to_string(),
            problem: format!("the CRD's default is {crd_default}, CUE's is {value}"),
        });
    }
    let shown = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let description = prop
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .replace('`', "");
    if !description.contains(&format!("(default {shown})")) {
        drift.push(Drift {
            field: field.to_string(),
            problem: format!(
                "CUE defaults it to {value}; its CRD description (kubectl explain) must say \"(default {shown})\""
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_match_the_patterns_the_crds_use() {
        for pattern in [
            "^/",
            "^arn:aws[a-z-]*:iam::",
            "^[A-Za-z_][A-Za-z0-9_]*$",
            r"^oci://[^@\s]+@sha256:[0-9a-f]{64}$",
            r"^(git\+https|git\+file|git)://[^?#@\s]+\?([^&#\s]+&)*ref=[^&#\s]+(&[^&#\s]+)*$",
        ] {
            let sample =
                string_matching(pattern).unwrap_or_else(|| panic!("no sample for {pattern}"));
            assert!(
                regex::Regex::new(pattern).is_ok_and(|r| r.is_match(&sample)),
                "{sample:?} does not match {pattern}"
            );
        }
        assert_eq!(string_matching("^/").as_deref(), Some("/"));
    }

    #[test]
    fn an_object_that_needs_a_property_gets_its_first() {
        let schema = json!({
            "type": "object",
            "minProperties": 1,
            "properties": {"embedded": {"type": "string"}, "oci": {"type": "string"}}
        });
        assert_eq!(sample(&schema), json!({"embedded": "x"}));
        let ruled = json!({
            "type": "object",
            "x-kubernetes-validations": [{"rule": "size(self) == 1"}],
            "properties": {"embedded": {"type": "string"}}
        });
        assert_eq!(sample(&ruled), json!({"embedded": "x"}));
        let plain = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert_eq!(sample(&plain), json!({}));
    }
}
