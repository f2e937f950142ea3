//! OpenTelemetry traces over OTLP/gRPC for `run` and `dev`: the spans of every reconcile
//! (`cuebe::spans`) exported to a collector, Jaeger or any OTLP backend.
//!
//! Off unless an endpoint is given: `--otlp-endpoint URL`, or the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`. Without one no layer is
//! installed and a span costs one disabled-callsite check. The SDK reads the other standard
//! variables itself: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the service name is the
//! operator's name otherwise), `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_EXPORTER_OTLP_HEADERS` / `_TIMEOUT` / `_COMPRESSION` (and their `_TRACES_` forms),
//! `OTEL_BSP_*` for batching. `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns it
//! off. The transport is gRPC (a collector's port 4317); `https://` endpoints are verified
//! against the system's roots.
//!
//! ```
//! use cuebe_cli::telemetry::otlp_endpoint;
//! let env = |name: &str| (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://collector:4317".to_string());
//! assert_eq!(otlp_endpoint(None, env), Ok(Some("http://collector:4317".to_string())));
//! assert_eq!(otlp_endpoint(None, |_| None), Ok(None));
//! ```
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_otlp::WithTonicConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// How long the exit waits for the last spans to reach the endpoint.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The filter of the stderr log: `rust_log` (`RUST_LOG`'s syntax; default: warnings, without
/// kube's connection retries), and never the reconcile's spans ([`cuebe::spans::TARGET`]): they
/// are for trace backends, and log lines look the same whether tracing is on or not. Without an
/// exporter, nothing enables those spans, and each costs one disabled-callsite check.
pub fn log_filter<S>(rust_log: Option<&str>) -> impl tracing_subscriber::layer::Filter<S> + use<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    use tracing_subscriber::filter::FilterExt as _;
    // kube's client logs every refused connection while a local API server starts.
    let rust_log = rust_log
        .and_then(|directives| tracing_subscriber::EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| "warn,kube_client::client::builder=off".into());
    let no_trace_spans = tracing_subscriber::filter::filter_fn(|metadata| {
        !(metadata.is_span() && metadata.target() == cuebe::spans::TARGET)
    });
    rust_log.and(no_trace_spans)
}

