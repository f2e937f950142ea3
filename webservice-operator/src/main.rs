//! `webservice-operator`: the reference cuebe operator.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cuebe::CueCompiler;
use cuebe::compiler::{Capabilities, CompileError};
use webservice_operator::render::{self, Format, RenderFailure};

#[derive(Parser, Debug)]
#[command(
    name = "webservice-operator",
    version,
    about = "The WebService operator, built on cuebe"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    /// kwok), run the operator on it and reconcile a sample WebService; runs until Ctrl-C.
    ///
    /// Prints `kubeconfig: <path>` as soon as the API server is ready, then `kubectl: <path>`. The
    /// first run builds the control plane (tens of minutes); later runs start in seconds.
    Dev {
        /// Also install these, comma-separated: ack-iam (with the ACK stand-in), gateway-api.
        #[arg(long, value_enum, value_delimiter = ',')]
        with: Vec<webservice_operator::dev::Extra>,
        /// Apply this WebService instead of the built-in sample.
        #[arg(long, conflicts_with = "no_sample")]
        sample: Option<PathBuf>,
        /// Do not apply a sample WebService.
        #[arg(long)]
        no_sample: bool,
    },
    /// Run the operator against the current kubeconfig (KUBECONFIG or ~/.kube/config, or the
    /// in-cluster service account) until SIGINT or SIGTERM.
    Run,
    /// Explain a live WebService: its graph, each node's phase and what it is blocked on, the
    /// top violations and the resolved module (uses the current kubeconfig).
    Explain {
        /// The WebService's name.
        name: String,
        /// Its namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Print the WebService CustomResourceDefinition as YAML.
    Crd,
    /// Compile a WebService manifest into its Graph offline, exactly as the operator would.
    ///
    /// Exit codes: 0 the Graph was printed; 3 policy violations (printed; as JSON with -o json);
    /// 2 the input is malformed or does not match the schema (the field and line are named);
    /// 1 the platform module failed.
    Render {
        /// The WebService manifest (YAML or JSON); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Cluster capabilities to assume, comma-separated: gateway-api, ack-iam.
        #[arg(long, value_delimiter = ',')]
        capabilities: Vec<String>,
        /// A YAML/JSON map from node id to that node's live object, e.g.
        /// `iamRole: {status: {ackResourceMetadata: {arn: ...}}}`.
        #[arg(long)]
        observe: Option<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
        output: Format,
    },
}

fn read(path: &PathBuf) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("-: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // kube's client logs every refused connection while the local API server starts.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Dev {
            with,
            sample,
            no_sample,
        } => run_dev(&with, sample, no_sample),
        Command::Run => run_operator(),
        Command::Explain { name, namespace } => run_explain(&name, namespace),
        Command::Crd => {
            use kube::CustomResourceExt;
            let yaml = serde_norway::to_string(&webservice_operator::WebService::crd())
                .unwrap_or_default();
            let _ = write!(std::io::stdout(), "{yaml}");
            ExitCode::SUCCESS
        }
        Command::Render {
            file,
            capabilities,
            observe,
            output,
        } => run_render(&file, &capabilities, observe.as_ref(), output),
    }
}

/// The async runtime for `run` and `dev`; `None` (after saying why) when it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .inspect_err(|e| eprintln!("error: cannot start the async runtime: {e}"))
        .ok()
}

/// A client from KUBECONFIG, ~/.kube/config or the in-cluster account; `None` after saying why.
async fn default_client() -> Option<kube::Client> {
    kube::Client::try_default()
        .await
        .inspect_err(|e| eprintln!("error: no usable kubeconfig or in-cluster config: {e}"))
        .ok()
}

fn run_explain(name: &str, namespace: Option<String>) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    runtime.block_on(async {
        let Some(client) = default_client().await else {
            return ExitCode::from(1);
        };
        let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
        match webservice_operator::explain::explain(client, &ns, name).await {
            Ok(text) => {
                let _ = write!(std::io::stdout(), "{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}

fn run_operator() -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    runtime.block_on(async {
        let Some(client) = default_client().await else {
            return ExitCode::from(1);
        };
        webservice_operator::controller::run(client, None, true).await;
        ExitCode::SUCCESS
    })
}

fn run_dev(
    with: &[webservice_operator::dev::Extra],
    sample: Option<PathBuf>,
    no_sample: bool,
) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    match runtime.block_on(webservice_operator::dev::run(with, sample, no_sample)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_render(
    file: &PathBuf,
    capabilities: &[String],
    observe: Option<&PathBuf>,
    output: Format,
) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let text = match read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let observed: BTreeMap<String, serde_json::Value> = match observe {
        None => BTreeMap::new(),
        Some(path) => match read(path)
            .map_err(|e| RenderFailure::Input {
                file: path.display().to_string(),
                message: e,
            })
            .and_then(|t| render::parse_yaml(&path.display().to_string(), &t))
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let known = [Capabilities::GATEWAY_API, Capabilities::ACK_IAM];
    if let Some(bad) = capabilities
        .iter()
        .find(|c| !c.is_empty() && !known.contains(&c.as_str()))
    {
        eprintln!(
            "error: --capabilities: unknown capability {bad:?} (known: {})",
            known.join(", ")
        );
        return ExitCode::from(2);
    }
    let compiler = CueCompiler::new(webservice_operator::platform_modules());
    let name = file.display().to_string();
    match render::render(
        &compiler,
        &name,
        &text,
        Capabilities::from_names(capabilities),
        observed,
    ) {
        Ok(graph) if graph.has_blocking_violations() => {
            if output == Format::Json {
                let body = serde_json::json!({"violations": graph.violations});
                let _ = writeln!(
                    stdout,
                    "{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default()
                );
            } else {
                for v in &graph.violations {
                    let _ = writeln!(stdout, "{v}");
                }
            }
            eprintln!(
                "error: policy failed with {} violation(s); nothing would be applied",
                graph.violations.len()
            );
            ExitCode::from(3)
        }
        Ok(graph) => {
            let _ = write!(stdout, "{}", render::format_graph(&graph, output));
            ExitCode::SUCCESS
        }
        Err(RenderFailure::Compile(e @ CompileError::InvalidInput { .. })) => {
            eprintln!("error: {name}: {e}");
            ExitCode::from(2)
        }
        Err(e @ RenderFailure::Input { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
