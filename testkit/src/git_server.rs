//! Git repositories served on this machine, for platform modules named by `platformRef.git`:
//! a bare repository in a temporary directory (`git+file://`), `git daemon` serving it on
//! 127.0.0.1 (`git://`), and `git http-backend` behind a small HTTPS server on 127.0.0.1
//! (`git+https://`, TLS from a CA of the testkit's PKI: [`GitHttpsServer`]). The repositories
//! are made and changed with the real `git` CLI.
//!
//! Commits and tags can be signed with an SSH key ([`SshSigningKey`]): the signature is made in
//! Rust, exactly as `git commit -S` with `gpg.format=ssh` (which runs `ssh-keygen -Y sign -n
//! git`) would make it, so no `ssh-keygen` is needed; [`GitRepo::commit_module_signed_by_git`]
//! lets the real `git` and `ssh-keygen` sign instead, where they are installed.
//!
//! ```no_run
//! # fn f() -> Result<(), cuebe_testkit::git_server::GitServerError> {
//! use cuebe_testkit::git_server::{GitDaemon, GitRepo};
//! let repo = GitRepo::new("platform")?;
//! let commit = repo.commit_module("main", "cue/platform".as_ref(), "cue/platform", "v1")?;
//! let daemon = GitDaemon::start(&repo)?;
//! let reference = format!("{}?ref=main&dir=cue/platform", daemon.url());
//! assert!(reference.starts_with("git://127.0.0.1:"));
//! assert_eq!(commit.len(), 40);
//! # Ok(()) }
//! ```
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a repository could not be made or served.
#[derive(Debug, thiserror::Error)]
pub enum GitServerError {
    /// A `git` command failed (or `git` is not installed).
    #[error("git {command}: {message}")]
    Git {
        /// The command's arguments.
        command: String,
        /// Its stderr, or why it could not run.
        message: String,
    },
    /// A file could not be copied or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// `git daemon` did not start listening.
    #[error("git daemon: {0}")]
    Daemon(String),
    /// The HTTPS server could not start (certificates, port, runtime).
    #[error("git over https: {0}")]
    Https(String),
}

/// A bare repository (what is served) and a work tree that commits and pushes to it, both in
/// one temporary directory removed when this is dropped.
#[derive(Debug)]
pub struct GitRepo {
    dir: tempfile::TempDir,
    name: String,
}

impl GitRepo {
    /// An empty bare repository `<tmp>/<name>.git` and a work tree for it.
    ///
    /// ```no_run
    /// let repo = cuebe_testkit::git_server::GitRepo::new("platform").unwrap();
    /// assert!(repo.file_url().starts_with("git+file:///"));
    /// ```
    pub fn new(name: &str) -> Result<Self, GitServerError> {
        let dir = tempfile::tempdir().map_err(|source| GitServerError::Io {
            what: "creating a temporary directory".into(),
            source,
        })?;
        let repo = Self {
            dir,
            name: name.to_string(),
        };
        git(
            repo.dir.path(),
            &["init", "--bare", "--quiet", &format!("{name}.git")],
        )?;
        git(repo.dir.path(), &["init", "--quiet", "work"])?;
        git(
            &repo.work(),
            &[
                "remote",
                "add",
                "origin",
                &repo.path().display().to_string(),
            ],
        )?;
        Ok(repo)
    }

