//! `EtcdStore`: the connection, bounded round trips, and decoding of what etcd returns.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, KeyValue, KvClient, TlsOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use ipam_core::store::{Op, OpCounter};
use ipam_core::{Resource, Revision, StoreError, Stored};

use crate::config::EtcdConfig;
use crate::error::{Error, Result};
use crate::keys::Keys;

/// Largest response the client accepts: a node snapshot of many large blocks is far above
/// gRPC's 4 MiB default, and etcd bounds what it sends anyway.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// An [`ipam_core::Datastore`] on etcd v3. Cheap to share: clones of the client share one
/// connection pool.
pub struct EtcdStore {
    pub(crate) kv: KvClient,
    pub(crate) keys: Keys,
    request_timeout: Duration,
    pub(crate) counter: OpCounter,
}

/// A request that got no answer in time.
#[derive(Debug, thiserror::Error)]
#[error("etcd did not answer within {0:?}")]
pub struct TimedOut(pub Duration);

impl EtcdStore {
    /// Connects to etcd as `config` says. Nothing is sent unless credentials are given (they
    /// are exchanged for a token at once), so an unreachable etcd surfaces on the first
    /// operation, as [`StoreError::Unavailable`], within the request timeout.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        config.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout);
        if let Some((user, password)) = &config.credentials {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if config.uses_tls() {
            options = options.with_tls(tls_options(&config)?);
        }
        let bound = config.connect_timeout + config.request_timeout;
        let client = match tokio::time::timeout(
            bound,
            Client::connect(config.endpoints.clone(), Some(options)),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) if is_unavailable(&e) => {
                return Err(Error::Unreachable {
                    endpoints: config.endpoints.join(","),
                    source: Box::new(e),
                });
            }
            Ok(Err(e)) => return Err(Error::Client(e)),
            Err(_) => {
                return Err(Error::Unreachable {
                    endpoints: config.endpoints.join(","),
                    source: Box::new(TimedOut(bound)),
                });
            }
        };
        Ok(EtcdStore {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            keys: Keys::new(&config.prefix),
            request_timeout: config.request_timeout,
            counter: OpCounter::default(),
        })
    }

    /// Runs one request, failing as [`StoreError::Unavailable`] if it takes longer than the
    /// request timeout or etcd cannot be reached.
    pub(crate) async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
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
        let mut kv = self.kv.clone();
        self.call(async move { kv.txn(txn).await }).await
    }

    /// Reads one key, counted as a get.
    pub(crate) async fn get_key(&self, key: String) -> Result<Option<KeyValue>, StoreError> {
        self.counter.count(Op::Get);
        let mut kv = self.kv.clone();
        let mut resp = self.call(async move { kv.get(key, None).await }).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// Reads every key under `prefix`, counted as a list.
    pub(crate) async fn get_prefix(&self, prefix: String) -> Result<Vec<KeyValue>, StoreError> {
        self.counter.count(Op::List);
        let mut kv = self.kv.clone();
        let opts = GetOptions::new().with_prefix();
        let mut resp = self
            .call(async move { kv.get(prefix, Some(opts)).await })
            .await?;
        Ok(resp.take_kvs())
    }
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
        Some(h) => Ok(Revision::from_u64(u64::try_from(h.revision()).unwrap_or(0))),
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
    TxnOp::get(key, None)
}

/// A read of every key under `prefix` inside a transaction.
pub(crate) fn range_op(prefix: &str) -> TxnOp {
    TxnOp::get(prefix, Some(GetOptions::new().with_prefix()))
}

fn tls_options(config: &EtcdConfig) -> Result<TlsOptions> {
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| Error::ReadTlsFile {
            path: path.clone(),
            source,
        })
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca_cert_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

/// Whether a client error means etcd could not be reached or did not answer (retryable).
/// etcd itself answers `Unavailable` while it has no leader or the leader changed; a
/// connection reset mid-request arrives as `Unknown` with a transport error inside.
fn is_unavailable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => true,
            Code::Unknown => caused_by_transport(s),
            _ => false,
        },
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

/// Whether etcd refused this client: no or wrong credentials (etcd answers those as
/// `InvalidArgument` with its auth messages), an expired token, or a role without the key.
fn is_denied(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    let etcd_client::Error::GRpcStatus(s) = e else {
        return false;
    };
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

fn store_error(e: etcd_client::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable {
            source: Box::new(e),
        }
    } else if is_denied(&e) {
        StoreError::Denied {
            source: Box::new(e),
        }
    } else {
        StoreError::Other {
            source: Box::new(e),
        }
    }
}
