//! `webservice-operator`: the reference cuebe operator.
//!
//! Everything but the CRD and its CUE module comes from the SDK: `run`, `dev`, `crd`,
//! `render` and `explain` (see `--help`).
use std::process::ExitCode;

use webservice_operator::{SAMPLE, WebService};

fn main() -> ExitCode {
    with_dev(
        cuebe_cli::App::<WebService>::new("webservice-operator")
            .about("The WebService operator, built on cuebe")
            .sample(SAMPLE),
    )
    .main()
}

/// `dev` runs the real local control plane, from the testkit; without the `dev` feature (the
/// shipped binary) the command says how to get it.
fn with_dev(app: cuebe_cli::App<WebService>) -> cuebe_cli::App<WebService> {
    #[cfg(feature = "dev")]
    let app = app.dev_cluster(cuebe_testkit::dev::LocalControlPlane);
    app
}
