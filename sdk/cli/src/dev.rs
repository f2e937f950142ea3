//! `dev`: an operator on a local cluster, with a sample instance reconciled.
//!
//! The cluster comes from a [`DevCluster`] (the real local control plane of `cuebe-testkit`
//! implements it); this module installs the CRD, runs the operator, applies the sample, prints
//! its nodes' progress until it is Ready, then waits for SIGINT or SIGTERM and stops everything.
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use cuebe::abstraction::Abstraction;
use cuebe::controller::Operator;

/// Called with the kubeconfig path as soon as the API server answers.
pub type OnApiReady = Arc<dyn Fn(&Path) + Send + Sync>;

/// A local cluster `dev` can start.
///
/// ```
/// // `cuebe_testkit::dev::LocalControlPlane` is the implementation operators use; a test
/// // double only needs the list of extras and a start function.
/// fn names(cluster: &dyn cuebe_cli::dev::DevCluster) -> Vec<&'static str> {
///     cluster.extras().iter().map(|(name, _)| *name).collect()
/// }
/// ```
#[async_trait::async_trait]
pub trait DevCluster: Send + Sync {
    /// Optional extras `--with` accepts: (name, what it installs).
    fn extras(&self) -> &[(&'static str, &'static str)];
    /// Starts the cluster with `extras`; calls `on_api_ready` once the API server answers.
    async fn start(
        &self,
        extras: &[String],
        on_api_ready: OnApiReady,
    ) -> Result<Box<dyn RunningDevCluster>, String>;
}

/// A cluster started by a [`DevCluster`]; dropping it stops every process it started.
#[async_trait::async_trait]
pub trait RunningDevCluster: Send + Sync {
    /// A client with cluster-admin rights.
    fn client(&self) -> Client;
    /// Lines describing the cluster (kubectl, logs, components), printed after start.
    fn describe(&self) -> Vec<String>;
    /// Installs CRDs and waits until they are served.
    async fn install_crds(&self, crds: &[CustomResourceDefinition]) -> Result<(), String>;
    /// An error when a component died.
    fn check_alive(&self) -> Result<(), String>;
}

/// What `dev` does beyond starting the cluster.
pub struct DevOptions<A: Abstraction> {
    /// Extras to install (names from [`DevCluster::extras`]).
    pub extras: Vec<String>,
    /// (name, manifest) of the instance to apply, if any.
    pub sample: Option<(String, String)>,
    /// Adjusts the operator before it starts.
    pub configure: Arc<dyn Fn(Operator<A>) -> Operator<A> + Send + Sync>,
    /// Where the operator serves `/metrics`, `/healthz` and `/readyz`, if anywhere.
    pub metrics: Option<tokio::net::TcpListener>,
}

impl<A: Abstraction> std::fmt::Debug for DevOptions<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevOptions")
            .field("extras", &self.extras)
            .finish_non_exhaustive()
    }
}

/// Why `dev` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The cluster did not start or a component died.
    #[error("{0}")]
    Cluster(String),
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// The sample could not be read.
    #[error("{0}")]
    Sample(String),
    /// Writing to the terminal or waiting for signals failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs `dev` for `A` until a signal arrives. Progress goes to standard output: this is the
