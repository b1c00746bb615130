//! `EtcdStore`: the connection, bounded round trips, and decoding of what etcd returns.
//!
//! The connection is a tonic gRPC channel calling etcd's `KV` and `Auth` services with the
//! messages of [`crate::wire`]; with credentials, every request carries etcd's token, fetched
//! at connect and fetched again once when etcd answers that it expired.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ipam_core::store::{Op, OpCounter};
use ipam_core::{Resource, Revision, StoreError, Stored};
use prost::Message;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::config::EtcdConfig;
use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::wire::{
    AuthenticateRequest, AuthenticateResponse, KeyValue, RangeRequest, RangeResponse, Txn, TxnOp,
    TxnOpResponse, TxnResponse, method,
};

/// Largest response the client accepts: a node snapshot of many large blocks is far above
/// gRPC's 4 MiB default, and etcd bounds what it sends anyway.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// The metadata key etcd reads its auth token from.
const TOKEN_HEADER: &str = "token";

/// An [`ipam_core::Datastore`] on etcd v3. Cheap to share: clones of the client share one
/// connection pool.
pub struct EtcdStore {
    pub(crate) kv: Connection,
    pub(crate) keys: Keys,
    request_timeout: Duration,
    pub(crate) counter: OpCounter,
}

/// A request that got no answer in time.
#[derive(Debug, thiserror::Error)]
#[error("etcd did not answer within {0:?}")]
pub struct TimedOut(pub Duration);

/// One gRPC channel to the endpoints, and the credentials to (re)authenticate with.
#[derive(Clone)]
pub(crate) struct Connection {
    grpc: Grpc<Channel>,
    auth: Option<Arc<Auth>>,
}

/// A user's credentials and the token etcd gave for them. Not `Debug`: it holds a password.
struct Auth {
    user: String,
    password: String,
    token: RwLock<Option<AsciiMetadataValue>>,
}

impl Connection {
    /// One unary call; with credentials, a call etcd refuses for an expired token is sent
    /// again, once, with a fresh one (etcd checks the token before it applies anything).
    async fn unary<Req, Resp>(&self, path: &'static str, request: Req) -> Result<Resp, Status>
    where
        Req: Message + Clone + Send + 'static,
        Resp: Message + Default + Send + 'static,
    {
        let Some(auth) = &self.auth else {
            return self.send(path, request, None).await;
        };
        let token = auth.token.read().map(|t| t.clone()).unwrap_or_default();
        match self.send(path, request.clone(), token).await {
            Err(s) if is_expired_token(&s) => {
                let token = self.authenticate(auth).await?;
                self.send(path, request, Some(token)).await
            }
            other => other,
        }
    }

    async fn send<Req, Resp>(
        &self,
        path: &'static str,
        request: Req,
        token: Option<AsciiMetadataValue>,
    ) -> Result<Resp, Status>
    where
        Req: Message + Send + 'static,
        Resp: Message + Default + Send + 'static,
    {
        let mut request = tonic::Request::new(request);
        if let Some(token) = token {
            request.metadata_mut().insert(TOKEN_HEADER, token);
        }
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| Status::from_error(Box::new(e)))?;
        let codec = tonic_prost::ProstCodec::default();
        let response = grpc
            .unary(request, PathAndQuery::from_static(path), codec)
            .await?;
        Ok(response.into_inner())
    }

    /// Exchanges the credentials for a token and keeps it for later calls.
    async fn authenticate(&self, auth: &Auth) -> Result<AsciiMetadataValue, Status> {
        let request = AuthenticateRequest {
            name: auth.user.clone(),
            password: auth.password.clone(),
        };
        let response: AuthenticateResponse = self.send(method::AUTHENTICATE, request, None).await?;
        let token = AsciiMetadataValue::try_from(response.token)
            .map_err(|_| Status::internal("etcd answered a token that is not ASCII"))?;
        if let Ok(mut slot) = auth.token.write() {
            *slot = Some(token.clone());
        }
        Ok(token)
    }

