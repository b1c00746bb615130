//! Errors of configuring and connecting; datastore operations fail with
//! [`ipam_core::StoreError`].

use std::path::PathBuf;

use ipam_core::StoreError;

/// What setting up an [`EtcdStore`](crate::EtcdStore) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration names no endpoint.
    #[error("no etcd endpoint given")]
    NoEndpoints,
    /// An endpoint is not an `http://` or `https://` URL with a host.
    #[error("etcd endpoint {endpoint:?} is not an http:// or https:// URL")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
    },
    /// An endpoint URL carries a user name or password; they belong in the credentials,
    /// where they are kept out of logs. The endpoint is shown with them redacted.
    #[error(
        "etcd endpoint {endpoint:?} carries credentials; give them as the etcd username and password file instead"
    )]
    CredentialsInEndpoint {
        /// The endpoint, credentials redacted.
        endpoint: String,
    },
    /// A client certificate was given without its key, or a key without its certificate.
    #[error("a client certificate and its key must be given together")]
    IncompleteIdentity,
    /// The key prefix is empty or does not start with `/`.
    #[error("etcd key prefix {prefix:?} must start with '/'")]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
    },
    /// A timeout of zero would fail every request.
    #[error("etcd timeouts must be longer than zero")]
    ZeroTimeout,
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    ReadTlsFile {
        /// The file.
        path: PathBuf,
        /// What reading it failed with.
        #[source]
        source: std::io::Error,
    },
    /// etcd did not answer the connection's first request (authentication) in time.
    #[error("etcd at {endpoints} is unreachable: {source}")]
    Unreachable {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// What the client reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored value is not the JSON of its kind.
    #[error("decoding {key}: {source}")]
    Decode {
        /// The etcd key.
        key: String,
        /// What parsing it failed with.
        #[source]
        source: serde_json::Error,
    },
    /// etcd answered a write without the header that carries its revision.
    #[error("etcd answered without a response header")]
    NoHeader,
    /// The gRPC client refused an endpoint's settings (a malformed URL, bad TLS material).
    #[error("etcd endpoint {endpoint:?}: {source}")]
    Settings {
        /// The endpoint, credentials redacted.
        endpoint: String,
        /// What the client reported.
        #[source]
        source: tonic::transport::Error,
    },
    /// etcd refused the credentials at connect (wrong user or password, auth not enabled).
    #[error("etcd refused the credentials: {}", .0.message())]
    Refused(#[source] tonic::Status),
}

/// Results of setting up.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying again later may succeed (etcd is down or unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }
}

impl From<Error> for StoreError {
    /// Unreachable is [`StoreError::Unavailable`] (retryable); the rest is
    /// [`StoreError::Other`].
    fn from(e: Error) -> Self {
        if e.is_retryable() {
            StoreError::Unavailable {
                source: Box::new(e),
            }
        } else {
            StoreError::Other {
                source: Box::new(e),
            }
        }
    }
}
