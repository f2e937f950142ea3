//! The operator binary: `run`, `dev`, `crd`, `render`, `diff`, `explain`, `rbac`, `rollout`
//! and (with remote modules) `approve` for any [`Abstraction`].
//!
//! An operator's `main` is a few lines:
//!
//! ```no_run
//! # fn f<MyKind: cuebe::Abstraction>() -> std::process::ExitCode {
//! cuebe_cli::App::<MyKind>::new("my-operator")
//!     .sample("apiVersion: example.com/v1\nkind: MyKind\nmetadata: {name: demo}\nspec: {}\n")
//!     .main()
//! # }
//! ```
//!
//! `dev` needs a local control plane, which lives in `cuebe-testkit`; pass
//! `cuebe_testkit::dev::LocalControlPlane` to [`App::dev_cluster`] to enable it.
//!
//! Exit codes follow one scheme for every command: see [`crate::exit`].
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, FromArgMatches, Subcommand};

use crate::exit::Exit;

use crate::dev::{DevCluster, DevOptions};
use crate::render::{self, Format, RenderFailure};
use cuebe::abstraction::Abstraction;
use cuebe::controller::Operator;
use cuebe::ops::leader::LeaderElection;
use cuebe::ops::shard::Shard;
use cuebe::renderer::{Capabilities, CueRenderer, RenderError};

/// This replica's identity among several: `$POD_NAME`, else the host name and process id.
fn replica_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "operator".into());
        format!("{host}-{}", std::process::id())
    })
}

/// How a `run` replica takes part among several: every replica reconciles everything, one
/// leads, or each reconciles its shard.
enum Membership {
    Every,
    Leader {
        lease_namespace: Option<String>,
    },
    Shard {
        ring: String,
        lease_namespace: Option<String>,
    },
}

