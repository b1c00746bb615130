//! A throwaway single-member etcd on loopback, for tests and benchmarks: the real `etcd`
//! binary (Debian's `etcd-server`) on free ports with a temporary data directory, killed
//! when dropped.
//!
//! It can be killed (`SIGKILL`) and restarted on the same ports and data, to test what a
//! client sees while its datastore goes away and comes back. It can serve its clients over
//! TLS and require client certificates ([`ClientTls`]); health is read from a plain-HTTP
//! metrics listener either way.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `etcd-server` puts the binary; `ETCD_BIN` overrides it.
pub const DEFAULT_BINARY: &str = "/usr/bin/etcd";

/// How long a fresh or restarted server may take to report healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// etcd's output, in its directory.
const LOG: &str = "etcd.log";

/// Port pairs tried before giving up (another process may take a port between our probe and
/// etcd's bind).
const PORT_ATTEMPTS: usize = 5;

/// What starting a local etcd can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No etcd binary where it was looked for.
    #[error(
        "no etcd binary at {0} (install Debian's etcd-server, e.g. with scripts/install-deps, or set ETCD_BIN)"
    )]
    Missing(PathBuf),
    /// The data directory or log file could not be made.
    #[error("preparing etcd's directory: {0}")]
    Io(#[source] std::io::Error),
    /// The process could not be started.
    #[error("starting {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// What `exec` failed with.
        #[source]
        source: std::io::Error,
    },
    /// The process exited before it was healthy.
    #[error("etcd exited with {status} before it was healthy; its log ends:\n{log}")]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The process did not report healthy in time.
    #[error("etcd was not healthy within {after:?}; its log ends:\n{log}")]
    NotHealthy {
        /// How long it was given.
        after: Duration,
        /// The end of its log.
        log: String,
    },
}

/// TLS for etcd's client listener, with client certificates required.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The server's certificate (PEM), for 127.0.0.1.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that client certificates must chain to (PEM).
    pub client_ca: PathBuf,
}

/// Requests an etcd answered, from its metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// gRPC calls by method (`Range`, `Txn`, `Put`, ...), all codes
    /// (`grpc_server_handled_total`).
    pub calls: BTreeMap<String, u64>,
    /// Raft proposals committed (`etcd_server_proposals_committed_total`): one per write,
    /// none for a read, whether a range or a read-only transaction.
    pub proposals: u64,
}

impl RequestCounts {
    /// Reads the counts out of a Prometheus text exposition.
    pub fn parse(text: &str) -> RequestCounts {
        let mut counts = RequestCounts::default();
        for line in text.lines() {
            let value = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok());
            let Some(value) = value else { continue };
            if line.starts_with("etcd_server_proposals_committed_total ") {
                counts.proposals = value as u64;
            }
            let Some(rest) = line.strip_prefix("grpc_server_handled_total{") else {
                continue;
            };
            let method = rest
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|m| m.split('"').next());
            if let Some(method) = method {
                *counts.calls.entry(method.to_owned()).or_insert(0) += value as u64;
            }
        }
        counts
    }

    /// Key-value reads and writes since `before`: writes are the proposals committed, reads
    /// the key-value calls that committed none.
    pub fn reads_and_writes_since(&self, before: &RequestCounts) -> (u64, u64) {
        let kv = |c: &RequestCounts| -> u64 {
            ["Range", "Txn", "Put", "DeleteRange"]
                .iter()
                .map(|m| c.calls.get(*m).copied().unwrap_or(0))
                .sum()
        };
        let writes = self.proposals.saturating_sub(before.proposals);
        let calls = kv(self).saturating_sub(kv(before));
        (calls.saturating_sub(writes), writes)
    }
}

/// A running (or killed, awaiting restart) local etcd.
pub struct LocalEtcd {
    binary: PathBuf,
    dir: tempfile::TempDir,
    ports: Ports,
    tls: Option<ClientTls>,
    child: Option<Child>,
}

/// The client, peer and metrics (health) ports.
#[derive(Clone, Copy, Debug)]
struct Ports {
    client: u16,
    peer: u16,
    metrics: u16,
}

impl LocalEtcd {
    /// Starts etcd from `ETCD_BIN` or [`DEFAULT_BINARY`] and waits until it is healthy.
    pub fn start() -> Result<Self, ServerError> {
        let binary = std::env::var_os("ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY));
        Self::start_binary(&binary)
    }

    /// Starts `binary` and waits until it is healthy.
    pub fn start_binary(binary: &Path) -> Result<Self, ServerError> {
        Self::start_binary_with(binary, None)
    }

    /// Starts etcd from `ETCD_BIN` or [`DEFAULT_BINARY`] serving clients over `tls` only.
    pub fn start_tls(tls: ClientTls) -> Result<Self, ServerError> {
        let binary = std::env::var_os("ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY));
        Self::start_binary_with(&binary, Some(tls))
    }

    fn start_binary_with(binary: &Path, tls: Option<ClientTls>) -> Result<Self, ServerError> {
        if !binary.is_file() {
            return Err(ServerError::Missing(binary.to_owned()));
        }
        // In memory when possible: etcd fsyncs every commit, and tests measure logic, not disks.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("ipam-etcd-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("ipam-etcd-").tempdir()
        }
        .map_err(ServerError::Io)?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let ports = free_ports().map_err(ServerError::Io)?;
            match launch(binary, dir.path(), ports, tls.as_ref()) {
                Ok(child) => {
                    return Ok(LocalEtcd {
                        binary: binary.to_owned(),
                        dir,
                        ports,
                        tls,
                        child: Some(child),
                    });
                }
                // A port taken in between makes etcd exit at once: try other ports.
                Err(e @ ServerError::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ServerError::Missing(binary.to_owned())))
    }

    /// The client URL (`http://127.0.0.1:PORT`, or `https://` when serving TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.ports.client)
    }

