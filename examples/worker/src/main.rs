//! `worker-operator`: `run`, `dev`, `crd`, `render` and `explain` for Worker (see `--help`).
use std::process::ExitCode;

use worker_operator::{SAMPLE, Worker};

fn main() -> ExitCode {
    cuebe::cli::App::<Worker>::new("worker-operator")
        .about("The Worker operator: queue consumers, built on cuebe")
        .sample(SAMPLE)
        .dev_cluster(cuebe_testkit::dev::LocalControlPlane)
        .main()
}
