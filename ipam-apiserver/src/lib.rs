//! A Kubernetes-style HTTP API over any [`Datastore`], served the way kube-apiserver serves
//! custom resources of `crd.projectcalico.org/v1`.
//!
//! What the datastores cannot hold is derived, never made up per request:
//! - `resourceVersion` is the datastore revision; a list's is the highest revision listed.
//! - `metadata.uid` is a name-based UUID of group, kind and name ([`uid_of`]).
//! - `metadata.labels` are derived from the spec (the node label of affinities and affine
//!   blocks, [`NODE_LABEL`]); a write may repeat them but not add others (422), since no
//!   datastore has a place to keep them. Annotations and finalizers are refused likewise.
//! - `metadata.creationTimestamp` is the time this server created the object, or first saw
//!   it when something else created it (the datastores keep no creation time).
//!
//! [`uid_of`]: ipam_k8s::resource::uid_of
//! [`NODE_LABEL`]: ipam_k8s::resource::NODE_LABEL

pub mod access;
mod admission;
mod discovery;
pub mod listen;
pub mod metrics;
pub mod object;
mod read;
mod selector;
mod table;
mod watch;
mod write;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::{IncomingStream, Listener};
use ipam_core::{Datastore, Kind, StoreError};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use crate::access::{Peer, Token, Writes};
use crate::object::{Meta, Status, StatusReason};
use ipam_k8s::resource::ResourceDef;

/// What starting or running the server can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listening or serving failed (the address is taken, the listener broke).
    #[error("serving the API: {0}")]
    Serve(#[source] std::io::Error),
    /// An address or socket could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The address or socket path.
        what: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A plain-HTTP listener off loopback would send tokens and objects in clear.
    #[error(
        "refusing to listen on {addr} without TLS: only loopback may be plain HTTP (give --tls-cert and --tls-key)"
    )]
    PlainOffLoopback {
        /// The address asked for.
        addr: std::net::SocketAddr,
    },
    /// The token file could not be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The token file is readable or writable by others than its owner.
    #[error("the token file {} has mode {mode:04o}; it must be 0600 or stricter", path.display())]
    TokenFileMode {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file belongs to another user, who could change the token.
    #[error("the token file {} is owned by uid {owner}, not by the running user (uid {user})", path.display())]
    TokenFileOwner {
        /// The file.
        path: std::path::PathBuf,
        /// The file's owner.
        owner: u32,
        /// The running user.
        user: u32,
    },
    /// The token is empty.
    #[error("the token is empty")]
    TokenEmpty,
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {}: {reason}", path.display())]
    Tls {
        /// The certificate or key file.
        path: std::path::PathBuf,
        /// Why it was refused.
        reason: String,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tunables of the server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// How often a watch polls the datastore for changes.
    pub watch_poll: Duration,
    /// The longest a watch stays open when the client names no `timeoutSeconds`.
    pub watch_timeout: Duration,
    /// Watches open at once; more are refused with 429.
    pub max_watches: usize,
    /// Which writes are taken (read-only by default).
    pub writes: Writes,
    /// Which rules a write must meet (the allocator's by default).
    pub admission: Admission,
    /// The CNI plugin's stats file, rendered on `/metrics` beside the datastore's counts.
    pub plugin_stats: Option<PathBuf>,
}

/// The rules a write through the API must meet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Admission {
    /// The allocator's: no object the allocator would not write is stored.
    #[default]
    Allocator,
    /// Only the schema, as a cluster's kube-apiserver checks Calico's CRDs: for tests that
    /// use this server in place of one (the datastore conformance suite writes objects no
    /// allocator would, on purpose).
    SchemaOnly,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            watch_poll: Duration::from_millis(250),
            watch_timeout: Duration::from_secs(1800),
            max_watches: 64,
            writes: Writes::ReadOnly,
            admission: Admission::Allocator,
            plugin_stats: None,
        }
    }
}

