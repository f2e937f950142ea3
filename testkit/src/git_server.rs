//! Git repositories served on this machine, for platform modules named by `platformRef.git`:
//! a bare repository in a temporary directory (`git+file://`), and `git daemon` serving it on
//! 127.0.0.1 (`git://`). The repositories are made and changed with the real `git` CLI.
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
        git(&work, &["add", "--all"])?;
        git(
            &work,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        )?;
        git(
            &work,
            &[
                "push",
                "--quiet",
                "--force",
                "origin",
                &format!("HEAD:refs/heads/{branch}"),
            ],
        )?;
        self.rev_parse("HEAD")
    }

    /// Tags `commit` as `name` (an annotated tag when `annotated`) and pushes the tag.
    pub fn tag(&self, name: &str, commit: &str, annotated: bool) -> Result<(), GitServerError> {
        let work = self.work();
        if annotated {
            git(&work, &["tag", "--force", "-a", "-m", name, name, commit])?;
        } else {
            git(&work, &["tag", "--force", name, commit])?;
        }
        git(
            &work,
            &[
                "push",
                "--quiet",
                "--force",
                "origin",
                &format!("refs/tags/{name}"),
            ],
        )
        .map(|_| ())
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

/// Runs `git` in `dir` without the user's or the system's configuration (a fixed identity, no
/// signing, no hooks from elsewhere); returns its stdout.
fn git(dir: &Path, args: &[&str]) -> Result<String, GitServerError> {
    let failed = |message: String| GitServerError::Git {
        command: args.join(" "),
        message,
    };
    let out = Command::new("git")
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
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(failed(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
