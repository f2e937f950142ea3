//! Loopback ports for the components, and whether a component really listens on the ones it was
//! given.
//!
//! A port from [`free_port`] is free when it is picked, not when the component binds it: in
//! between, the kernel may hand the same port to any other `bind(:0)` on the machine (a second
//! cluster starting, a parallel test binary). So the cluster does not trust a pick: it waits until
//! each component listens on its ports, and restarts one whose log says "address already in use"
//! on a newly picked port (`TestCluster::settle`).
use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

/// Picks a loopback port for one listener of a component. It is called with the listener's name
/// (one of [`PORT_NAMES`]) each time that component is started, including restarts after its
/// port was taken, so a test can hand out a port it holds to force that path.
pub type PortPicker = Arc<dyn Fn(&str) -> std::io::Result<u16> + Send + Sync>;

/// The names a [`PortPicker`] is called with: etcd's client and peer listeners, then the secure
/// ports of kube-apiserver, kube-controller-manager and kube-scheduler, and kwok's server.
pub const PORT_NAMES: &[&str] = &[
    "etcd",
    "etcd-peer",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

/// A loopback port that is free right now (binds `127.0.0.1:0`, reads the port, releases it).
/// Someone else may take it before it is used; see the module docs.
pub fn free_port() -> std::io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// [`free_port`] for every listener.
pub(super) fn default_picker() -> PortPicker {
    Arc::new(|_name: &str| free_port())
}

/// What a component's log says when one of its listeners could not bind (Go's
/// `bind: address already in use`, the same text for etcd, the Kubernetes components and kwok).
const PORT_TAKEN: &[u8] = b"address already in use";

/// Whether the end of a component's log says a port it was given was taken.
pub(super) fn says_port_taken(log: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return false;
    };
    // The message is among the last lines: the component exits right after it. Reading only the
    // tail keeps this cheap while polling a chatty kube-apiserver log.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))
        .is_err()
    {
        return false;
    }
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_err() {
        return false;
    }
    bytes.windows(PORT_TAKEN.len()).any(|w| w == PORT_TAKEN)
}

/// Whether process `pid` has a TCP socket listening on `port`, read from `/proc`. `None` when the
/// socket tables cannot be read, so nothing can be told either way.
///
/// Connecting to the port would not do: when another process took the port, that process
/// answers.
pub(super) fn listens(pid: u32, port: u16) -> Option<bool> {
    let listening = listening_inodes(port)?;
    if listening.is_empty() {
        return Some(false);
    }
    Some(socket_inodes(pid).iter().any(|i| listening.contains(i)))
}

/// Inodes of the sockets in state LISTEN on `port`, IPv4 or IPv6.
fn listening_inodes(port: u16) -> Option<HashSet<u64>> {
    const LISTEN: &str = "0A";
    let mut inodes = HashSet::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        // `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`, the
        // local address as `HEXIP:HEXPORT`.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == LISTEN
                && local_port == Some(port)
                && let Ok(inode) = inode.parse()
            {
                inodes.insert(inode);
            }
        }
    }
    readable.then_some(inodes)
}

/// Inodes of the sockets process `pid` holds open (`/proc/<pid>/fd/* -> socket:[inode]`).
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_of_this_process_is_seen_and_a_released_port_is_not() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let me = std::process::id();
        if listens(me, port).is_none() {
            // No /proc socket tables here: nothing to check (the cluster then trusts a live
            // process).
            return Ok(());
        }
        assert_eq!(listens(me, port), Some(true));
        // Another process's listener is not ours: pid 1 holds no socket on this port.
        assert_eq!(listens(1, port), Some(false));
        drop(listener);
        assert_eq!(listens(me, port), Some(false));
        Ok(())
    }

    #[test]
    fn a_bind_failure_in_a_log_is_recognised() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("kube-controller-manager.log");
        std::fs::write(
            &log,
            "I0101 serving.go:386] Generated self-signed cert\nE0101 run.go:72] \"command failed\" err=\"failed to create listener: failed to listen on 127.0.0.1:41000: listen tcp 127.0.0.1:41000: bind: address already in use\"\n",
        )?;
        assert!(says_port_taken(&log));
        std::fs::write(&log, "E0101 run.go:72] \"command failed\" err=\"boom\"\n")?;
        assert!(!says_port_taken(&log));
        assert!(!says_port_taken(&dir.path().join("missing.log")));
        Ok(())
    }
}