/// Subcommands every operator binary gets.
#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local control plane (etcd, kube-apiserver, kube-controller-manager,
    /// kube-scheduler, kwok), run the operator on it and reconcile a sample instance; runs until
    /// Ctrl-C.
    ///
    /// Prints `kubeconfig: <path>` as soon as the API server is ready, then `kubectl: <path>`.
    /// The first run builds the control plane (tens of minutes); later runs start in seconds.
    Dev {
        /// Also install these, comma-separated (see the list below the usage): e.g. ack-iam
        /// (with the ACK stand-in), gateway-api.
        #[arg(long, value_delimiter = ',')]
        with: Vec<String>,
        /// Apply this manifest instead of the built-in sample.
        #[arg(long, conflicts_with = "no_sample")]
        sample: Option<PathBuf>,
        /// Do not apply a sample instance.
        #[arg(long)]
        no_sample: bool,
        /// Serve /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:8080.
        #[arg(long, value_name = "ADDR")]
        metrics_bind: Option<std::net::SocketAddr>,
        /// Serve published modules from the OCI image layouts under DIR, as `run
        /// --vendored-modules` does.
        #[arg(long, value_name = "DIR")]
        vendored_modules: Option<PathBuf>,
        /// Also trust the CA certificates in FILE (PEM) for HTTPS registries and git servers,
        /// as `run --module-ca-file` does.
        #[arg(long, value_name = "FILE")]
        module_ca_file: Option<PathBuf>,
        /// Export the reconciles' traces over OTLP/gRPC to this endpoint, as `run
        /// --otlp-endpoint` does.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
    },
    /// Run the operator against the current kubeconfig (KUBECONFIG or ~/.kube/config, or the
    /// in-cluster service account) until SIGINT or SIGTERM.
    Run {
        /// Watch only this namespace (default: all namespaces).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g. 0.0.0.0:8080
        /// (default: not served).
        #[arg(long, value_name = "ADDR")]
        metrics_bind: Option<std::net::SocketAddr>,
        /// Reconcile only while holding the Lease `<field manager>-leader`, so several replicas
        /// can run (identity: $POD_NAME, else host name and process id).
        #[arg(long, group = "membership")]
        leader_elect: bool,
        /// Be one shard of the ControllerRing RING (kubernetes-controller-sharding's sharder
        /// assigns the instances): reconcile only the instances labelled for this replica,
        /// while holding the shard Lease named after it (identity: $POD_NAME, else host name
        /// and process id). Instead of --leader-elect. A ring name or identity that cannot be a
        /// label stops the operator at start (exit 2).
        #[arg(long, value_name = "RING", group = "membership")]
        shard_ring: Option<String>,
        /// The Lease's namespace (default: $POD_NAMESPACE, else the kubeconfig's namespace).
        #[arg(long, value_name = "NS", requires = "membership")]
        lease_namespace: Option<String>,
        /// Which published modules (`platformRef.oci`) are trusted: a YAML file with `sources:`
        /// rules (`pattern`, `deny`, `keys`), e.g. mounted from a ConfigMap. Without it, any
        /// digest-pinned module is accepted as Unverified. A file that does not parse or holds a
        /// bad key stops the operator at start (exit 2).
        #[arg(long, value_name = "FILE")]
        module_policy: Option<std::path::PathBuf>,
        /// Serve published modules (`platformRef.oci`) from the OCI image layouts under DIR (as
        /// `cue mod publish VERSION --out DIR/NAME` writes them) before asking any registry: a
        /// pinned digest found there never touches the network, with the same checks (its
        /// signatures are read from the layouts too). For clusters without registry access. A
        /// directory without a layout, or a layout that does not parse, stops the operator at
        /// start (exit 2).
        #[arg(long, value_name = "DIR")]
        vendored_modules: Option<PathBuf>,
        /// Also trust the CA certificates in FILE (one or more PEM `-----BEGIN CERTIFICATE-----`
        /// blocks, e.g. mounted from a ConfigMap) for HTTPS, besides the system's roots: for OCI
        /// registries and `git+https://` repositories alike. A file without a certificate, or
        /// one that does not parse, stops the operator at start (exit 2).
        #[arg(long, value_name = "FILE")]
        module_ca_file: Option<PathBuf>,
        /// Export the reconciles' traces over OTLP/gRPC to this endpoint, e.g.
        /// http://otel-collector:4317 (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
        /// $OTEL_EXPORTER_OTLP_ENDPOINT; without any, no traces). The other standard OTEL_*
        /// variables apply (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, …). An endpoint that is not a
        /// URL, or an OTLP protocol other than grpc, stops the operator at start (exit 2).
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
        #[command(flatten)]
        webhook: crate::webhook::WebhookArgs,
    },
    /// Explain a live instance: its graph, each node's phase and what it is blocked on, the top
    /// violations and the resolved module (uses the current kubeconfig).
    Explain {
        /// The instance's name.
        name: String,
        /// Its namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Print the CustomResourceDefinitions as YAML: the abstraction's and cuebe's PlatformChannel.
    Crd,
    /// Print the PlatformModuleApproval that approves a published module's digest, for
    /// `kubectl apply -f -` or a GitOps repository: REF is a pinned reference
    /// (`oci://REGISTRY/REPO@sha256:…`), a resolved git reference (`git+https://…@<commit>`, as
    /// `status.platformRefResolved` shows it) or a digest. Exit 2: REF names no digest.
    #[cfg(feature = "remote-modules")]
    Approve {
        /// What to approve.
        #[arg(value_name = "REF")]
        reference: String,
        /// Why, by whom, a ticket (`spec.note`, shown by `kubectl get platformmoduleapprovals`).
        #[arg(long)]
        note: Option<String>,
    },
    /// Print the least ClusterRole the operator needs, as YAML: the custom resource, the kinds
    /// the module renders for these manifests (under no optional API and under all of them),
    /// the watched kinds and events. Exit 2: a manifest is malformed; 4: the module failed.
    Rbac {
        /// Manifests to render (YAML or JSON); default: the built-in sample. Give one per
        /// feature that adds kinds (exposure, autoscaling, IAM, ...).
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
    },
    /// Render a manifest into its Graph offline, exactly as the operator would.
    ///
    /// Exit codes: 0 the Graph was printed; 3 policy violations (printed; as JSON with -o json),
    /// or a published module (OCI or git) the trust policy refuses; 2 the input or `--module`
    /// is malformed or does not match the schema (the field and line are named); 4 the platform
    /// module failed, or a published module could not be fetched (a registry or git server
    /// down, a branch or directory that does not exist) or is not what its digest says.
    Render {
        /// The manifest (YAML or JSON); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Cluster capabilities to assume, comma-separated (e.g. gateway-api, ack-iam).
        #[arg(long, value_delimiter = ',')]
        capabilities: Vec<String>,
        /// A YAML/JSON map from node id to that node's live object, e.g.
        /// `iamRole: {status: {ackResourceMetadata: {arn: ...}}}`.
        #[arg(long)]
        observe: Option<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
        output: Format,
        #[command(flatten)]
        module: ModuleArgs,
    },
    /// Platform changes through PlatformChannels: `plan` a candidate module on a channel's
    /// instances (offline, or from the cluster), `pause`, `resume` or `undo` a rollout, print a
    /// channel's `status`.
    #[command(subcommand)]
    Rollout(crate::rollout_command::RolloutCommand),
    /// Show what applying a manifest would change in the cluster (uses the current kubeconfig;
    /// writes nothing): each object created, updated (field by field) or unchanged, and what
    /// would be pruned. Exit 0: no changes; 1: changes; 2: bad input; 3: policy violations;
    /// 4: the cluster or the module failed.
    Diff {
        /// The manifest (YAML or JSON); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The instance's namespace when the manifest has none (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[command(flatten)]
        module: ModuleArgs,
    },
}

