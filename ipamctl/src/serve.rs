//! `ipamctl serve`: the datastore seen through a Kubernetes-style API, so
//! `kubectl get ipamblocks` works on a SQLite or etcd store as it does on a cluster.
//!
//! Safe by default: read-only; with `--allow-writes`, a write needs the bearer token of
//! `--token-file` or must come over the `--listen-unix` socket from the running user (or
//! root). Plain HTTP is served on loopback only; any other address needs TLS.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use ipam_apiserver::listen::{bind_unix, check_listen, tls_config};
use ipam_apiserver::{Listeners, ServeOptions, Token, Writes};
use ipam_core::Datastore;

use super::{CtlError, EXIT_OK, Result};

/// Arguments of `ipamctl serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; an address off loopback needs --tls-cert and --tls-key.
    #[arg(long, default_value = "127.0.0.1:8001", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Also listen on a Unix socket (created 0600); writes over it are taken from the
    /// running user and root, as the kernel reports the peer.
    #[arg(long, value_name = "PATH")]
    pub listen_unix: Option<PathBuf>,
    /// Take writes (create, update, patch, delete); they need a token or the Unix socket.
    #[arg(long)]
    pub allow_writes: bool,
    /// A file holding the bearer token writes must present (mode 0600 or stricter, owned
    /// by the running user).
    #[arg(long, value_name = "FILE", requires = "allow_writes")]
    pub token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CNI plugin's stats file, whose latency histogram and conflict counts `/metrics`
    /// adds to the datastore's [default: beside the SQLite database, or
    /// /run/ipam-cni.stats for etcd and Kubernetes, where the plugin writes it as root].
    #[arg(long, value_name = "FILE")]
    pub plugin_stats: Option<PathBuf>,
}

/// Which writes the arguments allow, the token read from its file.
fn writes(args: &ServeArgs) -> Result<Writes> {
    if !args.allow_writes {
        return Ok(Writes::ReadOnly);
    }
    if args.token_file.is_none() && args.listen_unix.is_none() {
        return Err(CtlError::InvalidArgument {
            arg: "--allow-writes",
            reason: "it needs --token-file or --listen-unix: writes must be authenticated".into(),
        });
    }
    let token = args
        .token_file
        .as_deref()
        .map(Token::from_file)
        .transpose()
        .map_err(CtlError::Serve)?;
    Ok(Writes::Authenticated { token })
}

/// Checks the arguments and binds every listener; nothing is served yet.
async fn listeners(args: &ServeArgs) -> Result<Listeners> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key).map_err(CtlError::Serve)?),
        _ => None,
    };
    check_listen(args.listen, tls.is_some()).map_err(CtlError::Serve)?;
    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| CtlError::Listen {
            addr: args.listen,
            source,
        })?;
    let unix = args
        .listen_unix
        .as_deref()
        .map(bind_unix)
        .transpose()
        .map_err(CtlError::Serve)?;
    Ok(Listeners { tcp, tls, unix })
}

fn banner(args: &ServeArgs, l: &Listeners, writes: &Writes) -> Result<String> {
    let addr = l.tcp.local_addr().map_err(|source| CtlError::Listen {
        addr: args.listen,
        source,
    })?;
    let scheme = if l.tls.is_some() { "https" } else { "http" };
    let mode = match writes {
        Writes::ReadOnly => "read-only",
        _ => "writes allowed with a token or over the Unix socket",
    };
    let mut text = format!(
        "serving crd.projectcalico.org/v1 on {scheme}://{addr} ({mode}; Ctrl-C stops)\n  \
         kubectl --server {scheme}://{addr} get ipamblocks\n"
    );
    if let Some(u) = &l.unix {
        text.push_str(&format!("  and on unix:{}\n", u.path().display()));
    }
    Ok(text)
}

/// Serves the API over `store` until interrupted (Ctrl-C / SIGINT).
pub async fn run<D: Datastore + 'static>(
    store: D,
    args: &ServeArgs,
    plugin_stats_default: Option<PathBuf>,
    out: &mut dyn Write,
) -> Result<u8> {
    let writes = writes(args)?;
    let listeners = listeners(args).await?;
    let text = banner(args, &listeners, &writes)?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CtlError::Output)?;
    let interrupted = async {
        // If the signal handler cannot be installed the server runs until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let options = ServeOptions {
        writes,
        plugin_stats: args.plugin_stats.clone().or(plugin_stats_default),
        ..ServeOptions::default()
    };
    let served = ipam_apiserver::serve_listeners(listeners, store, options, interrupted).await;
    if let Some(path) = &args.listen_unix {
        remove_socket(path);
    }
    served.map_err(CtlError::Serve)?;
    Ok(EXIT_OK)
}

/// Removes the socket file this server created; one left behind would block the next start.
fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        eprintln!("ipamctl: warning: removing {}: {e}", path.display());
    }
}