impl ServeOptions {
    /// Writes from anyone, checked against the schema only: for tests where the server
    /// stands in for a cluster's kube-apiserver. Nothing an operator runs uses this.
    pub fn writable_for_tests() -> Self {
        ServeOptions {
            writes: Writes::Unauthenticated,
            admission: Admission::SchemaOnly,
            ..ServeOptions::default()
        }
    }
}

/// The shared state of one server: the datastore and what it cannot store.
pub struct ApiServer<D> {
    store: D,
    options: ServeOptions,
    /// Creation times by kind and name, as this server learnt them.
    created: Mutex<HashMap<(Kind, String), String>>,
    watches: Arc<Semaphore>,
}

impl<D: Datastore + 'static> ApiServer<D> {
    /// A server over `store`.
    pub fn new(store: D, options: ServeOptions) -> Self {
        let watches = Arc::new(Semaphore::new(options.max_watches));
        ApiServer {
            store,
            options,
            created: Mutex::new(HashMap::new()),
            watches,
        }
    }

    /// The datastore served.
    pub fn store(&self) -> &D {
        &self.store
    }

    /// The metadata of `name`, recording now as its creation time if it is new to us.
    fn meta(&self, kind: Kind, name: &str) -> Meta {
        let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
        let at = created
            .entry((kind, name.to_owned()))
            .or_insert_with(now_rfc3339);
        Meta {
            created: Some(at.clone()),
        }
    }

    /// Forgets `name`: the next object of that name is a new one.
    fn forget(&self, kind: Kind, name: &str) {
        let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
        created.remove(&(kind, name.to_owned()));
    }

    /// Records that `name` was created now (a create through this server).
    fn born(&self, kind: Kind, name: &str) {
        let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
        created.insert((kind, name.to_owned()), now_rfc3339());
    }
}

/// The API as an axum router over `store`, writes gated by `options.writes`. The gate
/// trusts a connection only through [`access::Peer`] connect info, so serve it with
/// `into_make_service_with_connect_info::<Peer>()` (as [`serve_on`] does).
pub fn router<D: Datastore + 'static>(store: D, options: ServeOptions) -> Router {
    let writes = Arc::new(options.writes.clone());
    let state = Arc::new(ApiServer::new(store, options));
    let collection = get(read::list::<D>)
        .post(write::create::<D>)
        .fallback(method_not_allowed);
    let item = get(read::get_one::<D>)
        .put(write::update::<D>)
        .patch(write::patch::<D>)
        .delete(write::delete::<D>)
        .fallback(method_not_allowed);
    Router::new()
        .route("/version", get(discovery::version))
        .route("/metrics", get(metrics::scrape::<D>))
        .route("/api", get(discovery::core_versions))
        .route("/apis", get(discovery::groups))
        .route("/apis/crd.projectcalico.org", get(discovery::group))
        .route("/apis/crd.projectcalico.org/v1", get(discovery::resources))
        .route("/apis/crd.projectcalico.org/v1/{plural}", collection)
        .route("/apis/crd.projectcalico.org/v1/{plural}/{name}", item)
        .fallback(not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(writes, access::gate))
}

/// Serves the API over `store` on `listener` until the listener fails.
pub async fn serve<D: Datastore + 'static>(listener: TcpListener, store: D) -> Result<()> {
    serve_with_shutdown(
        listener,
        store,
        ServeOptions::default(),
        std::future::pending(),
    )
    .await
}

/// Serves the API on a plain TCP listener until `shutdown` completes.
pub async fn serve_with_shutdown<D, F>(
    listener: TcpListener,
    store: D,
    options: ServeOptions,
    shutdown: F,
) -> Result<()>
where
    D: Datastore + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    serve_on(listener, router(store, options), shutdown).await
}