/// Which published module `render` and `diff` use.
#[derive(Args, Debug, Default)]
struct ModuleArgs {
    /// Render with this published module instead of what the manifest names (its
    /// `platformRef.oci` or `platformRef.git`, else the embedded module): preview a module
    /// before anyone pins it. `oci://REGISTRY/REPO@sha256:…`, or
    /// `git+https://HOST/REPO?ref=BRANCH|TAG|COMMIT&dir=PATH` (a branch or tag is resolved
    /// anew; also `git+file://`, `git://` on loopback, and the resolved form
    /// `git+https://HOST/REPO@COMMIT?dir=PATH`). Fetched, checked and cached as the operator
    /// does.
    #[arg(long, value_name = "REF")]
    module: Option<String>,
    /// Verify the published module against this policy file, as `run --module-policy` does
    /// (exit 3 when it refuses the module). Approvals (`requireApproval`) are not checked:
    /// previewing a module is how one decides to approve it.
    #[arg(long, value_name = "FILE")]
    module_policy: Option<PathBuf>,
    /// Serve the published module from the OCI image layouts under DIR before asking any
    /// registry, as `run --vendored-modules` does.
    #[arg(long, value_name = "DIR")]
    vendored_modules: Option<PathBuf>,
}

impl ModuleArgs {
    /// The published module to render `object` with (`None`: the embedded one), or the exit
    /// code after printing why it cannot be used.
    fn choose<A: Abstraction>(
        &self,
        object: &A,
    ) -> Result<Option<crate::published::Chosen>, ExitCode> {
        let names_published = object
            .platform_ref()
            .is_some_and(|r| r.oci.is_some() || r.git.is_some());
        if self.module.is_none() && !names_published {
            return Ok(None); // the embedded module: nothing to fetch
        }
        let policy = match self
            .module_policy
            .as_deref()
            .map(read_module_policy)
            .transpose()
        {
            Ok(p) => p,
            Err(message) => {
                eprintln!("error: {message}");
                return Err(Exit::BadInput.into());
            }
        };
        let Some(runtime) = runtime() else {
            return Err(Exit::Failed.into());
        };
        match runtime.block_on(crate::published::choose(
            object,
            self.module.as_deref(),
            policy.as_ref(),
            self.vendored_modules.as_deref(),
        )) {
            Ok(chosen) => {
                if let Some(c) = &chosen {
                    eprintln!("module: {}", c.described);
                }
                Ok(chosen)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Err(e.exit().into())
            }
        }
    }
}

#[derive(Args, Debug)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Customises the operator `run` and `dev` start (e.g. another inventory).
type Configure<A> = Arc<dyn Fn(Operator<A>) -> Operator<A> + Send + Sync>;

/// An operator binary for `A`.
pub struct App<A: Abstraction> {
    name: String,
    about: Option<String>,
    sample: Option<String>,
    dev: Option<Arc<dyn DevCluster>>,
    configure: Configure<A>,
}

