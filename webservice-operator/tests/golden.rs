//! Golden tests of the embedded platform module: every file in `tests/golden/cases` is read as a
//! `WebService`, rendered, and its Graph, violations, error or rejection compared with
//! `tests/golden/snapshots`.
#![allow(clippy::unwrap_used)]

use cuebe_testkit::golden::GoldenSuite;
use webservice_operator::WebService;

#[test]
fn platform_module_golden_cases() {
    let count = GoldenSuite::for_abstraction::<WebService>()
        .run()
        .expect("golden cases run");
    assert!(
        count >= 17,
        "expected every golden case to run, ran {count}"
    );
}

/// `renderHash` is byte-stable across runs and machines: this snapshot is checked on every CI
/// machine, so a hash that depended on map order, the host or the time would fail here. It
/// changes, by design, whenever the module or the examples change.
#[test]
fn render_hashes_are_stable() {
    use cuebe::abstraction::render_input;
    use cuebe::renderer::Capabilities;
    use std::collections::BTreeMap;
    use webservice_operator::WebService;
    fn parse_webservice(
        file: &str,
        text: &str,
    ) -> Result<WebService, cuebe_cli::render::RenderFailure> {
        cuebe_cli::render::parse_instance(file, text)
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/webservices");
    let renderer = cuebe::CueRenderer::new(webservice_operator::platform_modules());
    let mut hashes = BTreeMap::new();
    for (file, caps) in [
        ("simple.yaml", vec![]),
        ("public.yaml", vec!["gateway-api"]),
        ("irsa.yaml", vec!["ack-iam"]),
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let ws = parse_webservice(file, &text).unwrap();
        let g = renderer
            .render_blocking(&render_input(
                &ws,
                Capabilities::from_names(caps),
                BTreeMap::new(),
            ))
            .unwrap();
        hashes.insert(file, g.metadata.render_hash.clone());
    }
    insta::assert_yaml_snapshot!("render-hashes", hashes);
}

/// The `WebService` Rust type (its CRD) and the module's CUE `#WebServiceSpec` describe the same
/// spec: fields, types, required-ness, bounds, enums, and CUE's defaults shown in the CRD.
#[test]
fn crd_and_cue_schema_agree() {
    if let Err(e) = cuebe_testkit::spec::check_schema_agrees::<WebService>() {
        panic!("{e}");
    }
}
