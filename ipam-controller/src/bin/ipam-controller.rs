//! `ipam-controller`: releases what deleted pods and nodes left in the IPAM datastore, under
//! a leader lease, and serves Prometheus metrics. See the crate documentation and README.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ipam_controller::serve::MetricsListen;
use ipam_controller::{Controller, Error, LeaseSettings, Result, Settings};
use ipam_core::Datastore;
use ipam_datastore::{DatastoreSpec, EtcdSecurity, StoreOp, with_store};
use ipam_metrics::Metrics;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Releases the addresses of deleted pods and the blocks of deleted nodes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The IPAM datastore: sqlite:PATH, etcdv3:URL[,URL], kubernetes[:KUBECONFIG].
    #[arg(long, env = "IPAM_DATASTORE", default_value = "kubernetes")]
    datastore: String,
    /// Kubeconfig of the cluster whose Pods and Nodes count (default: in-cluster, then
    /// $KUBECONFIG, then ~/.kube/config); the Lease lives there too.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// How long an allocation, affinity or block must look abandoned, unchanged, before it
    /// is released.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Time between passes.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Namespace of the leader Lease.
    #[arg(long, default_value = "kube-system")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "ipam-controller")]
    lease_name: String,
    /// How long the lease holds without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// This replica's identity in the lease (default: POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Where /metrics listens; off loopback it needs --metrics-token-file and TLS.
    #[arg(long, default_value = "127.0.0.1:9094")]
    metrics_listen: SocketAddr,
    /// File with the bearer token scrapers must present (mode 0600, owned by this user).
    #[arg(long, value_name = "FILE")]
    metrics_token_file: Option<PathBuf>,
    /// PEM certificate chain for TLS on the metrics listener.
    #[arg(long, value_name = "FILE", requires = "metrics_tls_key")]
    metrics_tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the metrics listener.
    #[arg(long, value_name = "FILE", requires = "metrics_tls_cert")]
    metrics_tls_key: Option<PathBuf>,
    /// etcd: the CA that signed the servers' certificates.
    #[arg(long, env = "IPAM_ETCD_CA_CERT")]
    etcd_ca_cert: Option<PathBuf>,
    /// etcd: this client's certificate.
    #[arg(long, env = "IPAM_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// etcd: this client's key.
    #[arg(long, env = "IPAM_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// etcd: user name (with --etcd-password-file).
    #[arg(long, env = "IPAM_ETCD_USERNAME")]
    etcd_username: Option<String>,
    /// etcd: file holding the user's password.
    #[arg(long, env = "IPAM_ETCD_PASSWORD_FILE")]
    etcd_password_file: Option<PathBuf>,
}

/// The controller on whichever store was chosen.
struct Run {
    client: Client,
    settings: Settings,
    listen: MetricsListen,
}

impl StoreOp for Run {
    type Output = Result<()>;

    async fn run<D: Datastore + 'static>(self, store: D) -> Result<()> {
        let metrics = Arc::new(Metrics::with_gc());
        let server = self.listen.bind().await?;
        tracing::info!(addr = %server.local_addr()?, "serving /metrics");
        let metrics_task = tokio::spawn(server.serve(Arc::clone(&metrics), stopped()));
        let controller = Controller::start(store, self.client, self.settings, metrics).await?;
        stopped().await;
        tracing::info!("stopping: giving up the lease");
        controller.stop().await;
        metrics_task.abort();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipam-controller: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let mut spec: DatastoreSpec = args.datastore.parse()?;
    if let DatastoreSpec::Etcd { security, .. } = &mut spec {
        *security = EtcdSecurity {
            ca_cert_file: args.etcd_ca_cert.clone(),
            cert_file: args.etcd_cert.clone(),
            key_file: args.etcd_key.clone(),
            username: args.etcd_username.clone(),
            password_file: args.etcd_password_file.clone(),
        };
    }
    let op = Run {
        client: client(args.kubeconfig.as_deref()).await?,
        settings: Settings {
            grace: args.grace,
            interval: args.interval,
            lease: LeaseSettings {
                namespace: args.lease_namespace,
                name: args.lease_name,
                identity: args.identity.unwrap_or_else(default_identity),
                duration: args.lease_duration,
            },
        },
        listen: MetricsListen {
            addr: args.metrics_listen,
            token_file: args.metrics_token_file,
            tls: args.metrics_tls_cert.zip(args.metrics_tls_key),
        },
    };
    with_store(&spec, op).await?
}

/// A client for the cluster's API from `kubeconfig`, or from the environment.
async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| Error::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => Config::infer().await.map_err(Error::InferConfig)?,
    };
    Ok(Client::try_from(config)?)
}

/// The host name and process id: unique among replicas on one host too.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// Completes on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a handler the process runs until killed, losing only the lease handover.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
