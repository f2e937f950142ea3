//! Admission: what the validating webhook answers for an instance, decided from its render.
//!
//! Owns: [`verdict`], a pure function of the render result. The webhook (in `cuebe`) renders
//! the instance the API server sends with no cluster reads and asks here.
//!
//! Invariants:
//! - Only what is the author's to fix is refused: a spec the module's schema or input policy
//!   rejects (the fields named), a spec naming no module version, and violations of severity
//!   `Error` of the output policy (field, rule, message each).
//! - Whatever is not the author's — a module that does not load or evaluate, a timeout, an
//!   internal failure — is admitted with a warning: the status reports it after admission, and
//!   a platform bug never blocks every developer.
//! - Violations of severity `Warning` are admitted and returned as warnings (`kubectl` prints
//!   them).
use crate::graph::{Graph, Severity};
use crate::render::RenderError;

/// The answer to one admission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionVerdict {
    /// Admit the object.
    pub allowed: bool,
    /// Why it is refused (one line per field or violation), for `kubectl` to print.
    pub message: Option<String>,
    /// Warnings `kubectl` prints whether or not the object is admitted.
    pub warnings: Vec<String>,
}

impl AdmissionVerdict {
    /// Admitted with no remark.
    pub fn admit() -> Self {
        Self {
            allowed: true,
            message: None,
            warnings: Vec::new(),
        }
    }

    /// Admitted with a warning (the webhook could not decide; the status will).
    pub fn admit_unchecked(why: impl std::fmt::Display) -> Self {
        Self {
            allowed: true,
            message: None,
            warnings: vec![format!(
                "not checked at admission: {why} (the status reports it after the object is stored)"
            )],
        }
    }
}

/// Decides admission from a render of the instance (`kind` names it in messages).
///
/// ```
/// use cuebe_core::admission::verdict;
/// use cuebe_core::render::{FieldError, RenderError};
/// let refused = verdict(
///     "WebService",
///     Err(&RenderError::InvalidInput {
///         errors: vec![FieldError { field: "spec.replicas".into(), message: "must be at most 10".into() }],
///     }),
/// );
/// assert!(!refused.allowed);
/// assert!(refused.message.unwrap().contains("spec.replicas: must be at most 10"));
/// ```
pub fn verdict(kind: &str, rendered: Result<&Graph, &RenderError>) -> AdmissionVerdict {
    match rendered {
        Ok(graph) => {
            let (errors, warnings): (Vec<_>, Vec<_>) = graph
                .violations
                .iter()
                .partition(|v| v.severity == Severity::Error);
            let warnings = warnings
                .iter()
                .map(|v| format!("policy: {v}"))
                .collect::<Vec<_>>();
            if errors.is_empty() {
                return AdmissionVerdict {
                    allowed: true,
                    message: None,
                    warnings,
                };
            }
            let lines = errors
                .iter()
                .map(|v| format!("  {v}"))
                .collect::<Vec<_>>()
                .join("\n");
            AdmissionVerdict {
                allowed: false,
                message: Some(format!(
                    "the platform policy refuses this {kind} ({} violation{}):\n{lines}",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                )),
                warnings,
            }
        }
        Err(RenderError::InvalidInput { errors }) => {
            let lines = errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n");
            AdmissionVerdict {
                allowed: false,
                message: Some(format!(
                    "the platform module refuses this {kind}'s spec:\n{lines}"
                )),
                warnings: Vec::new(),
            }
        }
        Err(e @ RenderError::UnknownModule(_)) => AdmissionVerdict {
            allowed: false,
            message: Some(format!("spec.platformRef: {e}")),
            warnings: Vec::new(),
        },
        Err(
            e @ (RenderError::ModuleLoad { .. }
            | RenderError::Module(_)
            | RenderError::InvalidGraph(_)
            | RenderError::Timeout { .. }
            | RenderError::Task(_)
            | RenderError::Bridge(_)),
        ) => AdmissionVerdict::admit_unchecked(format!("{} ({})", e.reason(), first_line(e))),
    }
}

