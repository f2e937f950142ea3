//! The real `helm` command, built from its Go module at a pinned version into the testkit's
//! cache (`~/.cache/cuebe/helm-VERSION/helm`) the first time it is needed: a few minutes on two
//! cores with a cold Go module cache, instant after that.
//!
//! [`Helm`] runs it with its own configuration, cache and data directories (under the same
//! cache), so a test never reads or writes the user's Helm repositories or plugins.
//!
//! ```no_run
//! # fn f() -> Result<(), cuebe_testkit::helm::HelmError> {
//! use cuebe_testkit::helm::Helm;
//! let helm = Helm::install()?;
//! helm.lint("webservice-operator/chart".as_ref(), &[])?;
//! let manifests = helm.template(
//!     "webservice-operator/chart".as_ref(),
//!     "webservice-operator",
//!     "cuebe-system",
//!     &["--set", "webhook.enabled=true"],
//! )?;
//! assert!(manifests.contains("kind: ValidatingWebhookConfiguration"));
//! # Ok(()) }
//! ```
use std::path::{Path, PathBuf};
use std::process::Command;

/// The helm.sh/helm version built (Helm 4; charts of `apiVersion: v2` work with Helm 3 too).
pub const HELM_VERSION: &str = "v4.3.2";

/// Why helm could not be built or what it refused.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// `go install helm.sh/helm/v4/cmd/helm@HELM_VERSION` failed (the message says why).
    #[error("installing helm {HELM_VERSION}: {0}")]
    Install(String),
    /// `helm` could not be started.
    #[error("cannot run {helm}: {source}")]
    Run {
        /// The binary.
        helm: String,
        /// The error.
        source: std::io::Error,
    },
    /// `helm` ran and exited non-zero.
    #[error("helm {args} exited with {status}: {stderr}{stdout}")]
    Failed {
        /// The arguments, joined.
        args: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
        /// What it printed on stdout (`helm lint` reports there).
        stdout: String,
    },
}

/// Path to `helm` [`HELM_VERSION`], building it on first use.
pub fn helm_binary() -> Result<PathBuf, HelmError> {
    crate::go_install::go_install(
        "helm.sh/helm/v4/cmd/helm",
        HELM_VERSION,
        &format!("helm-{HELM_VERSION}"),
        "helm",
    )
    .map_err(HelmError::Install)
}

/// The pinned `helm`, with configuration, cache and data of its own.
#[derive(Debug, Clone)]
pub struct Helm {
    binary: PathBuf,
    home: PathBuf,
}

impl Helm {
    /// Builds helm if needed ([`helm_binary`]).
    pub fn install() -> Result<Self, HelmError> {
        let binary = helm_binary()?;
        let home = crate::cue_cli::cache_dir().join(format!("helm-{HELM_VERSION}-home"));
        Ok(Self { binary, home })
    }

    /// The binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// A `helm` command with `HELM_CONFIG_HOME`, `HELM_CACHE_HOME` and `HELM_DATA_HOME` set to
    /// the testkit's own directories.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_DATA_HOME", self.home.join("data"));
        command
    }

    /// Runs `helm ARGS`: what it printed on stdout, or [`HelmError::Failed`] with its output.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String, HelmError> {
        let out = self
            .command()
            .args(args)
            .output()
            .map_err(|source| HelmError::Run {
                helm: self.binary.display().to_string(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(HelmError::Failed {
                args: args
                    .iter()
                    .map(|a| a.as_ref().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                stdout,
            });
        }
        Ok(stdout)
    }

    /// `helm lint --strict CHART EXTRA…`: its report.
    pub fn lint(&self, chart: &Path, extra: &[&str]) -> Result<String, HelmError> {
        let mut args = vec![
            "lint".into(),
            "--strict".into(),
            chart.as_os_str().to_owned(),
        ];
        args.extend(extra.iter().map(Into::into));
        self.run(&args)
    }

    /// `helm template RELEASE CHART --namespace NAMESPACE EXTRA…`: the rendered manifests.
    pub fn template(
        &self,
        chart: &Path,
        release: &str,
        namespace: &str,
        extra: &[&str],
    ) -> Result<String, HelmError> {
        let mut args = vec![
            "template".into(),
            release.into(),
            chart.as_os_str().to_owned(),
            "--namespace".into(),
            namespace.into(),
        ];
        args.extend(extra.iter().map(Into::into));
        self.run::<std::ffi::OsString>(&args)
    }
}
