//! The listeners the API is served on: plain TCP (loopback only), TLS over TCP, and a Unix
//! socket whose peers are identified by the kernel.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::access::Peer;
use crate::{Error, Result};

/// How long a client may take over the TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of descriptors, ...), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Refuses a plain-HTTP listener off loopback: tokens would cross the network in clear.
pub fn check_listen(addr: SocketAddr, tls: bool) -> Result<()> {
    if tls || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(Error::PlainOffLoopback { addr })
}

/// A rustls server configuration from a PEM certificate chain and a PEM private key.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let bad = |path: &Path, reason: String| Error::Tls {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
        .map_err(|e| bad(key, e.to_string()))?;
    Ok(Arc::new(config))
}

/// Binds a Unix socket at `path` and makes it 0600. Writes are decided by the peer's
/// credentials, not by the mode, so a connection in the instant before the chmod gains
/// nothing.
pub fn bind_unix(path: &Path) -> Result<UnixPeers> {
    let io = |source| Error::Listen {
        what: path.display().to_string(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(UnixPeers {
        listener,
        path: path.to_owned(),
        uid: rustix::process::geteuid().as_raw(),
    })
}

/// A Unix socket listener that tells each connection whether its peer may write.
pub struct UnixPeers {
    listener: UnixListener,
    path: PathBuf,
    uid: u32,
}

impl UnixPeers {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Listener for UnixPeers {
    type Io = UnixStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (UnixStream, Peer) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let trusted = stream
                        .peer_cred()
                        .is_ok_and(|c| c.uid() == self.uid || c.uid() == 0);
                    return (stream, Peer { trusted });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the Unix socket");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer::default())
    }
}

/// A TCP listener that completes the TLS handshake before handing a connection over.
pub struct TlsListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    /// TLS with `config` on `listener`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> Self {
        TlsListener {
            listener,
            acceptor: TlsAcceptor::from(config),
        }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    // The handshake runs inside accept (bounded by HANDSHAKE_TIMEOUT): a slow client delays
    // the next accept by at most that long.
    async fn accept(&mut self) -> (TlsStream<TcpStream>, Peer) {
        loop {
            let tcp = match self.listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a TCP connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, Peer::default()),
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer::default())
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(_: IncomingStream<'_, TcpListener>) -> Self {
        Peer::default()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

impl Connected<IncomingStream<'_, UnixPeers>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixPeers>) -> Self {
        *stream.remote_addr()
    }
}
