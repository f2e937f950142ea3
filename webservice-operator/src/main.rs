//! `webservice-operator`: the reference cuebe operator.
//!
//! Everything but the CRD and its CUE module comes from the SDK: `run`, `dev`, `crd`,
//! `render` and `explain` (see `--help`).
use std::process::ExitCode;

use webservice_operator::{SAMPLE, WebService};

fn main() -> ExitCode {
    cuebe::cli::App::<WebService>::new("webservice-operator")
        .about("The WebService operator, built on cuebe")
        .sample(SAMPLE)
        .dev_cluster(cuebe_testkit::dev::LocalControlPlane)
        .main()
}