    /// The bare repository.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.git", self.name))
    }

    /// The directory holding the bare repository (what `git daemon` serves from).
    pub fn base(&self) -> &Path {
        self.dir.path()
    }

    /// `git+file:///…/<name>.git`, without `?ref=`.
    pub fn file_url(&self) -> String {
        format!("git+file://{}", self.path().display())
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Replaces `at` (a directory of the repository, e.g. `cue/platform`) on `branch` with a
    /// copy of `module_dir`, commits and pushes; returns the new commit (40 hex). The branch is
    /// created when it does not exist yet.
    ///
    /// ```no_run
    /// let repo = cuebe_testkit::git_server::GitRepo::new("platform").unwrap();
    /// let first = repo.commit_module("main", "cue/platform".as_ref(), "cue/platform", "first").unwrap();
    /// let second = repo.commit_module("main", "cue/platform".as_ref(), "cue/platform", "again").unwrap();
    /// assert_ne!(first, second);
    /// ```
    pub fn commit_module(
        &self,
        branch: &str,
        module_dir: &Path,
        at: &str,
        message: &str,
    ) -> Result<String, GitServerError> {
        self.stage_module(branch, module_dir, at)?;
        git(
            &self.work(),
            &["commit", "--quiet", "--allow-empty", "-m", message],
        )?;
        self.push(&format!("HEAD:refs/heads/{branch}"))?;
        self.rev_parse("HEAD")
    }

    /// Like [`commit_module`](Self::commit_module), with the commit signed by `key` as `git
    /// commit -S` with `gpg.format=ssh` signs it: an SSH signature (namespace `git`) of the
    /// commit object in its `gpgsig` header. The object is written with git's plumbing
    /// (`write-tree`, `hash-object`), the signature made in Rust.
    ///
    /// ```no_run
    /// use cuebe_testkit::git_server::{GitRepo, SshSigningKey};
    /// let repo = GitRepo::new("platform").unwrap();
    /// let key = SshSigningKey::generate("platform@acme.example");
    /// let commit = repo.commit_module_signed("main", "cue/platform".as_ref(), "cue/platform", "1.0.0", &key).unwrap();
    /// assert_eq!(commit.len(), 40);
    /// ```
    pub fn commit_module_signed(
        &self,
        branch: &str,
        module_dir: &Path,
        at: &str,
        message: &str,
        key: &SshSigningKey,
    ) -> Result<String, GitServerError> {
        self.stage_module(branch, module_dir, at)?;
        let work = self.work();
        let tree = git(&work, &["write-tree"])?.trim().to_string();
        let parent = git(&work, &["rev-parse", "--verify", "--quiet", "HEAD"])
            .map(|p| p.trim().to_string())
            .ok()
            .filter(|p| !p.is_empty());
        let who = format!("{IDENTITY} {} +0000", now_seconds());
        let mut object = format!("tree {tree}\n");
        if let Some(parent) = parent {
            object.push_str(&format!("parent {parent}\n"));
        }
        object.push_str(&format!("author {who}\ncommitter {who}\n\n{message}\n"));
        let signature = key.sign("git", object.as_bytes());
        // git's multi-line header: every line after the first starts with a space.
        let header = format!("gpgsig {}", signature.trim_end().replace('\n', "\n "));
        let signed = object.replacen("\n\n", &format!("\n{header}\n\n"), 1);
        let commit = git_with_input(
            &work,
            &["hash-object", "-t", "commit", "-w", "--stdin"],
            signed.as_bytes(),
        )?
        .trim()
        .to_string();
        git(
            &work,
            &["update-ref", &format!("refs/heads/{branch}"), &commit],
        )?;
        self.push(&format!("HEAD:refs/heads/{branch}"))?;
        Ok(commit)
    }

    /// Like [`commit_module_signed`](Self::commit_module_signed), signed by the real `git
    /// commit -S` (`-c gpg.format=ssh -c user.signingkey=…`), which runs `ssh-keygen -Y sign`:
    /// proves that what git itself writes is verified. Fails with [`GitServerError::Git`]
    /// where `ssh-keygen` is not installed.
    pub fn commit_module_signed_by_git(
        &self,
        branch: &str,
        module_dir: &Path,
        at: &str,
        message: &str,
        key: &SshSigningKey,
    ) -> Result<String, GitServerError> {
        self.stage_module(branch, module_dir, at)?;
        let work = self.work();
        let key_file = self
            .dir
            .path()
            .join(format!("signing-key-{}", key.fingerprint_hex()));
        key.write_private_key(&key_file)
            .map_err(|source| GitServerError::Io {
                what: format!("writing {}", key_file.display()),
                source,
            })?;
        git(
            &work,
            &[
                "-c",
                "gpg.format=ssh",
                "-c",
                &format!("user.signingkey={}", key_file.display()),
                "commit",
                "--quiet",
                "--allow-empty",
                "-S",
                "-m",
                message,
            ],
        )?;
        self.push(&format!("HEAD:refs/heads/{branch}"))?;
        self.rev_parse("HEAD")
    }

    /// Tags `commit` as `name` with an annotated tag signed by `key` (as `git tag -s` with
    /// `gpg.format=ssh` signs it: the SSH signature of the tag object appended to its message)
    /// and pushes the tag.
    pub fn tag_signed(
        &self,
        name: &str,
        commit: &str,
        key: &SshSigningKey,
    ) -> Result<(), GitServerError> {
        let work = self.work();
        let body = format!(
            "object {commit}\ntype commit\ntag {name}\ntagger {IDENTITY} {} +0000\n\n{name}\n",
            now_seconds()
        );
        let object = format!("{body}{}", key.sign("git", body.as_bytes()));
        let tag = git_with_input(
            &work,
            &["hash-object", "-t", "tag", "-w", "--stdin"],
            object.as_bytes(),
        )?
        .trim()
        .to_string();
        git(&work, &["update-ref", &format!("refs/tags/{name}"), &tag])?;
        self.push(&format!("refs/tags/{name}"))
    }

    /// Checks out `branch` (created when new) and replaces `at` with a copy of `module_dir`,
    /// staged.
    fn stage_module(
        &self,
        branch: &str,
        module_dir: &Path,
        at: &str,
    ) -> Result<(), GitServerError> {
        let work = self.work();
        git(&work, &["checkout", "--quiet", "-B", branch])?;
        let target = work.join(at);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|source| GitServerError::Io {
                what: format!("removing {}", target.display()),
                source,
            })?;
        }
        crate::oci_registry::copy_dir(module_dir, &target).map_err(|source| {
            GitServerError::Io {
                what: format!("copying {}", module_dir.display()),
                source,
            }
        })?;
        git(&work, &["add", "--all"]).map(|_| ())
    }

    /// Pushes `refspec` to the bare repository, forced.
    fn push(&self, refspec: &str) -> Result<(), GitServerError> {
        git(
            &self.work(),
            &["push", "--quiet", "--force", "origin", refspec],
        )
        .map(|_| ())
    }

    /// Tags `commit` as `name` (an annotated tag when `annotated`) and pushes the tag.
    pub fn tag(&self, name: &str, commit: &str, annotated: bool) -> Result<(), GitServerError> {
        let work = self.work();
        if annotated {
            git(&work, &["tag", "--force", "-a", "-m", name, name, commit])?;
        } else {
            git(&work, &["tag", "--force", name, commit])?;
        }
        self.push(&format!("refs/tags/{name}"))
    }

    /// The commit `rev` names in the work tree.
    pub fn rev_parse(&self, rev: &str) -> Result<String, GitServerError> {
        git(&self.work(), &["rev-parse", &format!("{rev}^{{commit}}")])
            .map(|out| out.trim().to_string())
    }
}

