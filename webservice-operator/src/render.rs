//! `render`: compile a WebService file into its Graph, offline, exactly as the operator would.
//!
//! Owns reading the YAML (with the line and field named on error), building the compiler input
//! and printing the result. Exit codes are decided by the binary from [`RenderFailure`].
use std::collections::BTreeMap;

use cuebe::compiler::{Capabilities, CompileError, CompileInput, InstanceMeta};
use cuebe::{CueCompiler, Graph};
use serde::de::DeserializeOwned;

use crate::WebService;

/// Why `render` did not produce a graph.
#[derive(Debug, thiserror::Error)]
pub enum RenderFailure {
    /// The file is not valid YAML or does not match the WebService schema. Exit code 2.
    #[error("{file}: {message}")]
    Input {
        /// The file.
        file: String,
        /// What is wrong, with the field path and the line.
        message: String,
    },
    /// The platform module rejected or failed on the input. Exit code 2 for invalid input, 1
    /// otherwise.
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// Parses a YAML (or JSON) document into `T`, naming the field path and line of any error.
pub fn parse_yaml<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, RenderFailure> {
    let de = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let message = if path.is_empty() || path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        };
        RenderFailure::Input {
            file: file.to_string(),
            message,
        }
    })
}

/// Reads a WebService manifest and checks its apiVersion and kind.
pub fn parse_webservice(file: &str, text: &str) -> Result<WebService, RenderFailure> {
    let raw: serde_json::Value = parse_yaml(file, text)?;
    let api_version = raw
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let kind = raw.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
    if api_version != "platform.example.com/v1alpha1" || kind != "WebService" {
        return Err(RenderFailure::Input {
            file: file.to_string(),
            message: format!(
                "expected apiVersion: platform.example.com/v1alpha1 and kind: WebService, found {api_version:?} {kind:?}"
            ),
        });
    }
    parse_yaml(file, text)
}

/// The compiler input for a WebService, as the operator builds it.
pub fn compile_input(
    ws: &WebService,
    capabilities: Capabilities,
    observed: BTreeMap<String, serde_json::Value>,
) -> CompileInput {
    CompileInput {
        instance: InstanceMeta {
            name: ws.metadata.name.clone().unwrap_or_default(),
            namespace: ws
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
            labels: ws.metadata.labels.clone().unwrap_or_default(),
        },
        spec: serde_json::to_value(&ws.spec).unwrap_or_default(),
        platform_ref: ws.spec.platform_ref.clone(),
        capabilities,
        observed,
    }
}

/// Output formats of `render`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The Graph as YAML.
    Yaml,
    /// The Graph as JSON.
    Json,
    /// The DAG in Graphviz DOT.
    Dot,
    /// The DAG as a Mermaid flowchart.
    Mermaid,
}

/// Renders a WebService manifest to a Graph.
pub fn render(
    compiler: &CueCompiler,
    file: &str,
    text: &str,
    capabilities: Capabilities,
    observed: BTreeMap<String, serde_json::Value>,
) -> Result<std::sync::Arc<Graph>, RenderFailure> {
    let ws = parse_webservice(file, text)?;
    if ws.metadata.name.as_deref().unwrap_or_default().is_empty() {
        return Err(RenderFailure::Input {
            file: file.to_string(),
            message: "metadata.name: required".to_string(),
        });
    }
    Ok(compiler.compile_blocking(&compile_input(&ws, capabilities, observed))?)
}

/// Formats a graph.
pub fn format_graph(graph: &Graph, format: Format) -> String {
    match format {
        Format::Yaml => serde_norway::to_string(graph).unwrap_or_default(),
        Format::Json => serde_json::to_string_pretty(graph).unwrap_or_default() + "\n",
        Format::Dot => graph.to_dot(),
        Format::Mermaid => graph.to_mermaid(),
    }
}