/// Serves `app` on `listener` until `shutdown` completes, with [`Peer`] connect info.
pub async fn serve_on<L, F>(listener: L, app: Router, shutdown: F) -> Result<()>
where
    L: Listener,
    L::Addr: std::fmt::Debug,
    Peer: for<'a> Connected<IncomingStream<'a, L>>,
    F: Future<Output = ()> + Send + 'static,
{
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

/// Where `ipamctl serve` listens: one TCP address (TLS or plain) and maybe a Unix socket.
pub struct Listeners {
    /// The TCP listener.
    pub tcp: TcpListener,
    /// TLS for the TCP listener.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// A Unix socket whose peers are trusted to write when they are the server's user.
    pub unix: Option<listen::UnixPeers>,
}

/// Serves `store` on every listener of `listeners` until `shutdown` completes.
pub async fn serve_listeners<D, F>(
    listeners: Listeners,
    store: D,
    options: ServeOptions,
    shutdown: F,
) -> Result<()>
where
    D: Datastore + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    use futures::FutureExt;
    let app = router(store, options);
    let stop = shutdown.shared();
    let tcp = {
        let (app, stop) = (app.clone(), stop.clone());
        async move {
            match listeners.tls {
                Some(cfg) => {
                    serve_on(listen::TlsListener::new(listeners.tcp, cfg), app, stop).await
                }
                None => serve_on(listeners.tcp, app, stop).await,
            }
        }
    };
    let unix = async move {
        match listeners.unix {
            Some(l) => serve_on(l, app, stop).await,
            None => Ok(()),
        }
    };
    let (a, b) = tokio::join!(tcp, unix);
    a.and(b)
}

/// A JSON response.
fn json(code: StatusCode, body: &Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

impl IntoResponse for Status {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json(code, &self.to_json())
    }
}

/// The Status for a datastore failure about `name`.
fn store_status(kind: Kind, name: &str, err: StoreError) -> Status {
    match err {
        StoreError::NotFound { .. } => Status::not_found(kind, name),
        StoreError::AlreadyExists { .. } => Status::already_exists(kind, name),
        StoreError::Conflict { .. } => Status::conflict(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        StoreError::Invalid { reason, .. } => Status::invalid(kind, name, "spec", &reason),
        StoreError::Unavailable { source } => Status::new(
            503,
            StatusReason::ServiceUnavailable,
            format!("datastore unavailable: {source}"),
        ),
        // The server's own datastore refusing the server is the server's failure, not the
        // client's: its grants are not the client's to fix.
        err @ (StoreError::Other { .. } | StoreError::Denied { .. }) => {
            Status::new(500, StatusReason::InternalError, err.to_string())
        }
    }
}

/// The definition named by a `{plural}` path segment, or a 404.
fn resolve(plural: &str) -> Result<&'static ResourceDef, Status> {
    ResourceDef::by_resource(plural).ok_or_else(|| {
        Status::new(
            404,
            StatusReason::NotFound,
            "the server could not find the requested resource",
        )
    })
}

async fn not_found() -> Status {
    Status::new(
        404,
        StatusReason::NotFound,
        "the server could not find the requested resource",
    )
}

async fn method_not_allowed() -> Status {
    Status::new(
        405,
        StatusReason::MethodNotAllowed,
        "the server does not allow this method on the requested resource",
    )
}

fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0);
    // Formatting a valid UTC time as RFC 3339 cannot fail.
    now.unwrap_or_else(|_| OffsetDateTime::now_utc())
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Whether the client asked for a `meta.k8s.io/v1` Table.
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let params: Vec<&str> = media.split(';').map(str::trim).collect();
            params.contains(&"as=Table")
                && params.contains(&"v=v1")
                && params.contains(&"g=meta.k8s.io")
        })
}

/// A server running on a background task, stopped when dropped.
pub struct Running {
    addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    /// Binds `addr` (e.g. `127.0.0.1:0`) and serves `store` on a task of the current runtime.
    pub async fn start<D: Datastore + 'static>(
        addr: &str,
        store: D,
        options: ServeOptions,
    ) -> Result<Running> {
        let listener = TcpListener::bind(addr).await.map_err(Error::Serve)?;
        let addr = listener.local_addr().map_err(Error::Serve)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stop = async move {
            let _ = rx.await;
        };
        let task = tokio::spawn(serve_with_shutdown(listener, store, options, stop));
        Ok(Running {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Open watches would hold a graceful shutdown open; a dropped server ends them.
        self.task.abort();
    }
}