/// user interface of the `dev` subcommand.
pub async fn run<A: Abstraction>(
    cluster: &dyn DevCluster,
    options: DevOptions<A>,
) -> Result<(), DevError> {
    let kind = A::kind(&()).into_owned();
    let mut out = std::io::stdout();
    writeln!(
        out,
        "starting the local control plane (the first run builds it; later runs reuse the build) ..."
    )?;
    let on_ready: OnApiReady = Arc::new(|kubeconfig: &Path| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "kubeconfig: {}", kubeconfig.display());
        let _ = out.flush();
    });
    let running = cluster
        .start(&options.extras, on_ready)
        .await
        .map_err(DevError::Cluster)?;
    for line in running.describe() {
        writeln!(out, "{line}")?;
    }
    let client = running.client();
    running
        .install_crds(&cuebe::abstraction::crds::<A>())
        .await
        .map_err(DevError::Cluster)?;

    let mut operator = (options.configure)(Operator::<A>::new(client.clone()));
    // The admission webhook on loopback, registered with the API server, so `kubectl apply`
    // of a refused instance prints the violations at once.
    let webhook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let webhook_url = format!("https://{}", webhook_listener.local_addr()?);
    let webhook_config = format!("{}-webhook", A::FIELD_MANAGER);
    operator = operator.admission_webhook(
        cuebe::admission::AdmissionWebhook::self_signed(webhook_listener, vec!["127.0.0.1".into()])
            .register(
                &webhook_config,
                &webhook_url,
                cuebe::admission::FailurePolicy::Ignore,
            ),
    );
    let mut metrics_url = None;
    if let Some(listener) = options.metrics {
        metrics_url = listener
            .local_addr()
            .ok()
            .map(|addr| format!("http://{addr}/metrics"));
        operator = operator.serve_metrics(listener);
    }
    let operator = tokio::spawn(operator.run());
    writeln!(
        out,
        "operator: running (field manager {})",
        A::FIELD_MANAGER
    )?;
    if let Some(url) = metrics_url {
        writeln!(out, "metrics: {url}")?;
    }
    writeln!(
        out,
        "admission webhook: {webhook_url} (ValidatingWebhookConfiguration {webhook_config}, failurePolicy Ignore)"
    )?;

    if let Some((name, text)) = &options.sample {
        let object: A = crate::render::parse_instance(name, text)
            .map_err(|e| DevError::Sample(e.to_string()))?;
        let meta = kube::Resource::meta(&object);
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let object_name = meta.name.clone().unwrap_or_default();
        ensure_namespace(&client, &ns).await?;
        let api: Api<A> = Api::namespaced(client.clone(), &ns);
        api.patch(
            &object_name,
            &PatchParams::apply("cuebe-dev").force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|source| DevError::Kube {
            what: format!("applying {kind} {ns}/{object_name}"),
            source,
        })?;
        writeln!(out, "applied {kind} {ns}/{object_name}")?;
        watch_progress(&api, &kind, &object_name, &mut out).await?;
    }
    writeln!(out, "ready; press Ctrl-C to stop every process")?;
    out.flush()?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                running.check_alive().map_err(DevError::Cluster)?;
            }
        }
    }
    writeln!(out, "stopping ...")?;
    operator.abort();
    drop(running);
    writeln!(out, "stopped")?;
    Ok(())
}

/// Prints node progress of the sample until it is Ready (or stalled, or two minutes pass).
async fn watch_progress<A: Abstraction>(
    api: &Api<A>,
    kind: &str,
    name: &str,
    out: &mut std::io::Stdout,
) -> Result<(), DevError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(object) = api.get(name).await
            && let Some(status) = object.abstraction_status()
        {
            let line = status
                .nodes
                .iter()
                .map(|(id, n)| format!("{id}={:?}", n.phase))
                .collect::<Vec<_>>()
                .join(" ");
            if line != last && !line.is_empty() {
                writeln!(out, "  {name}: {line}")?;
                last = line;
            }
            if status.is_ready() {
                writeln!(out, "{kind} {name} is Ready ({} nodes)", status.ready_nodes)?;
                return Ok(());
            }
            if let Some(c) = status
                .condition(cuebe::status::ConditionType::Stalled)
                .filter(|c| c.status == "True")
            {
                writeln!(out, "{kind} {name} is stalled: {}", c.message)?;
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let plural = A::plural(&());
    writeln!(
        out,
        "{kind} {name} is not Ready after 2 minutes; see `kubectl get {plural} {name} -o yaml`"
    )?;
    Ok(())
}

async fn ensure_namespace(client: &Client, ns: &str) -> Result<(), DevError> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let body =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    api.patch(ns, &PatchParams::apply("cuebe-dev"), &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(|source| DevError::Kube {
            what: format!("creating namespace {ns}"),
            source,
        })
}