/// The OTLP endpoint traces go to, or `None` when tracing is off: the flag, else
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` (read through `env`).
/// An error names the variable and what it accepts: a protocol other than `grpc`, or an
/// exporter other than `otlp`/`none`.
pub fn otlp_endpoint(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let set = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if let Some(exporter) = set("OTEL_TRACES_EXPORTER") {
        match exporter.as_str() {
            "none" => return Ok(None),
            "otlp" => {}
            other => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other}: only otlp (or none) is supported"
                ));
            }
        }
    }
    let endpoint = flag
        .map(str::to_string)
        .filter(|v| !v.is_empty())
        .or_else(|| set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = set(variable)
            && protocol != "grpc"
        {
            return Err(format!(
                "{variable}={protocol}: traces are exported over OTLP/gRPC only; set it to grpc \
                 (or unset it) and point the endpoint at the collector's gRPC port (4317)"
            ));
        }
        if set(variable).is_some() {
            break;
        }
    }
    Ok(Some(endpoint))
}

/// A running OTLP trace exporter. Dropping it flushes the spans not sent yet (waiting up to 5 s)
/// and stops the exporter.
pub struct Telemetry {
    provider: SdkTracerProvider,
    // The gRPC client's connection tasks run here, apart from the operator's runtime, so the
    // last spans can still be sent after that runtime has stopped. `None` once dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts exporting to `endpoint` (a URL, e.g. `http://otel-collector:4317`), as
    /// `service_name` unless `OTEL_SERVICE_NAME` (or `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`) names the service. The error says what is wrong with the
    /// endpoint.
    pub fn start(endpoint: &str, service_name: &str) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OTLP exporter's runtime: {e}"))?;
        // tonic's channel spawns its connection task on the runtime it is created in.
        let _in_runtime = runtime.enter();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint);
        if !endpoint.starts_with("http://") {
            exporter = exporter.with_tls_config(
                opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                    .with_native_roots(),
            );
        }
        let exporter = exporter
            .build()
            .map_err(|e| format!("OTLP endpoint {endpoint}: {e}"))?;
        let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
                v.split(',')
                    .any(|kv| kv.trim().starts_with("service.name="))
            });
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !named_by_env {
            resource = resource.with_service_name(service_name.to_string());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Self {
            provider,
            runtime: Some(runtime),
        })
    }

    /// The `tracing` layer that turns the reconcile's spans (target `cuebe…`, INFO and up)
    /// into OpenTelemetry spans. Other crates' spans and events are not exported.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let tracer = self.provider.tracer("cuebe");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Every span starts in cuebe::spans on a runtime worker: location, thread and
            // target would be the same noise on each one.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("cuebe", tracing::Level::INFO),
            )
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(%error, "OTLP exporter: the last spans may not have been sent");
        }
        // Dropping a runtime inside another one's async context panics; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{log_filter, otlp_endpoint};

    #[test]
    fn the_log_never_enables_the_reconcile_spans() {
        use tracing_subscriber::prelude::*;
        for rust_log in [None, Some("debug"), Some("trace"), Some("cuebe=trace")] {
            let log = tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(log_filter(rust_log));
            tracing::subscriber::with_default(tracing_subscriber::registry().with(log), || {
                let reconcile = tracing::info_span!(target: "cuebe::spans", "reconcile");
                assert!(reconcile.is_disabled(), "RUST_LOG={rust_log:?}");
                // Other spans follow RUST_LOG (default: warnings only).
                let other = tracing::info_span!(target: "cuebe::controller", "other");
                assert_eq!(
                    other.is_disabled(),
                    rust_log.is_none(),
                    "RUST_LOG={rust_log:?}"
                );
            });
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    /// The flag, the environment, the endpoint expected.
    type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], Option<&'a str>);

    #[test]
    fn the_endpoint_comes_from_the_flag_then_the_standard_variables() {
        let both = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ];
        let cases: &[Case] = &[
            (None, &[], None),
            (Some("http://flag:4317"), &both, Some("http://flag:4317")),
            (None, &both, Some("http://traces:4317")),
            (None, &both[..1], Some("http://general:4317")),
            (None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")], None),
            (Some(""), &both[..1], Some("http://general:4317")),
            (
                None,
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), both[0]],
                Some("http://general:4317"),
            ),
            (None, &[("OTEL_SDK_DISABLED", "true"), both[0]], None),
            (
                Some("http://flag:4317"),
                &[("OTEL_SDK_DISABLED", "TRUE")],
                None,
            ),
            (None, &[("OTEL_TRACES_EXPORTER", "none"), both[0]], None),
            (
                None,
                &[("OTEL_TRACES_EXPORTER", "otlp"), both[0]],
                Some("http://general:4317"),
            ),
            // A protocol without an endpoint is no reason to refuse: tracing is simply off.
            (
                None,
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                None,
            ),
        ];
        for (flag, vars, expected) in cases {
            assert_eq!(
                otlp_endpoint(*flag, env(vars)),
                Ok(expected.map(str::to_string)),
                "flag {flag:?}, env {vars:?}"
            );
        }
    }

    #[test]
    fn an_unsupported_protocol_or_exporter_is_refused_naming_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: traces are exported over OTLP/gRPC only",
            ),
            (
                &[
                    endpoint,
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
                ],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json",
            ),
            (
                &[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER=zipkin: only otlp (or none) is supported",
            ),
        ];
        for (vars, expected) in cases {
            let error = otlp_endpoint(None, env(vars)).expect_err("refused");
            assert!(error.contains(expected), "{vars:?}: {error}");
        }
        // The signal-specific protocol wins over the general one.
        assert_eq!(
            otlp_endpoint(
                None,
                env(&[
                    endpoint,
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ])
            ),
            Ok(Some("http://collector:4318".to_string()))
        );
    }
}
