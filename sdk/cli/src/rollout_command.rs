//! The `rollout` subcommands: their flags, reading their input and their exit codes. What they
//! compute is [`crate::rollout`]'s.
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kube::ResourceExt as _;

use cuebe::abstraction::Abstraction;
use cuebe::module::PlatformRef;
use cuebe::renderer::{Capabilities, CueRenderer};
use cuebe::rollout::PlatformChannel;

use crate::exit::Exit;
use crate::published::ChooseError;
use crate::render::{self, RenderFailure};
use crate::rollout::{self, Control, Module};

/// `rollout` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum RolloutCommand {
    /// Preview a candidate module on a channel's instances before anyone publishes it to the
    /// channel: which instances would change, which would fail and why (a render error or the
    /// first blocking policy violation), and the objects each would create, update or prune,
    /// counted per kind. Writes nothing.
    ///
    /// Offline with a channel manifest (`--channel FILE`) and instance manifests (`-f`); with
    /// `--channel NAME` the channel and its instances are read from the cluster (`-f` plans
    /// those manifests instead). Each instance is rendered with the module it is on now (the
    /// channel's status, else its `spec.module`) and with the candidate. An instance that names
    /// no module is planned as if it followed the channel; one that pins a module or another
    /// channel is listed and left out.
    ///
    /// Exit codes: 0 no instance would fail; 3 the candidate's policy refuses an instance, or
    /// the module policy refuses the candidate; 4 the candidate does not render an instance,
    /// or cannot be fetched; 2 bad input (a manifest, the channel, `--module`).
    Plan {
        /// The channel: a PlatformChannel manifest (YAML or JSON, e.g. `kubectl get
        /// platformchannel stable -o yaml`), or the name of one in the cluster.
        #[arg(long, value_name = "FILE|NAME")]
        channel: String,
        /// The candidate module: `embedded:VERSION`, `oci://REGISTRY/REPO@sha256:…`, or
        /// `git+https://HOST/REPO?ref=REF&dir=PATH` (and the other git forms `render --module`
        /// takes).
        #[arg(long, value_name = "REF")]
        module: String,
        /// Instance manifests (YAML or JSON, several documents per file allowed; `-` reads
        /// standard input).
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Cluster capabilities to assume, comma-separated (e.g. gateway-api, ack-iam);
        /// default: none offline, the cluster's own with `--channel NAME`.
        #[arg(long, value_delimiter = ',')]
        capabilities: Option<Vec<String>>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
        /// Verify published modules (the candidate and the channel's) against this policy
        /// file, as `run --module-policy` does.
        #[arg(long, value_name = "FILE")]
        module_policy: Option<PathBuf>,
        /// Serve published modules from the OCI image layouts under DIR before asking any
        /// registry, as `run --vendored-modules` does.
        #[arg(long, value_name = "DIR")]
        vendored_modules: Option<PathBuf>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Hold a channel's rollout at its step (`spec.paused: true`); prints its phase after.
    Pause(ControlArgs),
    /// Let a paused rollout go on (`spec.paused: false`); prints its phase after.
    Resume(ControlArgs),
    /// Roll a channel's rollout back (`spec.undo: true`): every moved instance returns to the
    /// previous module. Set `spec.undo: false` with the next `spec.module`. Prints the phase
    /// after.
    Undo(ControlArgs),
    /// Print a channel's status: module, phase, step, updated/total, ready, failed, the
    /// rollout's preview and problems, and its history.
    Status {
        /// The channel's name.
        name: String,
        /// Output format (`json`: the status object).
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// Text for people, JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Text.
    Text,
    /// JSON.
    Json,
}

/// Which cluster.
#[derive(Args, Debug)]
pub(crate) struct ClusterArgs {
    /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, or the in-cluster account).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

/// The flags of pause, resume and undo.
#[derive(Args, Debug)]
pub(crate) struct ControlArgs {
    /// The channel's name.
    name: String,
    /// How long to wait for the operator to act on the change before printing the phase
    /// (`0s`: print it at once).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    wait: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

impl RolloutCommand {
    pub(crate) fn run<A: Abstraction>(self) -> ExitCode {
        match self {
            Self::Plan {
                channel,
                module,
                files,
                capabilities,
                output,
                module_policy,
                vendored_modules,
                cluster,
            } => {
                let options = PlanOptions {
                    channel,
                    module,
                    files,
                    capabilities,
                    module_policy,
                    vendored_modules,
                    kubeconfig: cluster.kubeconfig,
                };
                match plan::<A>(options) {
                    Ok(report) => {
                        let mut stdout = std::io::stdout().lock();
                        let _ = match output {
                            Output::Text => write!(stdout, "{}", report.to_text()),
                            Output::Json => writeln!(
                                stdout,
                                "{}",
                                serde_json::to_string_pretty(&report).unwrap_or_default()
                            ),
                        };
                        let exit = report.exit();
                        if exit != Exit::Success {
                            eprintln!(
                                "error: {} of {} instances would fail with {}; a rollout would halt in its preview",
                                report.failed, report.instances, report.candidate
                            );
                        }
                        exit.into()
                    }
                    Err((exit, message)) => {
                        eprintln!("error: {message}");
                        exit.into()
                    }
                }
            }
            Self::Pause(args) => control(args, Control::Pause),
            Self::Resume(args) => control(args, Control::Resume),
            Self::Undo(args) => control(args, Control::Undo),
            Self::Status {
                name,
                output,
                cluster,
            } => status(&name, output, cluster.kubeconfig.as_deref()),
        }
    }
}

type Failed = (Exit, String);

struct PlanOptions {
    channel: String,
    module: String,
    files: Vec<PathBuf>,
    capabilities: Option<Vec<String>>,
    module_policy: Option<PathBuf>,
    vendored_modules: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
}

fn bad(message: impl Into<String>) -> Failed {
    (Exit::BadInput, message.into())
}

fn plan<A: Abstraction>(options: PlanOptions) -> Result<rollout::RolloutPlan, Failed> {
    let candidate = rollout::parse_module_ref(&options.module).map_err(bad)?;
    let policy = options
        .module_policy
        .as_deref()
        .map(crate::cli::read_module_policy)
        .transpose()
        .map_err(bad)?;
    let known: Vec<&str> = A::capability_probes().iter().map(|p| p.name).collect();
    if let Some(unknown) = options
        .capabilities
        .iter()
        .flatten()
        .find(|c| !c.is_empty() && !known.contains(&c.as_str()))
    {
        return Err(bad(format!(
            "--capabilities: unknown capability {unknown:?} (known: {})",
            known.join(", ")
        )));
    }
    let mut instances = Vec::new();
    for file in &options.files {
        instances.extend(read_instances::<A>(file)?);
    }
    let from_file = options.channel == "-"
        || Path::new(&options.channel).exists()
        || options.channel.contains('/')
        || [".yaml", ".yml", ".json"]
            .iter()
            .any(|e| options.channel.ends_with(e));
    let Some(runtime) = crate::cli::runtime() else {
        return Err((Exit::Failed, "cannot start the async runtime".into()));
    };
    let (channel, capabilities) = if from_file {
        if options.files.is_empty() {
            return Err(bad(
                "rollout plan: give the instances to plan with -f (or --channel NAME to read them from the cluster)",
            ));
        }
        let channel = read_channel(Path::new(&options.channel))?;
        let capabilities = Capabilities::from_names(options.capabilities.iter().flatten());
        (channel, capabilities)
    } else {
        runtime.block_on(async {
            let client = client(options.kubeconfig.as_deref())
                .await
                .map_err(|e| (Exit::Failed, e))?;
            let api: kube::Api<PlatformChannel> = kube::Api::all(client.clone());
            let channel = api
                .get_opt(&options.channel)
                .await
                .map_err(|e| (Exit::Failed, reading(&options.channel, &e)))?
                .ok_or_else(|| {
                    (
                        Exit::Failed,
                        format!("no PlatformChannel {:?} in the cluster", options.channel),
                    )
                })?;
            if options.files.is_empty() {
                let all: kube::Api<A> = kube::Api::all(client.clone());
                let listed = all
                    .list(&Default::default())
                    .await
                    .map_err(|e| (Exit::Failed, format!("listing the {}s: {e}", A::kind(&()))))?;
                instances = listed
                    .items
                    .into_iter()
                    .filter(|o| {
                        o.platform_ref().and_then(|r| r.channel).as_deref()
                            == Some(options.channel.as_str())
                    })
                    .map(|o| ("cluster".to_string(), o))
                    .collect();
            }
            let capabilities = match &options.capabilities {
                Some(names) => Capabilities::from_names(names),
                None => cuebe::abstraction::discover_capabilities(&client, &A::capability_probes())
                    .await
                    .map_err(|e| {
                        (
                            Exit::Failed,
                            format!("discovering the cluster's capabilities: {e}"),
                        )
                    })?,
            };
            Ok::<_, Failed>((channel, capabilities))
        })?
    };
    if !channel.serves::<A>() {
        let serves = &channel.spec.channel.abstraction;
        return Err(bad(format!(
            "--channel {}: spec.abstraction: the channel serves {}.{}, not {}.{}",
            options.channel,
            serves.kind,
            serves.group,
            A::kind(&()),
            A::group(&())
        )));
    }
    channel
        .spec
        .channel
        .strategy
        .parse()
        .map_err(|e| bad(format!("--channel {}: {e}", options.channel)))?;

    let vendored = options.vendored_modules.as_deref();
    let candidate = runtime
        .block_on(load::<A>(&candidate, policy.as_ref(), vendored))
        .map_err(|e| (e.exit(), format!("--module: {e}")))?;
    eprintln!("candidate: {}", candidate.described);
    let name = channel.name_any();
    let mut current = BTreeMap::new();
    for (_, object) in &instances {
        if rollout::pinned_elsewhere(&name, object).is_err() {
            continue;
        }
        let namespace = object.namespace().unwrap_or_else(|| "default".into());
        let now = rollout::current_ref(&channel, &namespace, &object.name_any());
        current.entry(now.to_string()).or_insert_with(|| {
            runtime
                .block_on(load::<A>(&now, policy.as_ref(), vendored))
                .map_err(|e| e.to_string())
        });
    }
    drop(runtime);
    let renderer = CueRenderer::new(A::modules());
    Ok(rollout::plan(
        &renderer,
        &channel,
        &instances,
        &candidate,
        &current,
        &capabilities,
    ))
}

/// A module by reference: an embedded version of this binary, or a published module fetched
/// and checked as `render --module` does.
async fn load<A: Abstraction>(
    reference: &PlatformRef,
    policy: Option<&cuebe::trust::ModulePolicy>,
    vendored: Option<&Path>,
) -> Result<Module, ChooseError> {
    if reference.embedded.is_some() {
        return A::modules()
            .resolve(Some(reference))
            .map(|_| Module {
                reference: reference.clone(),
                source: None,
                described: format!("{reference} (embedded in this binary)"),
            })
            .map_err(|e| {
                ChooseError::BadReference(format!(
                    "{reference} is not embedded in this binary (embedded versions: {})",
                    e.available.join(", ")
                ))
            });
    }
    let chosen =
        crate::published::fetch_reference::<A>(&reference.to_string(), policy, vendored).await?;
    Ok(Module {
        reference: reference.clone(),
        source: Some(chosen.module),
        described: chosen.described,
    })
}

fn read_channel(path: &Path) -> Result<PlatformChannel, Failed> {
    let file = path.display().to_string();
    let text = crate::cli::read(path).map_err(bad)?;
    let raw: serde_json::Value = render::parse_yaml(&file, &text).map_err(failed_input)?;
    let api_version = raw.get("apiVersion").and_then(|v| v.as_str());
    let kind = raw.get("kind").and_then(|v| v.as_str());
    if api_version != Some("cuebe.dev/v1alpha1") || kind != Some("PlatformChannel") {
        return Err(bad(format!(
            "{file}: expected apiVersion: cuebe.dev/v1alpha1 and kind: PlatformChannel, found {:?} {:?}",
            api_version.unwrap_or_default(),
            kind.unwrap_or_default()
        )));
    }
    let channel: PlatformChannel = render::parse_yaml(&file, &text).map_err(failed_input)?;
    if channel
        .metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return Err(bad(format!("{file}: metadata.name: required")));
    }
    Ok(channel)
}

fn failed_input(e: RenderFailure) -> Failed {
    bad(e.to_string())
}

/// The instances in one file: every YAML document (separated by `---`) is one.
fn read_instances<A: Abstraction>(path: &Path) -> Result<Vec<(String, A)>, Failed> {
    let file = path.display().to_string();
    let text = crate::cli::read(path).map_err(bad)?;
    let documents = split_documents(&text);
    let several = documents.len() > 1;
    let mut instances = Vec::new();
    for (i, document) in documents.into_iter().enumerate() {
        let name = if several {
            format!("{file} (document {})", i + 1)
        } else {
            file.clone()
        };
        let object: A = render::parse_instance(&name, &document).map_err(failed_input)?;
        if object.meta().name.as_deref().unwrap_or_default().is_empty() {
            return Err(bad(format!("{name}: metadata.name: required")));
        }
        instances.push((name, object));
    }
    if instances.is_empty() {
        return Err(bad(format!("{file}: no manifest in it")));
    }
    Ok(instances)
}

/// YAML documents, split on `---` lines; empty documents (comments only) are dropped.
fn split_documents(text: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            documents.push(String::new());
            continue;
        }
        if let Some(current) = documents.last_mut() {
            current.push_str(line);
            current.push('\n');
        }
    }
    documents
        .into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, String> {
    let Some(path) = kubeconfig else {
        return kube::Client::try_default()
            .await
            .map_err(|e| format!("no usable kubeconfig or in-cluster config: {e}"));
    };
    let at = path.display();
    let config =
        kube::config::Kubeconfig::read_from(path).map_err(|e| format!("--kubeconfig {at}: {e}"))?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(|e| format!("--kubeconfig {at}: {e}"))?;
    kube::Client::try_from(config).map_err(|e| format!("--kubeconfig {at}: {e}"))
}

