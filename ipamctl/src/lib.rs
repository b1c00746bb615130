//! `ipamctl`: the operator CLI.
//!
//! The command line is parsed by [`Cli`]; [`run`] executes it against any [`Datastore`] and
//! writes to the writer it is given, so every command is testable without a process. The
//! binary (`src/main.rs`) only opens the datastore and maps the outcome to an exit
//! status: 0 for success (and a clean `check`), 1 when `check` finds something or a release
//! was refused, 2 for errors.

pub mod check;
pub mod config;
pub mod crds;
pub mod gc;
pub mod install;
pub mod output;
pub mod pool;
pub mod release;
pub mod serve;
pub mod show;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ipam_core::{Datastore, Ipam};

pub use self::output::Format;

/// Exit status of a successful command, or of a clean `check`.
pub const EXIT_OK: u8 = 0;
/// Exit status when `check` found inconsistencies or a release was refused.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit status for errors (bad arguments, unreachable datastore, ...).
pub const EXIT_ERROR: u8 = 2;

/// What an `ipamctl` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The allocator refused or failed the operation.
    #[error(transparent)]
    Ipam(#[from] ipam_core::Error),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] ipam_core::StoreError),
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was tried (`read`, `write`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// `serve` could not listen on its address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// The API server stopped with an error.
    #[error(transparent)]
    Serve(ipam_apiserver::Error),
    /// Writing the output failed (a closed pipe, a full disk).
    #[error("writing output: {0}")]
    Output(#[source] std::io::Error),
    /// A file did not hold what it should (a report, a gc state file).
    #[error("{path}: not a valid {what}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it should have held.
        what: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// Output could not be serialized.
    #[error("serializing output: {0}")]
    Serialize(String),
    /// `install-cni` found a symbolic link where it would put a file: a link planted in a
    /// host directory could point the write anywhere, so it is refused, not followed.
    #[error("refusing to replace {path}: it is a symbolic link (remove it to install)")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// `install-cni` found something other than a regular file where it would put one.
    #[error("refusing to replace {path}: it is not a regular file")]
    NotAFile {
        /// What is there.
        path: PathBuf,
    },
    /// A variable the kubelet sets in every pod is missing.
    #[error("{name} is not set: install-cni runs in a pod, where the kubelet sets it")]
    MissingEnv {
        /// The variable.
        name: &'static str,
    },
    /// An environment variable has a value that cannot be used.
    #[error("invalid {name}: {reason}")]
    InvalidEnv {
        /// The variable.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// An argument has a value that cannot be used.
    #[error("invalid {arg}: {reason}")]
    InvalidArgument {
        /// The argument.
        arg: &'static str,
        /// Why.
        reason: String,
    },
}

/// `Result` with [`CtlError`].
pub type Result<T, E = CtlError> = std::result::Result<T, E>;

/// The operator CLI for the IPAM datastore.
#[derive(Debug, Parser)]
#[command(name = "ipamctl", version, about, long_about = None)]
pub struct Cli {
    /// Datastore to use: `sqlite:PATH` (default: the plugin's own database).
    #[arg(long, global = true, env = "IPAM_DATASTORE", value_name = "SPEC")]
    pub datastore: Option<String>,
    /// etcd: PEM file of the CA that signed etcd's server certificates.
    #[arg(long, global = true, env = "IPAM_ETCD_CA_CERT", value_name = "FILE")]
    pub etcd_ca_cert: Option<std::path::PathBuf>,
    /// etcd: PEM file of the client certificate (with `--etcd-key`).
    #[arg(long, global = true, env = "IPAM_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// etcd: PEM file of the client's private key (with `--etcd-cert`).
    #[arg(long, global = true, env = "IPAM_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<std::path::PathBuf>,
    /// etcd: user name (with `--etcd-password-file`).
    #[arg(long, global = true, env = "IPAM_ETCD_USERNAME", value_name = "USER")]
    pub etcd_username: Option<String>,
    /// etcd: file holding the password (never given on the command line).
    #[arg(
        long,
        global = true,
        env = "IPAM_ETCD_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub etcd_password_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = Format::Table
    )]
    pub output: Format,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, inspect and delete IP pools.
    Pool {
        /// The pool command.
        #[command(subcommand)]
        command: pool::PoolCommand,
    },
    /// Read or change the IPAM configuration.
    Config {
        /// The config command.
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Utilization per pool and block, or who holds an address or handle.
    Show(show::ShowArgs),
    /// Look for inconsistencies and leaks; exit 0 only when nothing is found.
    Check(check::CheckArgs),
    /// Release addresses: one, a handle's, or the leaks a `check` report names.
    Release(release::ReleaseArgs),
    /// Return cooled-down addresses, surplus empty blocks and crash leftovers.
    Gc(gc::GcArgs),
    /// Serve the datastore as a Kubernetes-style API (for `kubectl get ipamblocks`).
    Serve(serve::ServeArgs),
    /// Print the CustomResourceDefinitions (apiextensions.k8s.io/v1) of the IPAM resources.
    Crds,
    /// Install the plugin, its kubeconfig and its conflist on this node (a DaemonSet's init
    /// container runs it; with `--refresh` it keeps the kubeconfig's token fresh).
    InstallCni(install::InstallArgs),
}

impl Command {
    /// Whether the command only reads or changes what is already stored, so that a missing
    /// embedded database is an error rather than a new empty one.
    pub fn needs_existing_store(&self) -> bool {
        match self {
            Command::Pool { command } => !matches!(command, pool::PoolCommand::Create(_)),
            Command::Config { command } => matches!(command, config::ConfigCommand::Get),
            Command::Show(_) | Command::Check(_) | Command::Release(_) | Command::Gc(_) => true,
            Command::Serve(_) | Command::Crds | Command::InstallCni(_) => false,
        }
    }
}

impl Cli {
    /// `spec` with the `--etcd-*` flags applied when it names etcd.
    pub fn with_etcd_flags(
        &self,
        spec: ipam_datastore::DatastoreSpec,
    ) -> ipam_datastore::DatastoreSpec {
        match spec {
            ipam_datastore::DatastoreSpec::Etcd { endpoints, .. } => {
                ipam_datastore::DatastoreSpec::Etcd {
                    endpoints,
                    security: ipam_datastore::EtcdSecurity {
                        ca_cert_file: self.etcd_ca_cert.clone(),
                        cert_file: self.etcd_cert.clone(),
                        key_file: self.etcd_key.clone(),
                        username: self.etcd_username.clone(),
                        password_file: self.etcd_password_file.clone(),
                    },
                }
            }
            other => other,
        }
    }
}

/// The files a command keeps or reads beside the datastore when no flag names them.
#[derive(Clone, Debug, Default)]
pub struct StoreFiles {
    /// Where `gc` keeps its observations (`--state`).
    pub gc_state: Option<PathBuf>,
    /// The CNI plugin's stats file that `serve` renders on `/metrics` (`--plugin-stats`).
    pub plugin_stats: Option<PathBuf>,
}

/// Runs a parsed command on `store`, writing results to `out`; returns the exit status.
pub async fn run<D: Datastore + 'static>(
    cli: &Cli,
    store: D,
    out: &mut dyn Write,
    files: StoreFiles,
) -> Result<u8> {
    if let Command::Serve(args) = &cli.command {
        return serve::run(store, args, files.plugin_stats, out).await;
    }
    let ipam = Ipam::new(store, ipam_core::SystemClock);
    let format = cli.output;
    match &cli.command {
        Command::Pool { command } => pool::run(&ipam, command, format, out).await,
        Command::Config { command } => config::run(&ipam, command, format, out).await,
        Command::Show(args) => show::run(&ipam, args, format, out).await,
        Command::Check(args) => check::run(&ipam, args, format, out).await,
        Command::Release(args) => release::run(&ipam, args, format, out).await,
        Command::Gc(args) => gc::run(&ipam, args, format, out, files.gc_state).await,
        Command::Crds => crds::run(out),
        // Taken before the store was wrapped.
        Command::Serve(_) => Ok(EXIT_OK),
        // Needs no store: the binary runs it without opening one.
        Command::InstallCni(args) => install::run(args, &|k| std::env::var(k).ok(), out).await,
    }
}

/// An error's message followed by each cause in its source chain that the message does not
/// already include, so the OS's reason ("Permission denied") is never lost.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    // Chains are a few links long; the bound only guards against a cycle.
    let causes = std::iter::successors(error.source(), |e| e.source()).take(16);
    for cause in causes {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
    }
    text
}

/// Reads a file, or standard input for `-`.
pub(crate) fn read_input(path: &std::path::Path) -> Result<String> {
    let io = |source| CtlError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    };
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(io)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from(["ipamctl", "show", "-o", "json", "--datastore", "sqlite:x"])
            .unwrap();
        assert_eq!(cli.output, Format::Json);
        assert_eq!(cli.datastore.as_deref(), Some("sqlite:x"));
        assert!(Cli::try_parse_from(["ipamctl", "show", "-o", "xml"]).is_err());
    }
}