impl<A: Abstraction> std::fmt::Debug for App<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<A: Abstraction> App<A> {
    /// A binary named `name` (used in `--help`).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            about: None,
            sample: None,
            dev: None,
            configure: Arc::new(|operator| operator),
        }
    }

    /// The one-line description in `--help`.
    pub fn about(mut self, about: impl Into<String>) -> Self {
        self.about = Some(about.into());
        self
    }

    /// The manifest `dev` applies unless given `--sample` or `--no-sample`.
    pub fn sample(mut self, yaml: impl Into<String>) -> Self {
        self.sample = Some(yaml.into());
        self
    }

    /// Enables `dev` on this local cluster.
    pub fn dev_cluster(mut self, cluster: impl DevCluster + 'static) -> Self {
        self.dev = Some(Arc::new(cluster));
        self
    }

    /// Adjusts the operator that `run` and `dev` start (swap the inventory, the adopter, ...).
    ///
    /// ```no_run
    /// # fn f<A: cuebe::Abstraction>() -> std::process::ExitCode {
    /// use std::sync::Arc;
    /// cuebe_cli::App::<A>::new("my-operator")
    ///     .configure(|operator| {
    ///         let client = operator.client().clone();
    ///         operator.with_inventory(Arc::new(cuebe::inventory::ConfigMapInventory::new(
    ///             client,
    ///             A::FIELD_MANAGER,
    ///         )))
    ///     })
    ///     .main()
    /// # }
    /// ```
    pub fn configure(
        mut self,
        configure: impl Fn(Operator<A>) -> Operator<A> + Send + Sync + 'static,
    ) -> Self {
        self.configure = Arc::new(configure);
        self
    }

    fn command(&self) -> clap::Command {
        let kind = A::kind(&());
        let about = self
            .about
            .clone()
            .unwrap_or_else(|| format!("The {kind} operator, built on cuebe"));
        let mut command = Cli::augment_args(clap::Command::new(self.name.clone()))
            .about(about)
            .version(env!("CARGO_PKG_VERSION"))
            .subcommand_required(true);
        if let Some(dev) = &self.dev {
            let extras = dev
                .extras()
                .iter()
                .map(|(name, what)| format!("  {name}: {what}"))
                .collect::<Vec<_>>()
                .join("\n");
            command =
                command.mut_subcommand("dev", |c| c.after_help(format!("--with takes:\n{extras}")));
        }
        command
    }

    /// Parses the process arguments, sets up logging to stderr (`RUST_LOG`) and, for `run` and
    /// `dev` with an OTLP endpoint, trace export (see [`crate::telemetry`]), runs the subcommand
    /// and flushes the traces.
    pub fn main(self) -> ExitCode {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let telemetry = match self.telemetry(&args) {
            Ok(telemetry) => telemetry,
            Err(message) => {
                eprintln!("error: {message}");
                return Exit::BadInput.into();
            }
        };
        let rust_log = std::env::var("RUST_LOG").ok();
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(crate::telemetry::log_filter(rust_log.as_deref())),
            )
            .with(telemetry.as_ref().map(|t| t.layer()))
            .init();
        let code = self.run_args(args);
        drop(telemetry);
        code
    }

    /// The trace exporter `run` or `dev` asks for with `--otlp-endpoint` or the OTEL_*
    /// variables; `None` for other commands, without an endpoint, or when the arguments do not
    /// parse (`run_args` says why).
    fn telemetry(
        &self,
        args: &[std::ffi::OsString],
    ) -> Result<Option<crate::telemetry::Telemetry>, String> {
        let Ok(cli) = self
            .command()
            .try_get_matches_from(args)
            .and_then(|matches| Cli::from_arg_matches(&matches))
        else {
            return Ok(None);
        };
        let flag = match &cli.command {
            Command::Run { otlp_endpoint, .. } | Command::Dev { otlp_endpoint, .. } => {
                otlp_endpoint.as_deref()
            }
            _ => return Ok(None),
        };
        let source = if flag.is_some() {
            "--otlp-endpoint"
        } else {
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        };
        match crate::telemetry::otlp_endpoint(flag, |name| std::env::var(name).ok())? {
            Some(endpoint) => crate::telemetry::Telemetry::start(&endpoint, &self.name)
                .map(Some)
                .map_err(|e| format!("{source}: {e}")),
            None => Ok(None),
        }
    }

    /// Runs the subcommand in `args` (the first is the program name: when it is
    /// `kubectl-<kind>`, the binary is a kubectl plugin, see [`crate::kubectl_plugin`]). Logging
    /// is the caller's.
    pub fn run_args<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let mut command = self.command();
        let kind = A::kind(&());
        if let Some(typed) = args
            .first()
            .and_then(|program| crate::kubectl_plugin::invoked_as(&kind, program))
        {
            command = crate::kubectl_plugin::as_plugin(command, &typed, &kind);
        }
        let matches = match command.try_get_matches_from(args) {
            Ok(m) => m,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() {
                    Exit::BadInput
                } else {
                    Exit::Success
                }
                .into();
            }
        };
        let cli = match Cli::from_arg_matches(&matches) {
            Ok(c) => c,
            Err(e) => {
                let _ = e.print();
                return Exit::BadInput.into();
            }
        };
        match cli.command {
            Command::Crd => {
                let yaml = cuebe::abstraction::crds::<A>()
                    .iter()
                    .map(|crd| serde_norway::to_string(crd).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("---\n");
                let _ = write!(std::io::stdout(), "{yaml}");
                ExitCode::SUCCESS
            }
            #[cfg(feature = "remote-modules")]
            Command::Approve { reference, note } => {
                match cuebe::approval::approval_for(&reference, note.as_deref()) {
                    Ok(approval) => {
                        let yaml = serde_norway::to_string(&approval).unwrap_or_default();
                        let _ = write!(std::io::stdout(), "{yaml}");
                        ExitCode::SUCCESS
                    }
                    Err(message) => {
                        eprintln!("error: approve: {message}");
                        Exit::BadInput.into()
                    }
                }
            }
            Command::Diff {
                file,
                namespace,
                module,
            } => run_diff::<A>(&file, namespace, &module),
            Command::Render {
                file,
                capabilities,
                observe,
                output,
                module,
            } => run_render::<A>(&file, &capabilities, observe.as_deref(), output, &module),
            Command::Run {
                namespace,
                metrics_bind,
                leader_elect,
                shard_ring,
                lease_namespace,
                module_policy,
                vendored_modules,
                module_ca_file,
                otlp_endpoint: _,
                webhook,
            } => match module_policy
                .as_deref()
                .map(read_module_policy)
                .transpose()
                .and_then(|policy| {
                    let vendored =
                        open_fetcher(vendored_modules.as_deref(), module_ca_file.as_deref())?;
                    Ok((policy, vendored))
                }) {
                Ok((policy, vendored)) => self.run_operator(
                    namespace,
                    metrics_bind,
                    match (leader_elect, shard_ring) {
                        (true, _) => Membership::Leader { lease_namespace },
                        (false, Some(ring)) => Membership::Shard {
                            ring,
                            lease_namespace,
                        },
                        (false, None) => Membership::Every,
                    },
                    policy,
                    vendored,
                    &webhook,
                ),
                Err(message) => {
                    tracing::error!("{message}");
                    eprintln!("error: {message}");
                    Exit::BadInput.into()
                }
            },
            Command::Explain { name, namespace } => run_explain::<A>(&name, namespace),
            Command::Rollout(command) => command.run::<A>(),
            Command::Rbac { files } => self.run_rbac(&files),
            Command::Dev {
                with,
                sample,
                no_sample,
                metrics_bind,
                vendored_modules,
                module_ca_file,
                otlp_endpoint: _,
            } => match open_fetcher(vendored_modules.as_deref(), module_ca_file.as_deref()) {
                Ok(vendored) => self.run_dev(with, sample, no_sample, metrics_bind, vendored),
                Err(message) => {
                    eprintln!("error: {message}");
                    Exit::BadInput.into()
                }
            },
        }
    }

    fn run_rbac(&self, files: &[PathBuf]) -> ExitCode {
        let mut manifests = Vec::new();
        for file in files {
            match read(file) {
                Ok(text) => manifests.push((file.display().to_string(), text)),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Exit::BadInput.into();
                }
            }
        }
        if manifests.is_empty() {
            match &self.sample {
                Some(sample) => manifests.push(("the built-in sample".into(), sample.clone())),
                None => {
                    eprintln!("error: rbac: give the manifests to render with -f");
                    return Exit::BadInput.into();
                }
            }
        }
        let kinds = match crate::rbac::rendered_kinds::<A>(&manifests) {
            Ok(kinds) => kinds,
            Err(e @ RenderFailure::Input { .. }) => {
                eprintln!("error: {e}");
                return Exit::BadInput.into();
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Failed.into();
            }
        };
        let role = crate::rbac::least_cluster_role::<A>(&self.name, &kinds);
        let mut value = serde_json::to_value(&role).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("apiVersion".into(), "rbac.authorization.k8s.io/v1".into());
            object.insert("kind".into(), "ClusterRole".into());
        }
        match serde_norway::to_string(&value) {
            Ok(yaml) => {
                let _ = write!(std::io::stdout().lock(), "{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                Exit::Failed.into()
            }
        }
    }

    fn run_operator(
        &self,
        namespace: Option<String>,
        metrics_bind: Option<std::net::SocketAddr>,
        membership: Membership,
        module_policy: Option<cuebe::trust::ModulePolicy>,
        vendored: Option<Vendored>,
        webhook: &crate::webhook::WebhookArgs,
    ) -> ExitCode {
        if let Err(e) = cuebe::abstraction::check_embedded_modules::<A>() {
            eprintln!("error: {e}");
            return Exit::Failed.into();
        }
        let identity = replica_identity();
        // Before anything connects: a ring or identity the protocol cannot carry is bad input.
        if let Membership::Shard { ring, .. } = &membership
            && let Err(e) = Shard::new(ring.as_str(), "", identity.as_str())
        {
            eprintln!("error: --shard-ring: {e}");
            return Exit::BadInput.into();
        }
        let Some(runtime) = runtime() else {
            return Exit::Failed.into();
        };
        runtime.block_on(async {
            let Some(client) = default_client().await else {
                return Exit::Failed.into();
            };
            let mut operator = with_vendored(
                Operator::<A>::new(client).shutdown_on_signal(true),
                vendored,
            );
            if let Some(policy) = module_policy {
                operator = match operator.with_module_policy(policy) {
                    Ok(operator) => operator,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Exit::BadInput.into();
                    }
                };
            }
            if let Some(ns) = namespace {
                operator = operator.namespace(ns);
            }
            if let Some(addr) = metrics_bind {
                let Some(listener) = bind_metrics(addr).await else {
                    return Exit::Failed.into();
                };
                operator = operator.serve_metrics(listener);
            }
            match webhook.webhook().await {
                Ok(Some(webhook)) => operator = operator.admission_webhook(webhook),
                Ok(None) => {}
                Err(message) => {
                    eprintln!("error: {message}");
                    return Exit::BadInput.into();
                }
            }
            let lease_namespace = |given: Option<String>| {
                given
                    .or_else(|| std::env::var("POD_NAMESPACE").ok())
                    .unwrap_or_else(|| operator.client().default_namespace().to_string())
            };
            match membership {
                Membership::Every => {}
                Membership::Leader {
                    lease_namespace: ns,
                } => {
                    let lease_namespace = lease_namespace(ns);
                    tracing::info!(%lease_namespace, %identity, "leader election on");
                    operator = operator.leader_election(LeaderElection::new(
                        format!("{}-leader", A::FIELD_MANAGER),
                        lease_namespace,
                        identity,
                    ));
                }
                Membership::Shard {
                    ring,
                    lease_namespace: ns,
                } => match Shard::new(ring, lease_namespace(ns), identity) {
                    Ok(shard) => operator = operator.sharded(shard),
                    Err(e) => {
                        eprintln!("error: --shard-ring: {e}");
                        return Exit::BadInput.into();
                    }
                },
            }
            (self.configure)(operator).run().await;
            ExitCode::SUCCESS
        })
    }

    fn run_dev(
        &self,
        with: Vec<String>,
        sample: Option<PathBuf>,
        no_sample: bool,
        metrics_bind: Option<std::net::SocketAddr>,
        vendored: Option<Vendored>,
    ) -> ExitCode {
        // Before the control plane starts: a module that does not load fails now, not at the
        // sample's first render.
        if let Err(e) = cuebe::abstraction::check_embedded_modules::<A>() {
            eprintln!("error: {e}");
            return Exit::Failed.into();
        }
        let Some(cluster) = self.dev.clone() else {
            eprintln!(
                "error: {} was built without a local control plane for `dev`",
                self.name
            );
            return Exit::Failed.into();
        };
        let known: Vec<&str> = cluster.extras().iter().map(|(n, _)| *n).collect();
        if let Some(bad) = with.iter().find(|w| !known.contains(&w.as_str())) {
            eprintln!(
                "error: --with: unknown extra {bad:?} (known: {})",
                known.join(", ")
            );
            return Exit::BadInput.into();
        }
        let sample = if no_sample {
            None
        } else {
            match sample {
                Some(path) => match read(&path) {
                    Ok(text) => Some((path.display().to_string(), text)),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Exit::BadInput.into();
                    }
                },
                None => self.sample.clone().map(|s| ("sample".to_string(), s)),
            }
        };
        let Some(runtime) = runtime() else {
            return Exit::Failed.into();
        };
        let metrics = match metrics_bind {
            Some(addr) => match runtime.block_on(bind_metrics(addr)) {
                Some(listener) => Some(listener),
                None => return Exit::Failed.into(),
            },
            None => None,
        };
        // `--vendored-modules` first: what `configure` sets wins, as for `run`.
        let configure = self.configure.clone();
        let options = DevOptions {
            extras: with,
            sample,
            configure: Arc::new(move |operator| {
                configure(with_vendored(operator, vendored.clone()))
            }),
            metrics,
        };
        match runtime.block_on(crate::dev::run::<A>(cluster.as_ref(), options)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                Exit::Failed.into()
            }
        }
    }
}

