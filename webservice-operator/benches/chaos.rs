//! The chaos run: a rollout of WebServices (image tags, autoscaling on and off, IRSA) while the
//! operator, a separate `webservice-operator run` process, is killed with SIGKILL at random
//! points and kube-apiserver and etcd are restarted under it; then the invariants are checked
//! from the cluster (see `cuebe_testkit::chaos`). Not part of `cargo test`.
//!
//! ```sh
//! cargo bench -p webservice-operator --bench chaos
//! cargo bench -p webservice-operator --bench chaos -- --instances 200 --kills 20 \
//!     --apiserver-restarts 5 --etcd-restarts 1 --waves 6 --seed 1234
//! ```
//!
//! Prints the seed first and a summary last (faults, objects lost / leaked / duplicated /
//! recreated, time taken); exits 1 naming the objects if an invariant failed, 2 on bad
//! arguments, 3 if the run itself could not be carried out. The operator's log is
//! `target/tmp/chaos/chaos-operator-<seed>.log`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../tests/support/chaos_workload.rs"]
mod chaos_workload;

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cuebe_testkit::chaos::{self, ChaosOptions};
use cuebe_testkit::cluster::{ClusterOptions, TestCluster, ack_iam_crds};

const USAGE: &str = "usage: chaos [--instances N] [--kills N] [--apiserver-restarts N] \
                     [--etcd-restarts N] [--waves N] [--seed N] [--converge-timeout SECONDS]";

fn parse(args: impl Iterator<Item = String>) -> Result<ChaosOptions, String> {
    let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos");
    // A seed from the clock unless one is given; printed, so any run can be repeated.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000)
        .unwrap_or(1);
    let mut options = ChaosOptions::new(seed, log_dir);
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        // `cargo bench` passes --bench to every bench binary.
        if arg == "--bench" {
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
        let number = |v: &str| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{arg}: {v:?} is not a number\n{USAGE}"))
        };
        let n = number(&value)?;
        match arg.as_str() {
            "--instances" => options.instances = n as usize,
            "--kills" => options.kills = n as u32,
            "--apiserver-restarts" => options.apiserver_restarts = n as u32,
            "--etcd-restarts" => options.etcd_restarts = n as u32,
            "--waves" => options.waves = n as u32,
            "--seed" => options.seed = n,
            "--converge-timeout" => options.converge_timeout = Duration::from_secs(n),
            _ => return Err(format!("unknown argument {arg}\n{USAGE}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cuebe_testkit=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    println!(
        "chaos: seed {} ({} instances, {} waves, {} kills, {} kube-apiserver restarts, {} etcd restarts)",
        options.seed,
        options.instances,
        options.waves,
        options.kills,
        options.apiserver_restarts,
        options.etcd_restarts
    );
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cannot start the async runtime");
        return ExitCode::from(3);
    };
    runtime.block_on(async {
        let started = Instant::now();
        let cluster =
            match TestCluster::start(ClusterOptions::default().with_crds(ack_iam_crds())).await {
                Ok(cluster) => cluster,
                Err(e) => {
                    eprintln!("the control plane did not start: {e}");
                    return ExitCode::from(3);
                }
            };
        println!(
            "chaos: control plane {} up in {:.1}s",
            cluster.server(),
            cluster.startup_time().as_secs_f64()
        );
        let report = match chaos::run(&cluster, &chaos_workload::workload(), &options).await {
            Ok(report) => report,
            Err(e) => {
                eprintln!("the chaos run could not be carried out: {e}");
                eprintln!("{}", cluster.log_tails(20));
                return ExitCode::from(3);
            }
        };
        println!("{report}");
        match cluster.check_alive() {
            Ok(()) => println!("  control plane: every component alive at the end"),
            Err(e) => println!("  control plane: {e}"),
        }
        println!(
            "  with start-up: {:.1}s; rerun: cargo bench -p webservice-operator --bench chaos -- --instances {} --kills {} --apiserver-restarts {} --etcd-restarts {} --waves {} --seed {}",
            started.elapsed().as_secs_f64(),
            options.instances,
            options.kills,
            options.apiserver_restarts,
            options.etcd_restarts,
            options.waves,
            options.seed
        );
        if report.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
