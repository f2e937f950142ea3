//! `worker-operator`: `run`, `dev`, `crd`, `render` and `explain` for Worker (see `--help`).
use std::process::ExitCode;

use worker_operator::{SAMPLE, Worker};

fn main() -> ExitCode {
    with_dev(
        cuebe_cli::App::<Worker>::new("worker-operator")
            .about("The Worker operator: queue consumers, built on cuebe")
            .sample(SAMPLE),
    )
    .main()
}

/// `dev` runs the real local control plane, from the testkit; without the `dev` feature (the
/// shipped binary) the command says how to get it.
fn with_dev(app: cuebe_cli::App<Worker>) -> cuebe_cli::App<Worker> {
    #[cfg(feature = "dev")]
    let app = app.dev_cluster(cuebe_testkit::dev::LocalControlPlane);
    app
}
