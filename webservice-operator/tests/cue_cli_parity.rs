//! The in-process render agrees with the official `cue` CLI (same pinned version) exporting the
//! same module and input. The module depends on cuebe's standard library: in-process it comes
//! from the copy the SDK ships; the CLI fetches it from a real OCI registry it was published to
//! with `cue mod publish`, as a platform team's CI would.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use cuebe::CueRenderer;
use cuebe::abstraction::render_input;
use cuebe::renderer::Capabilities;
use webservice_operator::WebService;
fn parse_webservice(
    file: &str,
    text: &str,
) -> Result<WebService, cuebe_cli::render::RenderFailure> {
    cuebe_cli::render::parse_instance(file, text)
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../examples/webservices/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("example exists")
}

fn cue_export(module: &ModuleOnDisk, input: &serde_json::Value, expr: &str) -> serde_json::Value {
    let cue = cuebe_testkit::cue_cli::cue_binary().expect("cue CLI available");
    let dir = module.dir.path();
    std::fs::write(
        dir.join("input.json"),
        serde_json::to_vec(&serde_json::json!({"input": input})).unwrap(),
    )
    .unwrap();
    let out = cuebe_testkit::cue_cli::export_with_registry(
        &cue,
        dir,
        "./webservice",
        "input.json".as_ref(),
        expr,
        &module.registry.host(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&out).expect("cue prints JSON")
}

/// The embedded module written out, for the CLI to read, and a registry holding the standard
/// library it depends on.
struct ModuleOnDisk {
    dir: tempfile::TempDir,
    registry: cuebe_testkit::oci_registry::LocalRegistry,
}

fn module_on_disk() -> ModuleOnDisk {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in webservice_operator::platform_module().files() {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let registry = cuebe_testkit::oci_registry::LocalRegistry::start().unwrap();
    cuebe_testkit::oci_registry::publish_standard_library(&registry).unwrap();
    ModuleOnDisk { dir, registry }
}

#[test]
fn in_process_render_matches_the_cue_cli() {
    let dir = module_on_disk();
    let renderer = CueRenderer::new(webservice_operator::platform_modules());
    let observed: BTreeMap<String, serde_json::Value> =
        serde_norway::from_str(&example("irsa-observed.yaml")).unwrap();
    let scenarios = [
        ("simple.yaml", vec![], BTreeMap::new()),
        ("public.yaml", vec!["gateway-api"], BTreeMap::new()),
        ("public.yaml", vec![], BTreeMap::new()),
        ("irsa.yaml", vec!["ack-iam"], observed),
    ];
    for (file, caps, observed) in scenarios {
        let ws = parse_webservice(file, &example(file)).unwrap();
        let input = render_input(&ws, Capabilities::from_names(caps), observed);
        let graph = renderer.render_blocking(&input).unwrap();
        let cli_nodes = cue_export(&dir, &renderer.module_input(&input).unwrap(), "nodes");
        let cli_violations =
            cue_export(&dir, &renderer.module_input(&input).unwrap(), "violations");
        assert_eq!(cli_violations, serde_json::json!([]), "{file}");
        let cli_ids: Vec<&String> = cli_nodes.as_object().unwrap().keys().collect();
        let ids: Vec<&String> = graph.nodes.iter().map(|n| &n.id).collect();
        assert_eq!(cli_ids, ids, "{file}: same nodes in the same order");
        for node in &graph.nodes {
            assert_eq!(
                Some(&cli_nodes[&node.id]["object"]),
                node.object.as_ref(),
                "{file}: node {} differs from the CLI",
                node.id
            );
        }
    }
}

#[test]
fn violations_match_the_cue_cli() {
    let dir = module_on_disk();
    let renderer = CueRenderer::new(webservice_operator::platform_modules());
    let ws = parse_webservice("irsa.yaml", &example("irsa.yaml")).unwrap();
    let input = render_input(&ws, Capabilities::default(), BTreeMap::new());
    let graph = renderer.render_blocking(&input).unwrap();
    let cli = cue_export(&dir, &renderer.module_input(&input).unwrap(), "violations");
    assert_eq!(cli, serde_json::to_value(&graph.violations).unwrap());
}
