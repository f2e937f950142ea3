//! `__crate__`: `run`, `dev`, `crd`, `render` and `explain` for __Kind__ (see `--help`).
use std::process::ExitCode;

use __crate_ident__::{__Kind__, SAMPLE};

fn main() -> ExitCode {
    let app = cuebe_cli::App::<__Kind__>::new("__crate__").sample(SAMPLE);
    // `dev` runs the local control plane; without the `dev` feature it says how to get it.
    #[cfg(feature = "dev")]
    let app = app.dev_cluster(cuebe_testkit::dev::LocalControlPlane);
    app.main()
}