    pub(crate) async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        self.unary(method::RANGE, request).await
    }

    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, Status> {
        self.unary(method::TXN, txn).await
    }
}

impl EtcdStore {
    /// Connects to etcd as `config` says. Nothing is sent unless credentials are given (they
    /// are exchanged for a token at once), so an unreachable etcd surfaces on the first
    /// operation, as [`StoreError::Unavailable`], within the request timeout.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        config.validate()?;
        let grpc = Grpc::new(channel(&config)?).max_decoding_message_size(MAX_RESPONSE_BYTES);
        let auth = config.credentials.as_ref().map(|(user, password)| {
            Arc::new(Auth {
                user: user.clone(),
                password: password.clone(),
                token: RwLock::new(None),
            })
        });
        let kv = Connection { grpc, auth };
        if let Some(auth) = &kv.auth {
            let unreachable =
                |source: Box<dyn std::error::Error + Send + Sync>| Error::Unreachable {
                    endpoints: config.endpoints.join(","),
                    source,
                };
            let bound = config.connect_timeout + config.request_timeout;
            match tokio::time::timeout(bound, kv.authenticate(auth)).await {
                Ok(Ok(_)) => {}
                Ok(Err(s)) if is_unavailable(&s) => return Err(unreachable(Box::new(s))),
                Ok(Err(s)) => return Err(Error::Refused(s)),
                Err(_) => return Err(unreachable(Box::new(TimedOut(bound)))),
            }
        }
        Ok(EtcdStore {
            kv,
            keys: Keys::new(&config.prefix),
            request_timeout: config.request_timeout,
            counter: OpCounter::default(),
        })
    }

    /// Runs one request, failing as [`StoreError::Unavailable`] if it takes longer than the
    /// request timeout or etcd cannot be reached.
    pub(crate) async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(store_error(e)),
            Err(_) => Err(StoreError::Unavailable {
                source: Box::new(TimedOut(self.request_timeout)),
            }),
        }
    }

    /// One transaction; the caller counts it, by what it turned out to do.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.call(self.kv.txn(txn)).await
    }

    /// Reads one key, counted as a get.
    pub(crate) async fn get_key(&self, key: String) -> Result<Option<KeyValue>, StoreError> {
        self.counter.count(Op::Get);
        let resp = self.call(self.kv.range(RangeRequest::key(key))).await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Reads every key under `prefix`, counted as a list.
    pub(crate) async fn get_prefix(&self, prefix: String) -> Result<Vec<KeyValue>, StoreError> {
        self.counter.count(Op::List);
        let resp = self
            .call(self.kv.range(RangeRequest::prefix(prefix)))
            .await?;
        Ok(resp.kvs)
    }
}

/// The channel to every endpoint (balanced when there are several), connected on first use
/// and again after a connection is lost.
fn channel(config: &EtcdConfig) -> Result<Channel> {
    let tls = if config.uses_tls() {
        Some(tls_config(config)?)
    } else {
        None
    };
    let mut endpoints = Vec::with_capacity(config.endpoints.len());
    for url in &config.endpoints {
        let settings = |source| Error::Settings {
            endpoint: crate::config::redact_userinfo(url),
            source,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(settings)?
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout);
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(settings)?;
        }
        endpoints.push(endpoint);
    }
    Ok(match endpoints.as_slice() {
        [one] => one.connect_lazy(),
        _ => Channel::balance_list(endpoints.into_iter()),
    })
}