/// A fetcher serving `--vendored-modules DIR`, checked at start.
#[cfg(feature = "remote-modules")]
type Vendored = Arc<cuebe::remote::ModuleFetcher>;
/// Without remote modules, `--vendored-modules` is refused at start: no value of this exists.
#[cfg(not(feature = "remote-modules"))]
#[derive(Clone)]
enum Vendored {}

/// Opens `--vendored-modules DIR`, naming the flag, the directory and the problem on error.
fn open_vendored(dir: &Path) -> Result<Vendored, String> {
    #[cfg(feature = "remote-modules")]
    {
        cuebe::remote::ModuleFetcher::new(Some(cuebe::remote::default_cache_dir()))
            .with_vendored_modules(dir)
            .map(Arc::new)
            .map_err(|e| format!("--vendored-modules {}: {e}", dir.display()))
    }
    #[cfg(not(feature = "remote-modules"))]
    {
        Err(format!(
            "--vendored-modules {}: this binary was built without the remote-modules feature of cuebe-cli",
            dir.display()
        ))
    }
}

/// The fetcher of `--vendored-modules DIR` and `--module-ca-file FILE`, when either is given,
/// checked at start; errors name the flag.
fn open_fetcher(
    vendored: Option<&Path>,
    ca_file: Option<&Path>,
) -> Result<Option<Vendored>, String> {
    let Some(ca_file) = ca_file else {
        return vendored.map(open_vendored).transpose();
    };
    #[cfg(feature = "remote-modules")]
    {
        let pem = std::fs::read(ca_file)
            .map_err(|e| format!("--module-ca-file {}: {e}", ca_file.display()))?;
        let mut fetcher =
            cuebe::remote::ModuleFetcher::new(Some(cuebe::remote::default_cache_dir()))
                .with_ca_certificates(&pem)
                .map_err(|e| format!("--module-ca-file {}: {e}", ca_file.display()))?;
        if let Some(dir) = vendored {
            fetcher = fetcher
                .with_vendored_modules(dir)
                .map_err(|e| format!("--vendored-modules {}: {e}", dir.display()))?;
        }
        Ok(Some(Arc::new(fetcher)))
    }
    #[cfg(not(feature = "remote-modules"))]
    {
        let _ = vendored;
        Err(format!(
            "--module-ca-file {}: this binary was built without the remote-modules feature of cuebe-cli",
            ca_file.display()
        ))
    }
}