    /// The process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with `SIGKILL` and reaps it; the data directory stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same ports and data, and waits until it is healthy.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.child = Some(launch(
            &self.binary,
            self.dir.path(),
            self.ports,
            self.tls.as_ref(),
        )?);
        Ok(())
    }

    /// The server's own counts of the requests it answered and the writes it committed, read
    /// from its metrics listener.
    pub fn request_counts(&self) -> std::io::Result<RequestCounts> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.metrics));
        Ok(RequestCounts::parse(&http_get(addr, "/metrics")?))
    }

    /// The last lines of etcd's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts etcd on `dir` and the ports and waits until it is healthy; kills it if it does
/// not become healthy.
fn launch(
    binary: &Path,
    dir: &Path,
    ports: Ports,
    tls: Option<&ClientTls>,
) -> Result<Child, ServerError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG))
        .map_err(ServerError::Io)?;
    let log2 = log.try_clone().map_err(ServerError::Io)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://127.0.0.1:{}", ports.client);
    let peer_url = format!("http://127.0.0.1:{}", ports.peer);
    let mut command = Command::new(binary);
    if let Some(tls) = tls {
        command
            .arg(format!("--cert-file={}", tls.cert.display()))
            .arg(format!("--key-file={}", tls.key.display()))
            .arg(format!("--trusted-ca-file={}", tls.client_ca.display()))
            .arg("--client-cert-auth");
    }
    let mut child = command
        .arg("--name=ipam-test")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=ipam-test={peer_url}"))
        .arg(format!(
            "--listen-metrics-urls=http://127.0.0.1:{}",
            ports.metrics
        ))
        // Room for the largest blocks (a full /20 with its node copy is ~2.5 MB).
        .arg("--max-request-bytes=16777216")
        .arg("--logger=zap")
        .arg("--log-level=warn")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|source| ServerError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
    let healthy = wait_healthy(&mut child, dir, ports.metrics);
    if healthy.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    healthy.map(|()| child)
}

fn wait_healthy(child: &mut Child, dir: &Path, metrics: u16) -> Result<(), ServerError> {
    let deadline = Instant::now() + HEALTHY_WITHIN;
    let addr = SocketAddr::from(([127, 0, 0, 1], metrics));
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ServerError::Exited {
                status,
                log: log_tail(dir),
            });
        }
        if health(addr) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ServerError::NotHealthy {
        after: HEALTHY_WITHIN,
        log: log_tail(dir),
    })
}

/// The last lines of the log in `dir`.
fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join(LOG)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Whether etcd at `addr` answers `GET /health` with `"health":"true"`.
fn health(addr: SocketAddr) -> bool {
    http_get(addr, "/health").is_ok_and(|body| body.contains("\"health\":\"true\""))
}

/// The response (head and body) to a plain `GET path` at `addr`, read to its end. Asked as
/// HTTP/1.0 so that the body is never chunked: a chunk header can split a metrics line.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Three distinct free loopback ports, found by binding port 0 and letting go.
fn free_ports() -> std::io::Result<Ports> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    let c = TcpListener::bind("127.0.0.1:0")?;
    Ok(Ports {
        client: a.local_addr()?.port(),
        peer: b.local_addr()?.port(),
        metrics: c.local_addr()?.port(),
    })
}

#[cfg(test)]
mod tests {
    use super::RequestCounts;

    #[test]
    fn counts_calls_by_method_and_writes_by_proposal() {
        let at = |range: u64, txn: u64, proposals: u64| {
            RequestCounts::parse(&format!(
                "# HELP grpc_server_handled_total x\n\
                 grpc_server_handled_total{{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}} {range}\n\
                 grpc_server_handled_total{{grpc_code=\"OK\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}} {txn}\n\
                 grpc_server_handled_total{{grpc_code=\"Unavailable\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}} 1\n\
                 etcd_server_proposals_committed_total {proposals}\n"
            ))
        };
        let before = at(3, 4, 10);
        assert_eq!(before.calls.get("Txn"), Some(&5));
        assert_eq!(before.proposals, 10);
        // 2 ranges and 6 transactions, 4 of which wrote: 4 reads, 4 writes.
        assert_eq!(at(5, 10, 14).reads_and_writes_since(&before), (4, 4));
    }
}
