//! What a datastore operation can fail with, and the questions callers ask of it.

use super::{Kind, Resource};

/// What a datastore operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No live object has that name.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// The resource kind.
        kind: Kind,
        /// The object name.
        name: String,
    },
    /// A live object already has that name.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// The resource kind.
        kind: Kind,
        /// The object name.
        name: String,
    },
    /// The object's revision moved since it was read: read again and retry.
    #[error("{kind} {name:?} was changed by someone else")]
    Conflict {
        /// The resource kind.
        kind: Kind,
        /// The object name.
        name: String,
    },
    /// The datastore cannot be reached now; the same call may succeed later.
    #[error("datastore unavailable: {source}")]
    Unavailable {
        /// What the backend reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend refused the object or the request as malformed.
    #[error("invalid {kind} {name:?}: {reason}")]
    Invalid {
        /// The resource kind.
        kind: Kind,
        /// The object name.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The backend refused this client: credentials missing or wrong, or no permission for
    /// the request. Retrying cannot help until the configuration or the grants change.
    #[error("datastore refused the request: {source}")]
    Denied {
        /// What the backend reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Anything else the backend reported (I/O, decoding, protocol).
    #[error("datastore error: {source}")]
    Other {
        /// What the backend reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether this is a CAS conflict (the only error the retry helper swallows).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// Whether a write lost a race with another writer: a conflict, or a create that found
    /// the object there, or an update that found it gone. A fresh read decides what next.
    pub fn is_lost_race(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. }
                | StoreError::AlreadyExists { .. }
                | StoreError::NotFound { .. }
        )
    }

    /// This error as a [`StoreError::Conflict`] on the same object, for a lost race the caller
    /// retries (see [`StoreError::is_lost_race`]); other errors are returned unchanged.
    pub fn into_conflict(self) -> StoreError {
        match self {
            StoreError::AlreadyExists { kind, name } | StoreError::NotFound { kind, name } => {
                StoreError::Conflict { kind, name }
            }
            other => other,
        }
    }

    /// Whether the object was absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// A NotFound for `R` named `name`.
    pub fn not_found<R: Resource>(name: &str) -> Self {
        StoreError::NotFound {
            kind: R::KIND,
            name: name.to_owned(),
        }
    }

    /// An AlreadyExists for `R` named `name`.
    pub fn already_exists<R: Resource>(name: &str) -> Self {
        StoreError::AlreadyExists {
            kind: R::KIND,
            name: name.to_owned(),
        }
    }

    /// A Conflict for `R` named `name`.
    pub fn conflict<R: Resource>(name: &str) -> Self {
        StoreError::Conflict {
            kind: R::KIND,
            name: name.to_owned(),
        }
    }
}