/// The operator with the fetcher of `--vendored-modules`, if given.
fn with_vendored<A: Abstraction>(operator: Operator<A>, vendored: Option<Vendored>) -> Operator<A> {
    match vendored {
        #[cfg(feature = "remote-modules")]
        Some(fetcher) => operator.with_module_fetcher(fetcher),
        #[cfg(not(feature = "remote-modules"))]
        Some(never) => match never {},
        None => operator,
    }
}

pub(crate) fn read(path: &Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("-: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The async runtime for `run`, `dev` and `explain`; `None` (after saying why) when it cannot
/// start.
pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .inspect_err(|e| eprintln!("error: cannot start the async runtime: {e}"))
        .ok()
}

/// A client from KUBECONFIG, ~/.kube/config or the in-cluster account; `None` after saying why.
/// The listener for `--metrics-bind`; `None` (after saying why) when the address is taken.
async fn bind_metrics(addr: std::net::SocketAddr) -> Option<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .inspect_err(|e| eprintln!("error: --metrics-bind {addr}: cannot listen: {e}"))
        .ok()
}

async fn default_client() -> Option<kube::Client> {
    kube::Client::try_default()
        .await
        .inspect_err(|e| eprintln!("error: no usable kubeconfig or in-cluster config: {e}"))
        .ok()
}