/// The JSON of a value.
pub(crate) fn encode<R: Resource>(name: &str, value: &R) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Invalid {
        kind: R::KIND,
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// A stored object from its key-value pair.
pub(crate) fn decode<R: Resource>(name: &str, kv: &KeyValue) -> Result<Stored<R>, StoreError> {
    let value = serde_json::from_slice(kv.value()).map_err(|source| StoreError::Other {
        source: Box::new(Error::Decode {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            source,
        }),
    })?;
    Ok(Stored {
        name: name.to_owned(),
        revision: revision_of(kv),
        value,
    })
}

/// The live objects among the pairs of a range read under `prefix`, in key (= name) order.
pub(crate) fn decode_range<R: Resource>(
    prefix: &str,
    kvs: &[KeyValue],
) -> Result<Vec<Stored<R>>, StoreError> {
    let mut out = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let key = String::from_utf8_lossy(kv.key());
        let Some(name) = key.strip_prefix(prefix) else {
            continue;
        };
        let s: Stored<R> = decode(name, kv)?;
        if !s.value.is_deleted() {
            out.push(s);
        }
    }
    Ok(out)
}

/// A key's revision in the store's terms.
pub(crate) fn revision_of(kv: &KeyValue) -> Revision {
    Revision::from_u64(u64::try_from(kv.mod_revision()).unwrap_or(0))
}

/// The revision a successful write transaction committed at.
pub(crate) fn committed(resp: &TxnResponse) -> Result<Revision, StoreError> {
    match resp.header() {
        Some(h) => Ok(Revision::from_u64(u64::try_from(h.revision).unwrap_or(0))),
        None => Err(StoreError::Other {
            source: Box::new(Error::NoHeader),
        }),
    }
}

/// The pairs returned by the `i`th operation of a transaction branch (a range read).
pub(crate) fn range_at(ops: &[TxnOpResponse], i: usize) -> Vec<KeyValue> {
    match ops.get(i) {
        Some(TxnOpResponse::Get(g)) => g.kvs().to_vec(),
        _ => Vec::new(),
    }
}

/// A read of one key inside a transaction.
pub(crate) fn get_op(key: &str) -> TxnOp {
    TxnOp::get(key)
}

/// A read of every key under `prefix` inside a transaction.
pub(crate) fn range_op(prefix: &str) -> TxnOp {
    TxnOp::range(prefix)
}

fn tls_config(config: &EtcdConfig) -> Result<ClientTlsConfig> {
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| Error::ReadTlsFile {
            path: path.clone(),
            source,
        })
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &config.ca_cert_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

/// Whether an answer means etcd could not be reached or did not answer (retryable). etcd
/// itself answers `Unavailable` while it has no leader or the leader changed; a connection
/// reset mid-request arrives as `Unknown` with a transport error inside.
fn is_unavailable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => true,
        Code::Unknown => caused_by_transport(s),
        _ => false,
    }
}

/// Whether a transport or I/O error is somewhere in `e`'s chain of causes.
fn caused_by_transport(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = e.source();
    // Chains are short; the bound only guards against a cyclic one.
    for _ in 0..16 {
        let Some(c) = cause else {
            return false;
        };
        if c.is::<tonic::transport::Error>() || c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether etcd refused a token it gave earlier because it expired (or etcd restarted and
/// forgot its simple tokens): worth one new authentication.
fn is_expired_token(s: &Status) -> bool {
    matches!(s.code(), Code::Unauthenticated | Code::InvalidArgument)
        && s.message().contains("invalid auth token")
}

/// Whether etcd refused this client: no or wrong credentials (etcd answers those as
/// `InvalidArgument` with its auth messages), an expired token, or a role without the key.
fn is_denied(s: &Status) -> bool {
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated => true,
        Code::InvalidArgument | Code::FailedPrecondition => {
            let m = s.message();
            m.contains("user name is empty")
                || m.contains("authentication failed")
                || m.contains("invalid auth token")
                || m.contains("permission denied")
        }
        _ => false,
    }
}

fn store_error(s: Status) -> StoreError {
    if is_unavailable(&s) {
        StoreError::Unavailable {
            source: Box::new(s),
        }
    } else if is_denied(&s) {
        StoreError::Denied {
            source: Box::new(s),
        }
    } else {
        StoreError::Other {
            source: Box::new(s),
        }
    }
}
