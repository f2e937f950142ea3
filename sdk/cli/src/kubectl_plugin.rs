//! The operator binary as a kubectl plugin.
//!
//! Installed (copied or linked) on the `PATH` as `kubectl-<kind in lower case>` —
//! `kubectl-webservice` for the WebService operator — the same binary is what `kubectl
//! webservice …` runs: kubectl finds it by that name and starts it with the words after the
//! plugin's name (`kubectl webservice explain web -n apps` runs `kubectl-webservice explain web
//! -n apps`). Every command works as it does under the binary's own name (`explain`, `diff`,
//! `render`, `rbac`, `rollout`, …); its help reads `kubectl webservice …`, and `run` and `dev`,
//! which are no kubectl habits, are left out of it. Like kubectl, it talks to the cluster of
//! `KUBECONFIG` (or `~/.kube/config`) in its current context, and the context's namespace is
//! the default of `-n`.
//!
//! ```
//! use std::ffi::OsStr;
//! use cuebe_cli::kubectl_plugin::invoked_as;
//! assert_eq!(invoked_as("WebService", OsStr::new("/usr/local/bin/kubectl-webservice")),
//!            Some("kubectl webservice".to_string()));
//! assert_eq!(invoked_as("WebService", OsStr::new("webservice-operator")), None);
//! ```
use std::ffi::OsStr;
use std::path::Path;

/// The file name the binary of `kind`'s operator is installed under to be a kubectl plugin:
/// `kubectl-` and the kind in lower case.
///
/// ```
/// assert_eq!(cuebe_cli::kubectl_plugin::plugin_file_name("WebService"), "kubectl-webservice");
/// ```
pub fn plugin_file_name(kind: &str) -> String {
    format!("kubectl-{}", kind.to_ascii_lowercase())
}

/// How the user typed the plugin (`kubectl webservice`) when `program` — the process's first
/// argument, the path kubectl started — is `kind`'s plugin file name (with or without `.exe`);
/// `None` otherwise.
pub fn invoked_as(kind: &str, program: &OsStr) -> Option<String> {
    let path = Path::new(program);
    let name = match path.extension() {
        Some(ext) if ext.eq_ignore_ascii_case("exe") => path.file_stem()?,
        _ => path.file_name()?,
    };
    let name = name.to_str()?;
    name.eq_ignore_ascii_case(&plugin_file_name(kind))
        .then(|| format!("kubectl {}", kind.to_ascii_lowercase()))
}

/// The command line as the plugin `typed` (`kubectl webservice`): usage and help name it so,
/// and `run` and `dev` are hidden (they still parse, for scripts that use them).
pub(crate) fn as_plugin(command: clap::Command, typed: &str, kind: &str) -> clap::Command {
    let mut command = command
        .bin_name(typed.to_string())
        .display_name(typed.to_string())
        .about(format!(
            "kubectl plugin for {kind}: explain an instance, diff or render a manifest, plan a \
             rollout (the cluster of KUBECONFIG in its current context and namespace)"
        ));
    for hidden in ["run", "dev"] {
        if command.find_subcommand(hidden).is_some() {
            command = command.mut_subcommand(hidden, |c| c.hide(true));
        }
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_is_recognised_by_its_file_name_only() {
        let cases = [
            (
                "WebService",
                "/usr/local/bin/kubectl-webservice",
                Some("kubectl webservice"),
            ),
            (
                "WebService",
                "kubectl-webservice",
                Some("kubectl webservice"),
            ),
            (
                "WebService",
                "C:/bin/kubectl-webservice.exe",
                Some("kubectl webservice"),
            ),
            (
                "WebService",
                "/home/me/.krew/bin/kubectl-WebService",
                Some("kubectl webservice"),
            ),
            ("Worker", "/tmp/x/kubectl-worker", Some("kubectl worker")),
            ("WebService", "/usr/local/bin/webservice-operator", None),
            ("WebService", "/usr/local/bin/kubectl-worker", None),
            ("WebService", "/usr/local/bin/kubectl-webservices", None),
            ("WebService", "/usr/local/bin/kubectl", None),
            ("WebService", "", None),
        ];
        for (kind, program, expected) in cases {
            assert_eq!(
                invoked_as(kind, OsStr::new(program)).as_deref(),
                expected,
                "{kind} started as {program:?}"
            );
        }
    }

    #[test]
    fn as_a_plugin_the_help_names_kubectl_and_hides_run_and_dev() {
        let command = clap::Command::new("webservice-operator")
            .subcommand(clap::Command::new("run"))
            .subcommand(clap::Command::new("dev"))
            .subcommand(clap::Command::new("explain"));
        let mut plugin = as_plugin(command, "kubectl webservice", "WebService");
        let help = plugin.render_help().to_string();
        assert!(help.contains("Usage: kubectl webservice"), "{help}");
        let listed = |name: &str| help.lines().any(|l| l.trim_start().starts_with(name));
        assert!(
            listed("explain") && !listed("run") && !listed("dev"),
            "{help}"
        );
        // Hidden, not removed.
        assert!(
            plugin
                .try_get_matches_from(["kubectl-webservice", "run"])
                .is_ok()
        );
    }
}
