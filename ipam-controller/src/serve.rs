//! The controller's `/metrics` listener. On loopback by default; any other address needs a
//! bearer token file (then every request must present the token) and TLS, the rules of
//! `ipamctl serve` (`ipam_apiserver::listen`), so nothing off the host reads pod names or
//! sees the token in clear.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipam_apiserver::listen::{TlsListener, check_listen, tls_config};
use ipam_apiserver::{Token, serve_on};
use ipam_metrics::Metrics;
use tokio::net::TcpListener;

use crate::{Error, Result};

/// Where and how `/metrics` is served.
#[derive(Clone, Debug)]
pub struct MetricsListen {
    /// The address (`127.0.0.1:9094` by default).
    pub addr: SocketAddr,
    /// A file holding the bearer token scrapers must present (0600, ours).
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain and key for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A bound metrics listener, ready to serve.
pub struct MetricsServer {
    listener: TcpListener,
    token: Option<Token>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl MetricsListen {
    /// Checks the rules, reads the token and TLS files, and binds.
    pub async fn bind(&self) -> Result<MetricsServer> {
        if !self.addr.ip().is_loopback() && self.token_file.is_none() {
            return Err(Error::UnauthenticatedListener { addr: self.addr });
        }
        check_listen(self.addr, self.tls.is_some())?;
        let token = self
            .token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()?;
        let tls = match &self.tls {
            Some((cert, key)) => Some(tls_config(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(self.addr)
            .await
            .map_err(|source| Error::Listen {
                addr: self.addr,
                source,
            })?;
        Ok(MetricsServer {
            listener,
            token,
            tls,
        })
    }
}

impl MetricsServer {
    /// The bound address (the port chosen, for `:0`).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|source| Error::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
    }

    /// Serves `metrics` until `shutdown` completes.
    pub async fn serve<F>(self, metrics: Arc<Metrics>, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let app = ipam_apiserver::metrics::router(metrics, self.token);
        match self.tls {
            Some(cfg) => serve_on(TlsListener::new(self.listener, cfg), app, shutdown).await?,
            None => serve_on(self.listener, app, shutdown).await?,
        }
        Ok(())
    }
}
