//! The spec checker catches each way a CRD schema and a CUE schema can drift apart, and passes
//! a pair that agrees.
#![allow(clippy::unwrap_used)]

use cuebe::module::ModuleSource;
use cuebe_testkit::spec::{Drift, schema_drift};
use serde_json::{Value, json};

/// A module whose `input.spec` is `schema`.
fn module(schema: &str) -> ModuleSource {
    ModuleSource::new(
        [
            (
                "cue.mod/module.cue",
                "module: \"example.com/drift@v0\"\nlanguage: version: \"v0.12.0\"\n".to_string(),
            ),
            (
                "m/m.cue",
                format!("package m\n\ninput: spec: #Spec\n\n#Spec: {{\n{schema}\n}}\n"),
            ),
        ],
        "./m",
    )
}

/// The CRD side of the agreeing pair (what schemars makes of a Rust struct with these fields).
fn crd() -> Value {
    json!({
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "minLength": 1, "description": "Image."},
            "replicas": {"type": "integer", "format": "int32", "description": "Replicas (default 2)."},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "Port (default 8080)."},
            "mode": {"type": "string", "enum": ["Fast", "Slow"], "description": "Mode (default Fast)."},
            "scaling": {
                "type": "object",
                "required": ["max"],
                "properties": {"max": {"type": "integer", "minimum": 1}}
            }
        }
    })
}

const AGREEING: &str = r#"
    image:    string & !=""
    replicas: *2 | int
    port:     *8080 | (int & >=1 & <=65535)
    mode:     *"Fast" | "Slow"
    scaling?: max: int & >=1
"#;

fn drift(crd: &Value, cue: &str) -> Vec<Drift> {
    schema_drift(crd, &module(cue)).unwrap()
}

fn fields(drift: &[Drift]) -> Vec<&str> {
    drift.iter().map(|d| d.field.as_str()).collect()
}

#[test]
fn an_agreeing_pair_has_no_drift() {
    assert_eq!(drift(&crd(), AGREEING), vec![]);
}

#[test]
fn each_kind_of_drift_is_named() {
    struct Case {
        what: &'static str,
        crd: Value,
        cue: String,
        field: &'static str,
        says: &'static str,
    }
    let mut crd_with_extra = crd();
    crd_with_extra["properties"]["colour"] = json!({"type": "string"});
    let mut crd_required_scaling_min = crd();
    crd_required_scaling_min["properties"]["scaling"]["properties"]["min"] =
        json!({"type": "integer", "minimum": 1});
    crd_required_scaling_min["properties"]["scaling"]["required"] = json!(["max", "min"]);
    let mut crd_other_enum = crd();
    crd_other_enum["properties"]["mode"]["enum"] = json!(["Fast", "Slow", "Turbo"]);
    let mut crd_no_port_bounds = crd();
    crd_no_port_bounds["properties"]["port"] =
        json!({"type": "integer", "description": "Port (default 8080)."});
    let mut crd_wrong_default_text = crd();
    crd_wrong_default_text["properties"]["replicas"]["description"] =
        json!("Replicas (default 3).");
    let mut crd_default_field = crd();
    crd_default_field["properties"]["replicas"]["default"] = json!(3);
    let cases = [
        Case {
            what: "a field only in the CRD",
            crd: crd_with_extra,
            cue: AGREEING.into(),
            field: "spec.colour",
            says: "in the CRD, not in the CUE schema",
        },
        Case {
            what: "a field only in CUE (with a default)",
            crd: crd(),
            cue: format!("{AGREEING}\n    tier: *\"web\" | string"),
            field: "spec.tier",
            says: "not in the CRD",
        },
        Case {
            what: "a field CUE requires and the CRD does not",
            crd: crd(),
            cue: format!("{AGREEING}\n    queue: string"),
            field: "spec.queue",
            says: "required",
        },
        Case {
            what: "a different type",
            crd: crd(),
            cue: AGREEING.replace("replicas: *2 | int", "replicas: *2 | int | string"),
            field: "spec.replicas",
            says: "CUE accepts \"x\", the CRD wants type integer",
        },
        Case {
            what: "required in the CRD, optional in CUE",
            crd: crd_required_scaling_min,
            cue: AGREEING.replace(
                "scaling?: max: int & >=1",
                "scaling?: {max: int & >=1, min?: int & >=1}",
            ),
            field: "spec.scaling.min",
            says: "required in the CRD, optional",
        },
        Case {
            what: "a bound only in CUE",
            crd: crd_no_port_bounds,
            cue: AGREEING.into(),
            field: "spec.port",
            says: "CUE refuses 0, which the CRD accepts",
        },
        Case {
            what: "a bound only in the CRD",
            crd: crd(),
            cue: AGREEING.replace("(int & >=1 & <=65535)", "(int & >=1)"),
            field: "spec.port",
            says: "CUE accepts 65536, which the CRD refuses",
        },
        Case {
            what: "an enum value only in the CRD",
            crd: crd_other_enum,
            cue: AGREEING.into(),
            field: "spec.mode",
            says: "CUE refuses \"Turbo\"",
        },
        Case {
            what: "a default the description misstates",
            crd: crd_wrong_default_text,
            cue: AGREEING.into(),
            field: "spec.replicas",
            says: "must say \"(default 2)\"",
        },
        Case {
            what: "a CRD default that differs from CUE's",
            crd: crd_default_field,
            cue: AGREEING.into(),
            field: "spec.replicas",
            says: "the CRD's default is 3, CUE's is 2",
        },
    ];
    for case in cases {
        let found = drift(&case.crd, &case.cue);
        assert!(
            found
                .iter()
                .any(|d| d.field == case.field && d.problem.contains(case.says)),
            "{}: expected {} to say {:?}, found {:#?}",
            case.what,
            case.field,
            case.says,
            found
        );
        assert!(
            fields(&found).iter().all(|f| *f == case.field),
            "{}: only {} drifts, found {:#?}",
            case.what,
            case.field,
            found
        );
    }
}