fn run_explain<A: Abstraction>(name: &str, namespace: Option<String>) -> ExitCode {
    let Some(runtime) = runtime() else {
        return Exit::Failed.into();
    };
    runtime.block_on(async {
        let Some(client) = default_client().await else {
            return Exit::Failed.into();
        };
        let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
        let renderer = CueRenderer::new(A::modules());
        let executor = Operator::<A>::default_executor(client.clone());
        match crate::explain::explain::<A>(client, &renderer, &executor, &ns, name).await {
            Ok(text) => {
                let _ = write!(std::io::stdout(), "{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                Exit::Failed.into()
            }
        }
    })
}

fn run_diff<A: Abstraction>(
    file: &Path,
    namespace: Option<String>,
    module: &ModuleArgs,
) -> ExitCode {
    let name = file.display().to_string();
    let mut desired: A = match read(file)
        .map_err(|message| RenderFailure::Input {
            file: name.clone(),
            message,
        })
        .and_then(|text| render::parse_instance::<A>(&name, &text))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::BadInput.into();
        }
    };
    let chosen = match module.choose(&desired) {
        Ok(chosen) => chosen.map(|c| c.module),
        Err(code) => return code,
    };
    let Some(runtime) = runtime() else {
        return Exit::Failed.into();
    };
    runtime.block_on(async {
        let Some(client) = default_client().await else {
            return Exit::Failed.into();
        };
        if desired.meta().namespace.is_none() {
            desired.meta_mut().namespace =
                Some(namespace.unwrap_or_else(|| client.default_namespace().to_string()));
        }
        let renderer = CueRenderer::new(A::modules());
        let executor = Operator::<A>::default_executor(client.clone());
        match crate::diff::diff::<A>(client, &renderer, &executor, &desired, chosen).await {
            Ok(report) => {
                let _ = write!(std::io::stdout().lock(), "{}", report.to_text());
                if report
                    .violations
                    .iter()
                    .any(|v| v.severity == cuebe::graph::Severity::Error)
                {
                    eprintln!("error: policy fails; nothing would be applied");
                    Exit::PolicyViolation.into()
                } else if report.has_changes() {
                    Exit::Changes.into()
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(crate::diff::DiffError::Render(e @ RenderError::InvalidInput { .. })) => {
                eprintln!("error: {name}: {e}");
                Exit::BadInput.into()
            }
            Err(e) => {
                eprintln!("error: {e}");
                Exit::Failed.into()
            }
        }
    })
}

fn run_render<A: Abstraction>(
    file: &Path,
    capabilities: &[String],
    observe: Option<&Path>,
    output: Format,
    module: &ModuleArgs,
) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let text = match read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::BadInput.into();
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
                return Exit::BadInput.into();
            }
        },
    };
    let known: Vec<&str> = A::capability_probes().iter().map(|p| p.name).collect();
    if let Some(bad) = capabilities
        .iter()
        .find(|c| !c.is_empty() && !known.contains(&c.as_str()))
    {
        eprintln!(
            "error: --capabilities: unknown capability {bad:?} (known: {})",
            known.join(", ")
        );
        return Exit::BadInput.into();
    }
    let renderer = CueRenderer::new(A::modules());
    let name = file.display().to_string();
    let object: A = match render::parse_instance(&name, &text) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::BadInput.into();
        }
    };
    let chosen = match module.choose(&object) {
        Ok(chosen) => chosen.map(|c| c.module),
        Err(code) => return code,
    };
    match render::render_object(
        &renderer,
        &name,
        &object,
        Capabilities::from_names(capabilities),
        observed,
        chosen,
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
            Exit::PolicyViolation.into()
        }
        Ok(graph) => {
            let _ = write!(stdout, "{}", render::format_graph(&graph, output));
            ExitCode::SUCCESS
        }
        Err(RenderFailure::Render(e @ RenderError::InvalidInput { .. })) => {
            eprintln!("error: {name}: {e}");
            Exit::BadInput.into()
        }
        Err(e @ RenderFailure::Input { .. }) => {
            eprintln!("error: {e}");
            Exit::BadInput.into()
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Failed.into()
        }
    }
}

/// Reads and checks `--module-policy FILE` (YAML), naming the file and the rule on error.
pub(crate) fn read_module_policy(
    path: &std::path::Path,
) -> Result<cuebe::trust::ModulePolicy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--module-policy {}: {e}", path.display()))?;
    let policy: cuebe::trust::ModulePolicy = serde_norway::from_str(&text)
        .map_err(|e| format!("--module-policy {}: {e}", path.display()))?;
    policy
        .validate()
        .map_err(|e| format!("--module-policy {}: {e}", path.display()))?;
    Ok(policy)
}
