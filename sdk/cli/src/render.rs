//! `render`: render an instance's manifest into its Graph, offline, exactly as the operator
//! would.
//!
//! Owns reading the YAML (with the line and field named on error), building the renderer input
//! and printing the result. Exit codes are decided by the binary from [`RenderFailure`].
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use cuebe::abstraction::{Abstraction, render_input};
use cuebe::graph::Graph;
use cuebe::renderer::{Capabilities, CueRenderer, RenderError};

/// Why `render` did not produce a graph.
#[derive(Debug, thiserror::Error)]
pub enum RenderFailure {
    /// The file is not valid YAML or does not match the custom resource's schema. Exit code 2.
    #[error("{file}: {message}")]
    Input {
        /// The file.
        file: String,
        /// What is wrong, with the field path and the line.
        message: String,
    },
    /// The platform module rejected or failed on the input. Exit code 2 for invalid input, 4
    /// otherwise (see `crate::exit`).
    #[error(transparent)]
    Render(#[from] RenderError),
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
            format!("{path}: {}", without_enclosing_path(&inner, &path))
        };
        RenderFailure::Input {
            file: file.to_string(),
            message,
        }
    })
}

/// The YAML parser starts its message with the path of the mapping it was in (`spec: unknown
/// field …`); the message already starts with the full path (`spec.mesage`), so that part goes.
fn without_enclosing_path<'a>(message: &'a str, path: &str) -> &'a str {
    match message.split_once(": ") {
        Some((head, rest))
            if path
                .strip_prefix(head)
                .is_some_and(|tail| tail.is_empty() || tail.starts_with(['.', '['])) =>
        {
            rest
        }
        _ => message,
    }
}

/// Reads a manifest of `A`, checking its apiVersion and kind and naming the field and line of
/// any error.
pub fn parse_instance<A: Abstraction>(file: &str, text: &str) -> Result<A, RenderFailure> {
    let raw: serde_json::Value = parse_yaml(file, text)?;
    let api_version = raw
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let kind = raw.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
    let (want_api, want_kind) = (A::api_version(&()), A::kind(&()));
    if api_version != want_api || kind != want_kind {
        return Err(RenderFailure::Input {
            file: file.to_string(),
            message: format!(
                "expected apiVersion: {want_api} and kind: {want_kind}, found {api_version:?} {kind:?}"
            ),
        });
    }
    parse_yaml(file, text)
}

/// Output formats of `render`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// The Graph as YAML.
    #[default]
    Yaml,
    /// The Graph as JSON.
    Json,
    /// The DAG in Graphviz DOT.
    Dot,
    /// The DAG as a Mermaid flowchart.
    Mermaid,
}

/// Renders a manifest of `A` to its Graph.
///
/// ```no_run
/// # fn f<A: cuebe::Abstraction>() -> Result<(), cuebe_cli::render::RenderFailure> {
/// let renderer = cuebe::CueRenderer::new(A::modules());
/// let text = std::fs::read_to_string("web.yaml").unwrap_or_default();
/// let graph = cuebe_cli::render::render::<A>(&renderer, "web.yaml", &text, Default::default(), Default::default())?;
/// print!("{}", cuebe_cli::render::format_graph(graph.graph(), cuebe_cli::render::Format::Mermaid));
/// # Ok(()) }
/// ```
pub fn render<A: Abstraction>(
    renderer: &CueRenderer,
    file: &str,
    text: &str,
    capabilities: Capabilities,
    observed: BTreeMap<String, serde_json::Value>,
) -> Result<std::sync::Arc<cuebe::plan::Plan>, RenderFailure> {
    let object: A = parse_instance(file, text)?;
    render_object(renderer, file, &object, capabilities, observed, None)
}

/// Renders an instance already read from `file`, with a published `module` in place of the
/// embedded one when given (`render --module`, or the manifest's own `platformRef.oci` or
/// `platformRef.git`).
///
/// ```no_run
/// # fn f<A: cuebe::Abstraction>(object: A, module: std::sync::Arc<cuebe::ModuleSource>) -> Result<(), cuebe_cli::render::RenderFailure> {
/// let renderer = cuebe::CueRenderer::new(A::modules());
/// let plan = cuebe_cli::render::render_object(&renderer, "web.yaml", &object,
///     Default::default(), Default::default(), Some(module))?;
/// println!("{} nodes", plan.graph().nodes.len());
/// # Ok(()) }
/// ```
pub fn render_object<A: Abstraction>(
    renderer: &CueRenderer,
    file: &str,
    object: &A,
    capabilities: Capabilities,
    observed: BTreeMap<String, serde_json::Value>,
    module: Option<std::sync::Arc<cuebe::ModuleSource>>,
) -> Result<std::sync::Arc<cuebe::plan::Plan>, RenderFailure> {
    if object.meta().name.as_deref().unwrap_or_default().is_empty() {
        return Err(RenderFailure::Input {
            file: file.to_string(),
            message: "metadata.name: required".to_string(),
        });
    }
    let mut input = render_input(object, capabilities, observed);
    input.module = module;
    Ok(renderer.render_blocking(&input)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_field_once() {
        let text = "spec:\n  message: hi\n  mesage: hello\n";
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Spec {
            message: String,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            spec: Spec,
        }
        let Err(RenderFailure::Input { message, .. }) = parse_yaml::<Doc>("f.yaml", text) else {
            panic!("an unknown field parsed");
        };
        assert_eq!(
            message,
            "spec.mesage: unknown field `mesage`, expected `message` at line 3 column 3"
        );
    }

    #[test]
    fn only_an_enclosing_path_is_dropped_from_a_message() {
        let cases = [
            ("spec: unknown field `x`", "spec.x", "unknown field `x`"),
            ("spec.a: bad", "spec.a.b", "bad"),
            ("spec.a: bad", "spec.a", "bad"),
            ("spec.ab: bad", "spec.a", "spec.ab: bad"),
            (
                "invalid type: string, expected i32",
                "spec.n",
                "invalid type: string, expected i32",
            ),
            ("items: bad", "items[0]", "bad"),
        ];
        for (message, path, expected) in cases {
            assert_eq!(
                without_enclosing_path(message, path),
                expected,
                "{message} at {path}"
            );
        }
    }
}