/// `git daemon` serving one [`GitRepo`] on 127.0.0.1 (read-only, anonymous); killed when
/// dropped.
#[derive(Debug)]
pub struct GitDaemon {
    child: Option<Child>,
    port: u16,
    name: String,
}

impl GitDaemon {
    /// Starts `git daemon` on a free loopback port and waits until it accepts connections.
    ///
    /// ```no_run
    /// use cuebe_testkit::git_server::{GitDaemon, GitRepo};
    /// let repo = GitRepo::new("platform").unwrap();
    /// let daemon = GitDaemon::start(&repo).unwrap();
    /// assert_eq!(daemon.url(), format!("git://127.0.0.1:{}/platform.git", daemon.port()));
    /// ```
    pub fn start(repo: &GitRepo) -> Result<Self, GitServerError> {
        Self::start_on(repo, None)
    }

    /// Starts it again on the port a stopped daemon had (`port`), or on a free one.
    pub fn start_on(repo: &GitRepo, port: Option<u16>) -> Result<Self, GitServerError> {
        let port = match port {
            Some(port) => port,
            None => crate::cluster::free_port().map_err(|source| GitServerError::Io {
                what: "picking a port".into(),
                source,
            })?,
        };
        let base = repo.base().display().to_string();
        let mut child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={base}"),
                "--export-all",
                "--informative-errors",
                &base,
            ])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // `git daemon` runs `git-daemon` as a child, which forks once per connection: a
            // group of its own lets `stop` end all of them, not only the first.
            .process_group(0)
            .spawn()
            .map_err(|e| GitServerError::Daemon(format!("cannot run git daemon: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(exit)) = child.try_wait() {
                return Err(GitServerError::Daemon(format!(
                    "exited with {exit} (port {port} taken?)"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(GitServerError::Daemon(format!(
                    "not listening on 127.0.0.1:{port} after 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child: Some(child),
            port,
            name: repo.name.clone(),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `git://127.0.0.1:PORT/<name>.git`, without `?ref=`.
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/{}.git", self.port, self.name)
    }

    /// Stops the daemon and every connection it serves; the repository stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(group) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) with the negated id of the process group spawned above (it
                // leads its own group, and is not reaped yet, so the id is still its own), which
                // holds only the daemon and its children.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(-group, libc::SIGKILL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An SSH signing key for commits and tags, as a platform team keeps one: Ed25519, made in Rust.
///
/// ```
/// use cuebe_testkit::git_server::SshSigningKey;
/// let key = SshSigningKey::generate("platform@acme.example");
/// // A line for the module policy's `allowedSigners`.
/// assert!(key.allowed_signer().starts_with("platform@acme.example namespaces=\"git\" ssh-ed25519 AAAA"));
/// assert!(key.fingerprint().starts_with("SHA256:"));
/// ```
#[derive(Debug, Clone)]
pub struct SshSigningKey {
    key: ssh_key::PrivateKey,
    principal: String,
}

impl SshSigningKey {
    /// A new Ed25519 key for `principal` (e.g. an email address).
    pub fn generate(principal: &str) -> Self {
        let key = ssh_key::PrivateKey::random(
            &mut ssh_key::rand_core::OsRng,
            ssh_key::Algorithm::Ed25519,
        )
        .unwrap_or_else(|e| panic!("generating an Ed25519 key cannot fail: {e}"));
        Self {
            key,
            principal: principal.to_string(),
        }
    }

    /// The public key as a `.pub` file holds it: `ssh-ed25519 AAAA… PRINCIPAL`.
    pub fn public_key(&self) -> String {
        let mut public = self.key.public_key().clone();
        public.set_comment(&self.principal);
        public.to_openssh().unwrap_or_default()
    }

    /// `PRINCIPAL namespaces="git" ssh-ed25519 AAAA…`: a line of an `allowed_signers` file, and
    /// of a policy rule's `allowedSigners`.
    pub fn allowed_signer(&self) -> String {
        format!(
            "{} namespaces=\"git\" {}",
            self.principal,
            self.public_key()
        )
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it and the status names the signer.
    pub fn fingerprint(&self) -> String {
        self.key
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string()
    }

    fn fingerprint_hex(&self) -> String {
        hex::encode(
            self.key
                .public_key()
                .fingerprint(ssh_key::HashAlg::Sha256)
                .as_bytes(),
        )
    }

    /// The armored SSH signature of `data` in `namespace` (`git` for commits and tags), as
    /// `ssh-keygen -Y sign -n NAMESPACE` writes it (SHA-512, as git asks for).
    pub fn sign(&self, namespace: &str, data: &[u8]) -> String {
        ssh_key::SshSig::sign(&self.key, namespace, ssh_key::HashAlg::Sha512, data)
            .and_then(|sig| sig.to_pem(ssh_key::LineEnding::LF))
            .unwrap_or_else(|e| panic!("signing with an Ed25519 key cannot fail: {e}"))
    }

    /// Writes the private key in OpenSSH's format, readable by its owner only (as `ssh-keygen`
    /// requires), for `git -c user.signingkey=PATH`.
    pub fn write_private_key(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let text = self
            .key
            .to_openssh(ssh_key::LineEnding::LF)
            .map_err(std::io::Error::other)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(text.as_bytes())
    }
}

/// `git http-backend` (the real git's smart HTTP server, as a CGI program) behind an HTTPS
/// server on 127.0.0.1, serving one [`GitRepo`] read-only and anonymously. Its certificate is
/// issued by a fresh CA of the testkit's PKI ([`crate::cluster::Pki`]): a client trusts it only
/// when given [`ca_pem`](Self::ca_pem). Stopped when dropped.
///
/// ```no_run
/// use cuebe_testkit::git_server::{GitHttpsServer, GitRepo};
/// let repo = GitRepo::new("platform").unwrap();
/// let server = GitHttpsServer::start(&repo).unwrap();
/// assert!(server.url().starts_with("git+https://127.0.0.1:"));
/// // What a client must trust: `ModuleFetcher::with_ca_certificates(server.ca_pem().as_bytes())`,
/// // or `run --module-ca-file` with `server.ca_file()`.
/// assert!(server.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// ```
#[derive(Debug)]
pub struct GitHttpsServer {
    port: u16,
    name: String,
    ca_pem: String,
    ca_file: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _pki: tempfile::TempDir,
}

impl GitHttpsServer {
    /// Starts it on a port the kernel picks, with its own thread and runtime (so it serves
    /// whatever runtime the test uses, and outlives none).
    pub fn start(repo: &GitRepo) -> Result<Self, GitServerError> {
        let https = |message: String| GitServerError::Https(message);
        let pki_dir = tempfile::tempdir().map_err(|source| GitServerError::Io {
            what: "creating a temporary directory".into(),
            source,
        })?;
        let pki = crate::cluster::Pki::generate(pki_dir.path())
            .map_err(|e| https(format!("generating certificates: {e}")))?;
        let tls = server_config(&pki.serving_cert, &pki.serving_key).map_err(https)?;
        let ca_pem =
            std::fs::read_to_string(&pki.ca_cert).map_err(|source| GitServerError::Io {
                what: format!("reading {}", pki.ca_cert.display()),
                source,
            })?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| https(format!("binding 127.0.0.1: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| https(e.to_string()))?
            .port();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| https(format!("a runtime for the server: {e}")))?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let root = repo.base().to_path_buf();
        let thread = std::thread::Builder::new()
            .name("git-https".into())
            .spawn(move || runtime.block_on(serve_git_https(listener, tls, root, stopped)))
            .map_err(|e| https(format!("a thread for the server: {e}")))?;
        Ok(Self {
            port,
            name: repo.name.clone(),
            ca_pem,
            ca_file: pki.ca_cert,
            stop: Some(stop),
            thread: Some(thread),
            _pki: pki_dir,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `git+https://127.0.0.1:PORT/<name>.git`, without `?ref=`.
    pub fn url(&self) -> String {
        format!("git+https://127.0.0.1:{}/{}.git", self.port, self.name)
    }

    /// The PEM of the CA that issued the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The same CA as a file (e.g. for an operator's `--module-ca-file`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Stops serving (connections in progress are dropped); the repository stays.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GitHttpsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// rustls' server side for one certificate chain and key (PEM files).
fn server_config(cert: &Path, key: &Path) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("reading {}: {e}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("reading {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

async fn serve_git_https(
    listener: std::net::TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    root: PathBuf,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (acceptor, root) = (acceptor.clone(), root.clone());
        tokio::spawn(async move {
            // A client that does not trust the CA ends the handshake: nothing to serve.
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service =
                hyper::service::service_fn(move |request| http_backend(root.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One request through `git http-backend` as CGI: the request's method, path, query and
/// headers in its environment, the body on its stdin; its `Status:` and headers, then the body,
/// become the response.
async fn http_backend(
    root: PathBuf,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::{BodyExt, Full};
    use tokio::io::AsyncWriteExt as _;
    let answer = |status: http::StatusCode, message: String| {
        let mut response = hyper::Response::new(Full::new(bytes::Bytes::from(message)));
        *response.status_mut() = status;
        Ok(response)
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return answer(
            http::StatusCode::BAD_REQUEST,
            "could not read the request".into(),
        );
    };
    let header = |name: http::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header(http::header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header(http::header::CONTENT_ENCODING),
        )
        .env(
            "GIT_PROTOCOL",
            header(http::HeaderName::from_static("git-protocol")),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return answer(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot run git http-backend: {e}"),
            );
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // Written while the output is read, so that neither pipe fills up and stalls the other.
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
    }
    let Ok(out) = child.wait_with_output().await else {
        return answer(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend failed".into(),
        );
    };
    let text = out.stdout;
    let (head, body) = match find(&text, b"\r\n\r\n") {
        Some(at) => (&text[..at], &text[at + 4..]),
        None => match find(&text, b"\n\n") {
            Some(at) => (&text[..at], &text[at + 2..]),
            None => (&text[..0], &text[..]),
        },
    };
    let mut response = hyper::Response::new(Full::new(bytes::Bytes::copy_from_slice(body)));
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().and_then(|c| c.parse::<u16>().ok());
            if let Some(status) = code.and_then(|c| http::StatusCode::from_u16(c).ok()) {
                *response.status_mut() = status;
            }
        } else if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The author, committer and tagger of everything the testkit commits.
const IDENTITY: &str = "cuebe testkit <testkit@cuebe.invalid>";

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `git` in `dir` without the user's or the system's configuration (a fixed identity, no
/// signing, no hooks from elsewhere); returns its stdout.
fn git(dir: &Path, args: &[&str]) -> Result<String, GitServerError> {
    git_with_input(dir, args, &[])
}

/// [`git`] with `input` on its standard input.
fn git_with_input(dir: &Path, args: &[&str], input: &[u8]) -> Result<String, GitServerError> {
    use std::io::Write as _;
    let failed = |message: String| GitServerError::Git {
        command: args.join(" "),
        message,
    };
    let mut child = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=cuebe testkit",
            "-c",
            "user.email=testkit@cuebe.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run git: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Small inputs (an object of a few hundred bytes): written whole before reading.
        stdin
            .write_all(input)
            .map_err(|e| failed(format!("writing to git: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(failed(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
