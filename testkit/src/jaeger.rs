//! A real OTLP receiver: Jaeger (v2, the OpenTelemetry Collector based `jaeger` binary), built
//! from its Go module at a pinned version into the testkit's cache
//! (`~/.cache/cuebe/jaeger-VERSION/jaeger`) the first time it is needed — about ten minutes on
//! two cores with a cold Go cache, instant after that — and run on loopback with in-memory
//! storage: OTLP/gRPC in, the query API's JSON out.
//!
//! Jaeger's go.mod has a replace directive, so `go install …@VERSION` refuses it; it is built in
//! a scratch module that requires it and repeats that replace.
//!
//! ```no_run
//! # async fn f() -> Result<(), cuebe_testkit::jaeger::JaegerError> {
//! use cuebe_testkit::jaeger::Jaeger;
//! let jaeger = Jaeger::start()?;
//! // Point an exporter at jaeger.otlp_endpoint(), then:
//! let traces = jaeger.traces("webservice-operator").await?;
//! for trace in &traces {
//!     for root in trace.roots() {
//!         println!("{} with {} children", root.name, trace.children(root).len());
//!     }
//! }
//! # Ok(()) }
//! ```
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The github.com/jaegertracing/jaeger version built.
pub const JAEGER_VERSION: &str = "v1.76.0";

/// Why Jaeger could not be built, started or asked.
#[derive(Debug, thiserror::Error)]
pub enum JaegerError {
    /// Building the binary failed (the message is what `go` said).
    #[error("building jaeger {JAEGER_VERSION}: {0}")]
    Build(String),
    /// It could not be started, or did not listen in time (the message has its log).
    #[error("starting jaeger: {0}")]
    Start(String),
    /// The query API did not answer as expected.
    #[error("jaeger query API: {0}")]
    Query(String),
}

/// Path to `jaeger` [`JAEGER_VERSION`], building it on first use.
pub fn jaeger_binary() -> Result<PathBuf, JaegerError> {
    crate::go_install::go_build_in_module(
        "github.com/jaegertracing/jaeger/cmd/jaeger",
        JAEGER_VERSION,
        // As jaeger's own go.mod says.
        &["github.com/Shopify/sarama=github.com/Shopify/sarama@v1.33.0"],
        &format!("jaeger-{JAEGER_VERSION}"),
        "jaeger",
    )
    .map_err(JaegerError::Build)
}

/// A running Jaeger on loopback; killed when dropped.
#[derive(Debug)]
pub struct Jaeger {
    child: Child,
    otlp_port: u16,
    query_port: u16,
    tls: bool,
    dir: tempfile::TempDir,
}

/// One span as Jaeger stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Its id (hex).
    pub span_id: String,
    /// The span it is a child of, if any.
    pub parent_id: Option<String>,
    /// Its name (the OpenTelemetry span name).
    pub name: String,
    /// Its attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// When it started, microseconds since the epoch.
    pub start_micros: u64,
    /// How long it took, microseconds.
    pub duration_micros: u64,
}

/// One trace: its spans and the service that sent them.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The trace id (hex).
    pub trace_id: String,
    /// Every span of it.
    pub spans: Vec<Span>,
}

impl Trace {
    /// The spans without a parent in this trace.
    pub fn roots(&self) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.parent_id.is_none())
            .collect()
    }

    /// The direct children of `parent`, by start time.
    pub fn children(&self, parent: &Span) -> Vec<&Span> {
        let mut children: Vec<&Span> = self
            .spans
            .iter()
            .filter(|s| s.parent_id.as_deref() == Some(parent.span_id.as_str()))
            .collect();
        children.sort_by_key(|s| s.start_micros);
        children
    }
}

fn loopback_port() -> Result<u16, JaegerError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| JaegerError::Start(format!("no free port: {e}")))
}

impl Jaeger {
    /// Builds Jaeger if needed and starts it: OTLP/gRPC and the query API on free loopback
    /// ports, traces in memory, nothing else (no UI assets, no self-telemetry).
    pub fn start() -> Result<Self, JaegerError> {
        Self::start_with(None)
    }

