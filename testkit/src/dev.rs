//! The local control plane as a `dev` cluster for `cuebe_cli::App::dev_cluster`.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cuebe_cli::dev::{DevCluster, OnApiReady, RunningDevCluster};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;

use crate::cluster::ack::{AckStandIn, AckStandInOptions};
use crate::cluster::{ClusterOptions, TestCluster, ack_iam_crds, gateway_api_crds};

/// The real local control plane (etcd, kube-apiserver, kube-controller-manager,
/// kube-scheduler, kwok) of [`crate::cluster`], with `ack-iam` (the ACK IAM CRDs and the ACK
/// stand-in) and `gateway-api` (the Gateway API CRDs) as extras.
///
/// ```no_run
/// # fn f<A: cuebe::Abstraction>() -> std::process::ExitCode {
/// cuebe_cli::App::<A>::new("my-operator")
///     .dev_cluster(cuebe_testkit::dev::LocalControlPlane)
///     .main()
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalControlPlane;

const EXTRAS: &[(&str, &str)] = &[
    (
        "ack-iam",
        "the ACK IAM CRDs and the ACK stand-in, which writes the status the AWS controller would (no AWS is called)",
    ),
    ("gateway-api", "the Gateway API CRDs"),
];

struct Running {
    cluster: TestCluster,
    _ack: Option<AckStandIn>,
}

#[async_trait::async_trait]
impl DevCluster for LocalControlPlane {
    fn extras(&self) -> &[(&'static str, &'static str)] {
        EXTRAS
    }

    async fn start(
        &self,
        extras: &[String],
        on_api_ready: OnApiReady,
    ) -> Result<Box<dyn RunningDevCluster>, String> {
        let has = |name: &str| extras.iter().any(|e| e == name);
        let mut crds: Vec<PathBuf> = Vec::new();
        if has("ack-iam") {
            crds.extend(ack_iam_crds());
        }
        if has("gateway-api") {
            crds.extend(gateway_api_crds());
        }
        let cluster = TestCluster::start(ClusterOptions {
            crds,
            start_timeout: Duration::from_secs(120),
            on_api_ready: Some(Arc::new(move |path: &std::path::Path| on_api_ready(path))),
            ..ClusterOptions::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        let ack = has("ack-iam")
            .then(|| AckStandIn::spawn(cluster.client(), AckStandInOptions::default()));
        Ok(Box::new(Running { cluster, _ack: ack }))
    }
}

#[async_trait::async_trait]
impl RunningDevCluster for Running {
    fn client(&self) -> Client {
        self.cluster.client()
    }

    fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            format!("kubectl: {}", self.cluster.kubectl().display()),
            format!("logs: {}", self.cluster.workdir().display()),
            format!(
                "components: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (started in {:.1}s)",
                self.cluster.startup_time().as_secs_f64()
            ),
        ];
        if self._ack.is_some() {
            lines.push(
                "ACK stand-in: running (it writes the status the AWS ACK IAM controller would; no AWS is called)"
                    .into(),
            );
        }
        lines
    }

    async fn install_crds(&self, crds: &[CustomResourceDefinition]) -> Result<(), String> {
        self.cluster
            .apply_crds(crds, Instant::now() + Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())
    }

    fn check_alive(&self) -> Result<(), String> {
        self.cluster.check_alive().map_err(|e| e.to_string())
    }
}
