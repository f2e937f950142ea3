//! `webservice-operator dev`, the README's main command, as a newcomer runs it: it prints the
//! kubeconfig and kubectl, the operator reconciles the sample WebService to Ready, and Ctrl-C
//! stops everything.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn dev_starts_a_cluster_applies_the_sample_and_stops_on_sigint() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
        .args([
            "dev",
            "--with",
            "ack-iam,gateway-api",
            "--metrics-bind",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut kubeconfig, mut kubectl, mut workdir) = (String::new(), String::new(), String::new());
    let mut metrics = String::new();
    let mut sample_ready = false;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("dev prints `ready` in time");
        if let Some(p) = line.strip_prefix("kubeconfig: ") {
            kubeconfig = p.to_string();
        } else if let Some(p) = line.strip_prefix("kubectl: ") {
            kubectl = p.to_string();
        } else if let Some(p) = line.strip_prefix("metrics: ") {
            metrics = p.to_string();
        } else if let Some(p) = line.strip_prefix("logs: ") {
            workdir = p.to_string();
        } else if line == "WebService hello is Ready (4/4 nodes)" {
            sample_ready = true;
        } else if line.starts_with("ready;") {
            break;
        }
    }
    assert!(
        sample_ready,
        "the operator reconciled the sample to Ready before `ready;`"
    );
    let get = Command::new(&kubectl)
        .args([
            "--kubeconfig",
            &kubeconfig,
            "get",
            "webservices",
            "-n",
            "apps",
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "webservice.platform.example.com/hello",
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    let crds = Command::new(&kubectl)
        .args(["--kubeconfig", &kubeconfig, "get", "crd", "-o", "name"])
        .output()
        .unwrap();
    let crds = String::from_utf8_lossy(&crds.stdout);
    assert!(
        crds.contains("roles.iam.services.k8s.aws")
            && crds.contains("httproutes.gateway.networking.k8s.io"),
        "{crds}"
    );

    // The metrics the operator serves count the sample as Ready.
    let addr = metrics
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("dev printed no metrics URL: {metrics:?}"));
    let scrape = http_get(addr, "/metrics");
    assert!(
        scrape.contains("cuebe_instances{kind=\"WebService\",state=\"Ready\"} 1"),
        "{scrape}"
    );

    // SIGINT, as Ctrl-C would send.
    #[allow(unsafe_code)]
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "dev exits cleanly on SIGINT: {status}");
    // Nothing it started is left running.
    // (The detached watchdog that removes the working directory afterwards is not a component.)
    let ps = Command::new("pgrep")
        .args(["-fa", &workdir])
        .output()
        .unwrap();
    let running: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| !l.contains("while kill -0"))
        .map(str::to_string)
        .collect();
    assert!(
        running.is_empty(),
        "components still running after dev stopped: {running:?}"
    );
}

/// The whole HTTP response to `GET path` on `addr`.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
