//! `dev`: the operator on a local control plane, with a sample WebService reconciled.
//!
//! Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback (the
//! pinned build from `testkit/controlplane`), installs the WebService CRD (and, on request, the
//! ACK IAM and Gateway API CRDs, with the ACK stand-in for ack-iam), prints the kubeconfig and the
//! matching kubectl, runs the operator, applies a sample WebService and shows its nodes' progress
//! until it is Ready, then keeps running until SIGINT or SIGTERM, when it stops every process it
//! started.
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use cuebe_testkit::cluster::ack::{AckStandIn, AckStandInOptions};
use cuebe_testkit::cluster::{ClusterOptions, TestCluster, ack_iam_crds, gateway_api_crds};
use kube::CustomResourceExt;
use kube::api::{Api, Patch, PatchParams};

use crate::WebService;

/// What `dev` adds to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Extra {
    /// The ACK IAM CRDs, and the ACK stand-in writing the status AWS would.
    AckIam,
    /// The Gateway API CRDs.
    GatewayApi,
}

/// Why `dev` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The control plane did not start.
    #[error(transparent)]
    Cluster(#[from] cuebe_testkit::cluster::ClusterError),
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

/// The sample WebService `dev` applies.
pub const SAMPLE: &str = include_str!("../../examples/webservices/simple.yaml");

/// Runs `dev` until a signal arrives.
pub async fn run(with: &[Extra], sample: Option<PathBuf>, no_sample: bool) -> Result<(), DevError> {
    let mut out = std::io::stdout();
    let mut crds: Vec<PathBuf> = Vec::new();
    if with.contains(&Extra::AckIam) {
        crds.extend(ack_iam_crds());
    }
    if with.contains(&Extra::GatewayApi) {
        crds.extend(gateway_api_crds());
    }
    writeln!(
        out,
        "starting the local control plane (the first run builds it; later runs reuse the build) ..."
    )?;
    let cluster = TestCluster::start(ClusterOptions {
        crds,
        start_timeout: Duration::from_secs(120),
        on_api_ready: Some(std::sync::Arc::new(|kubeconfig: &std::path::Path| {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "kubeconfig: {}", kubeconfig.display());
            let _ = out.flush();
        })),
        ..ClusterOptions::default()
    })
    .await?;
    writeln!(out, "kubectl: {}", cluster.kubectl().display())?;
    writeln!(out, "logs: {}", cluster.workdir().display())?;
    writeln!(
        out,
        "components: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (started in {:.1}s)",
        cluster.startup_time().as_secs_f64()
    )?;

    let client = cluster.client();
    cluster
        .apply_crds(
            &[WebService::crd()],
            std::time::Instant::now() + Duration::from_secs(30),
        )
        .await?;
    let ack = with
        .contains(&Extra::AckIam)
        .then(|| AckStandIn::spawn(client.clone(), AckStandInOptions::default()));
    if ack.is_some() {
        writeln!(
            out,
            "ACK stand-in: running (it writes the status the AWS ACK IAM controller would; no AWS is called)"
        )?;
    }

    let operator = tokio::spawn(crate::controller::run(client.clone(), None, false));
    writeln!(
        out,
        "operator: running (field manager {})",
        crate::controller::FIELD_MANAGER
    )?;

    if !no_sample {
        let text = match &sample {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| DevError::Sample(format!("{}: {e}", path.display())))?,
            None => SAMPLE.to_string(),
        };
        let name = sample
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "sample".into());
        let ws = crate::render::parse_webservice(&name, &text)
            .map_err(|e| DevError::Sample(e.to_string()))?;
        let ns = ws
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let ws_name = ws.metadata.name.clone().unwrap_or_default();
        ensure_namespace(&client, &ns).await?;
        let api: Api<WebService> = Api::namespaced(client.clone(), &ns);
        api.patch(
            &ws_name,
            &PatchParams::apply("cuebe-dev").force(),
            &Patch::Apply(&ws),
        )
        .await
        .map_err(|source| DevError::Kube {
            what: format!("applying WebService {ns}/{ws_name}"),
            source,
        })?;
        writeln!(out, "applied WebService {ns}/{ws_name}")?;
        watch_progress(&api, &ws_name, &mut out).await?;
    }
    writeln!(out, "ready; press Ctrl-C to stop every process")?;
    out.flush()?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                cluster.check_alive()?;
            }
        }
    }
    writeln!(out, "stopping ...")?;
    operator.abort();
    drop(ack);
    drop(cluster);
    writeln!(out, "stopped")?;
    Ok(())
}

/// Prints node progress of the sample until it is Ready (or stalled, or two minutes pass).
async fn watch_progress(
    api: &Api<WebService>,
    name: &str,
    out: &mut std::io::Stdout,
) -> Result<(), DevError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(ws) = api.get(name).await
            && let Some(status) = ws.status
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
                writeln!(
                    out,
                    "WebService {name} is Ready ({} nodes)",
                    status.ready_nodes
                )?;
                return Ok(());
            }
            if let Some(c) = status.condition("Stalled").filter(|c| c.status == "True") {
                writeln!(out, "WebService {name} is stalled: {}", c.message)?;
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    writeln!(
        out,
        "WebService {name} is not Ready after 2 minutes; see `kubectl get ws {name} -o yaml`"
    )?;
    Ok(())
}

async fn ensure_namespace(client: &kube::Client, ns: &str) -> Result<(), DevError> {
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
