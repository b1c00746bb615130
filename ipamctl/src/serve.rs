//! `ipamctl serve`: the datastore seen through a Kubernetes-style API, so
//! `kubectl get ipamblocks` works on a SQLite or etcd store as it does on a cluster.

use std::io::Write;
use std::net::SocketAddr;

use clap::Args;
use ipam_core::Datastore;

use super::{CtlError, EXIT_OK, Result};

/// Arguments of `ipamctl serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; keep it on loopback unless something in front authenticates.
    #[arg(long, default_value = "127.0.0.1:8001", value_name = "ADDR")]
    pub listen: SocketAddr,
}

/// Serves the API over `store` until interrupted (Ctrl-C / SIGINT).
pub async fn run<D: Datastore + 'static>(
    store: D,
    args: &ServeArgs,
    out: &mut dyn Write,
) -> Result<u8> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| CtlError::Listen {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| CtlError::Listen {
        addr: args.listen,
        source,
    })?;
    let banner = format!(
        "serving crd.projectcalico.org/v1 on http://{addr} (Ctrl-C stops)\n  \
         kubectl --server http://{addr} get ipamblocks\n"
    );
    out.write_all(banner.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CtlError::Output)?;
    let interrupted = async {
        // If the signal handler cannot be installed the server runs until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    ipam_apiserver::serve_with_shutdown(
        listener,
        store,
        ipam_apiserver::ServeOptions::default(),
        interrupted,
    )
    .await
    .map_err(CtlError::Serve)?;
    Ok(EXIT_OK)
}