    /// As [`Jaeger::start`], with OTLP/gRPC over TLS: `cert` (PEM, for `localhost`) and its `key`;
    /// [`Jaeger::otlp_endpoint`] is then `https://localhost:PORT`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, JaegerError> {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&std::path::Path, &std::path::Path)>) -> Result<Self, JaegerError> {
        let binary = jaeger_binary()?;
        let dir = tempfile::tempdir().map_err(|e| JaegerError::Start(e.to_string()))?;
        let (otlp_port, query_port, query_grpc_port) =
            (loopback_port()?, loopback_port()?, loopback_port()?);
        let tls_config = tls
            .map(|(cert, key)| {
                format!(
                    "\n        tls:\n          cert_file: {}\n          key_file: {}",
                    cert.display(),
                    key.display()
                )
            })
            .unwrap_or_default();
        let config = format!(
            "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memory
    http:
      endpoint: 127.0.0.1:{query_port}
    grpc:
      endpoint: 127.0.0.1:{query_grpc_port}
  jaeger_storage:
    backends:
      memory:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_port}{tls_config}
exporters:
  jaeger_storage_exporter:
    trace_storage: memory
"
        );
        let config_file = dir.path().join("config.yaml");
        std::fs::write(&config_file, config).map_err(|e| JaegerError::Start(e.to_string()))?;
        let log = std::fs::File::create(dir.path().join("jaeger.log"))
            .map_err(|e| JaegerError::Start(e.to_string()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| JaegerError::Start(e.to_string()))?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(&config_file)
            // Jaeger's own traces would go to localhost:4317.
            .env("OTEL_SDK_DISABLED", "true")
            .env("OTEL_TRACES_EXPORTER", "none")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| JaegerError::Start(format!("{}: {e}", binary.display())))?;
        let mut jaeger = Self {
            child,
            otlp_port,
            query_port,
            tls: tls.is_some(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listening = [otlp_port, query_port]
                .iter()
                .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok());
            if listening {
                return Ok(jaeger);
            }
            if let Ok(Some(status)) = jaeger.child.try_wait() {
                return Err(JaegerError::Start(format!(
                    "exited with {status}: {}",
                    jaeger.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(JaegerError::Start(format!(
                    "not listening after 30 s: {}",
                    jaeger.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where an OTLP/gRPC exporter sends to, e.g. `http://127.0.0.1:41234`.
    pub fn otlp_endpoint(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.otlp_port)
        } else {
            format!("http://127.0.0.1:{}", self.otlp_port)
        }
    }

    /// Jaeger's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("jaeger.log")).unwrap_or_default()
    }

    /// The traces stored for `service` (`service.name` of the sender), newest first.
    pub async fn traces(&self, service: &str) -> Result<Vec<Trace>, JaegerError> {
        let body = self
            .get(&format!("/api/traces?service={service}&limit=1000"))
            .await?;
        let data = body
            .get("data")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(data.iter().map(trace_of).collect())
    }

    async fn get(&self, path_and_query: &str) -> Result<serde_json::Value, JaegerError> {
        use http_body_util::BodyExt as _;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let uri: http::Uri = format!("http://127.0.0.1:{}{path_and_query}", self.query_port)
            .parse()
            .map_err(|e| JaegerError::Query(format!("{path_and_query}: {e}")))?;
        let response = client
            .get(uri)
            .await
            .map_err(|e| JaegerError::Query(format!("GET {path_and_query}: {e}")))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| JaegerError::Query(format!("GET {path_and_query}: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(JaegerError::Query(format!(
                "GET {path_and_query}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| JaegerError::Query(format!("GET {path_and_query}: {e}")))
    }
}

/// A trace from the query API's JSON (`/api/traces`): spans with `references` of type
/// `CHILD_OF` and `tags` as `{key, type, value}`.
fn trace_of(trace: &serde_json::Value) -> Trace {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let spans = trace
        .get("spans")
        .and_then(serde_json::Value::as_array)
        .map(|spans| {
            spans
                .iter()
                .map(|span| Span {
                    span_id: span.get("spanID").map(text).unwrap_or_default(),
                    parent_id: span
                        .get("references")
                        .and_then(serde_json::Value::as_array)
                        .and_then(|refs| {
                            refs.iter().find(|r| {
                                r.get("refType").and_then(serde_json::Value::as_str)
                                    == Some("CHILD_OF")
                            })
                        })
                        .and_then(|r| r.get("spanID"))
                        .map(text),
                    name: span.get("operationName").map(text).unwrap_or_default(),
                    attributes: span
                        .get("tags")
                        .and_then(serde_json::Value::as_array)
                        .map(|tags| {
                            tags.iter()
                                .filter_map(|t| {
                                    Some((
                                        t.get("key")?.as_str()?.to_string(),
                                        text(t.get("value")?),
                                    ))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    start_micros: span
                        .get("startTime")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or_default(),
                    duration_micros: span
                        .get("duration")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Trace {
        trace_id: trace.get("traceID").map(text).unwrap_or_default(),
        spans,
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