/// A failed read of channel `name`, with what to do about a missing CRD.
fn reading(name: &str, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 404 => format!(
            "reading PlatformChannel {name:?}: the API server does not serve platformchannels.cuebe.dev (install the CRDs the operator's `crd` command prints)"
        ),
        e => format!("reading PlatformChannel {name:?}: {e}"),
    }
}

fn control(args: ControlArgs, control: Control) -> ExitCode {
    let wait = match cuebe::graph::parse_duration(&args.wait) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --wait {}: {e}", args.wait);
            return Exit::BadInput.into();
        }
    };
    let Some(runtime) = crate::cli::runtime() else {
        return Exit::Failed.into();
    };
    let name = args.name;
    let result = runtime.block_on(async {
        let client = client(args.cluster.kubeconfig.as_deref()).await?;
        let patched = match rollout::control(client.clone(), &name, control).await {
            Ok(c) => c,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let api: kube::Api<PlatformChannel> = kube::Api::all(client.clone());
                // Tell a missing channel from a missing CRD.
                return Err(match api.list(&Default::default()).await {
                    Ok(_) => format!("no PlatformChannel {name:?} in the cluster"),
                    Err(e) => reading(&name, &e),
                });
            }
            Err(e) => return Err(format!("patching PlatformChannel {name:?}: {e}")),
        };
        let generation = patched.metadata.generation;
        let api: kube::Api<PlatformChannel> = kube::Api::all(client);
        let deadline = Instant::now() + wait;
        let mut latest = patched;
        loop {
            let observed = latest.status.as_ref().and_then(|s| s.observed_generation);
            if observed >= generation || Instant::now() >= deadline {
                return Ok((latest, observed >= generation));
            }
            tokio::time::sleep(Duration::from_millis(250).min(wait)).await;
            latest = api
                .get(&name)
                .await
                .map_err(|e| format!("reading PlatformChannel {name:?}: {e}"))?;
        }
    });
    match result {
        Ok((channel, seen)) => {
            let set = match control {
                Control::Pause => "spec.paused: true",
                Control::Resume => "spec.paused: false",
                Control::Undo => "spec.undo: true",
            };
            let status = rollout::status_of(&channel);
            let phase = if status.phase.is_empty() {
                "(none yet)".to_string()
            } else {
                status.phase.clone()
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "platformchannel/{name}: {set}");
            if seen {
                let _ = writeln!(out, "phase: {phase}");
            } else {
                let _ = writeln!(
                    out,
                    "phase: {phase} (the operator has not acted on the change yet; `rollout status {name}` shows when it has)"
                );
            }
            if let Some(message) = status.rollout.as_ref().map(|r| &r.message)
                && seen
                && !message.is_empty()
            {
                let _ = writeln!(out, "  {message}");
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            Exit::Failed.into()
        }
    }
}

fn status(name: &str, output: Output, kubeconfig: Option<&Path>) -> ExitCode {
    let Some(runtime) = crate::cli::runtime() else {
        return Exit::Failed.into();
    };
    let result = runtime.block_on(async {
        let client = client(kubeconfig).await?;
        let api: kube::Api<PlatformChannel> = kube::Api::all(client);
        api.get_opt(name)
            .await
            .map_err(|e| reading(name, &e))?
            .ok_or_else(|| format!("no PlatformChannel {name:?} in the cluster"))
    });
    match result {
        Ok(channel) => {
            let mut out = std::io::stdout().lock();
            let _ = match output {
                Output::Text => write!(out, "{}", rollout::status_text(&channel)),
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&rollout::status_of(&channel)).unwrap_or_default()
                ),
            };
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            Exit::Failed.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_documents;

    #[test]
    fn documents_split_on_separator_lines_and_comment_only_ones_are_dropped() {
        let docs = split_documents("# a header\n---\na: 1\n---\n# only a comment\n--- \nb: 2\n");
        assert_eq!(docs, ["a: 1\n", "b: 2\n"]);
        assert_eq!(split_documents("a: 1\n"), ["a: 1\n"]);
    }
}