/// The first line of an error (module errors carry CUE's whole listing).
fn first_line(e: &RenderError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Violation;
    use crate::module::UnknownModule;
    use crate::render::FieldError;

    fn graph(violations: &[(&str, &str, Severity)]) -> Graph {
        let mut graph = Graph {
            graph_version: crate::graph::GRAPH_VERSION.into(),
            metadata: crate::graph::GraphMetadata {
                platform_ref_resolved: "sha256:0".into(),
                module: String::new(),
                render_hash: "sha256:1".into(),
            },
            nodes: Vec::new(),
            exports: Vec::new(),
            violations: Vec::new(),
        };
        graph.violations = violations
            .iter()
            .map(|(path, rule, severity)| Violation {
                path: path.to_string(),
                rule: rule.to_string(),
                message: format!("{rule} broken"),
                severity: *severity,
            })
            .collect();
        graph
    }

    #[test]
    fn only_what_the_author_can_fix_is_refused_and_everything_else_is_admitted_with_a_warning() {
        use Severity::{Error, Warning};
        let invalid = RenderError::InvalidInput {
            errors: vec![
                FieldError {
                    field: "spec.port".into(),
                    message: "must be at most 65535".into(),
                },
                FieldError {
                    field: "spec.imag".into(),
                    message: "field not allowed".into(),
                },
            ],
        };
        let unknown = RenderError::UnknownModule(UnknownModule {
            requested: "9.9.9".into(),
            available: vec!["1.0.0".into()],
        });
        let timeout = RenderError::Timeout {
            limit: std::time::Duration::from_secs(2),
            still_running: 0,
        };
        let module_bug = RenderError::Bridge("no graph");
        let clean = graph(&[]);
        let warned = graph(&[("spec.env", "few-env", Warning)]);
        let refused = graph(&[
            ("spec.image", "allowed-registries", Error),
            ("spec.replicas", "max-replicas", Error),
            ("spec.env", "few-env", Warning),
        ]);
        // (render, allowed, message contains, warnings contain)
        type Case<'a> = (
            Result<&'a Graph, &'a RenderError>,
            bool,
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: [Case<'_>; 7] = [
            (Ok(&clean), true, &[], &[]),
            (
                Ok(&warned),
                true,
                &[],
                &["policy: spec.env [few-env]: few-env broken"],
            ),
            (
                Ok(&refused),
                false,
                &[
                    "refuses this WebService (2 violations)",
                    "spec.image [allowed-registries]: allowed-registries broken",
                    "spec.replicas [max-replicas]",
                ],
                &["spec.env [few-env]"],
            ),
            (
                Err(&invalid),
                false,
                &[
                    "spec.port: must be at most 65535",
                    "spec.imag: field not allowed",
                ],
                &[],
            ),
            (Err(&unknown), false, &["spec.platformRef:", "9.9.9"], &[]),
            (
                Err(&timeout),
                true,
                &[],
                &["not checked at admission: RenderTimeout"],
            ),
            (
                Err(&module_bug),
                true,
                &[],
                &["not checked at admission: InternalError"],
            ),
        ];
        for (rendered, allowed, message, warnings) in cases {
            let v = verdict("WebService", rendered);
            assert_eq!(v.allowed, allowed, "{v:?}");
            let text = v.message.clone().unwrap_or_default();
            assert_eq!(v.message.is_none(), allowed, "{v:?}");
            for part in message {
                assert!(text.contains(part), "{text:?} lacks {part:?}");
            }
            for part in warnings {
                assert!(
                    v.warnings.iter().any(|w| w.contains(part)),
                    "{v:?} lacks {part:?}"
                );
            }
            if warnings.is_empty() {
                assert!(v.warnings.is_empty(), "{v:?}");
            }
        }
    }
}
