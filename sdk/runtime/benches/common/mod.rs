//! What the renderer benches share: the WebService module, the three scenarios and the `cue`
//! CLI baseline run on the same module and input.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cuebe::renderer::{Capabilities, RenderInput};
use cuebe::{CueRenderer, ModuleSource};
use serde_json::json;

/// The WebService platform module (`cue/platform`).
pub fn platform() -> ModuleSource {
    ModuleSource::from_dir(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../cue/platform"),
        "./webservice",
    )
    .expect("cue/platform is readable")
}

/// `simple` (internal service), `public` (Public + autoscaling, Gateway API) and `irsa` (IAM role
/// + inline policy, ARN observed).
pub fn scenarios() -> Vec<(&'static str, RenderInput)> {
    let meta = cuebe::instance::Instance {
        name: "web".into(),
        namespace: "apps".into(),
        labels: BTreeMap::new(),
        ..Default::default()
    };
    let base = json!({"image": "registry.example.com/web:1.4.2", "resources": {"cpu": "250m", "memory": "256Mi"}});
    let mut public = base.clone();
    public["exposure"] = json!({"type": "Public", "host": "web.example.com"});
    public["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 10});
    let mut irsa = base.clone();
    irsa["iam"] = json!({"policyARNs": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"], "inlinePolicy": "{\"Version\":\"2012-10-17\"}"});
    let observed = BTreeMap::from([(
        "iamRole".to_string(),
        json!({"status": {"ackResourceMetadata": {"arn": "arn:aws:iam::111122223333:role/apps-web"}}}),
    )]);
    vec![
        (
            "simple",
            RenderInput {
                instance: meta.clone(),
                spec: base,
                ..Default::default()
            },
        ),
        (
            "public",
            RenderInput {
                instance: meta.clone(),
                spec: public,
                capabilities: Capabilities::from_names(["gateway-api"]),
                ..Default::default()
            },
        ),
        (
            "irsa",
            RenderInput {
                instance: meta,
                spec: irsa,
                capabilities: Capabilities::from_names(["ack-iam"]),
                observed,
                ..Default::default()
            },
        ),
    ]
}

/// The module written out for the CLI, with one input file per scenario. Removed on drop.
pub struct CliBaseline {
    cue: PathBuf,
    dir: PathBuf,
}

impl CliBaseline {
    /// Writes `module` to a temporary directory and each scenario's exact module input (as
    /// `renderer` fills it) next to it.
    pub fn new(module: &ModuleSource, renderer: &CueRenderer, tag: &str) -> Self {
        let cue = cuebe_testkit::cue_cli::cue_binary().expect("cue CLI for the baseline");
        let dir = std::env::temp_dir().join(format!("cuebe-{tag}-{}", std::process::id()));
        for (path, content) in module.files() {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().expect("file has a parent")).expect("mkdir");
            std::fs::write(p, content).expect("write module file");
        }
        for (name, input) in scenarios() {
            let value = renderer.module_input(&input).expect("input");
            std::fs::write(
                input_file(&dir, name),
                serde_json::to_vec(&json!({"input": value})).expect("json"),
            )
            .expect("write input");
        }
        Self { cue, dir }
    }

    /// `cue export ./webservice <input> -e nodes --out json` for one scenario; panics on failure.
    pub fn export(&self, scenario: &str) -> Vec<u8> {
        let input = input_file(&self.dir, scenario);
        cuebe_testkit::cue_cli::export(&self.cue, &self.dir, "./webservice", &input, "nodes")
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for CliBaseline {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn input_file(dir: &Path, scenario: &str) -> PathBuf {
    dir.join(format!("{scenario}.json"))
}
