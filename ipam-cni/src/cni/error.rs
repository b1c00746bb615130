//! The plugin's errors and the CNI error codes they are reported with.
//!
//! | Code | When |
//! |---|---|
//! | 1 | unsupported `cniVersion` (from the protocol layer) |
//! | 3 | CHECK of a container whose handle holds nothing |
//! | 4 | missing or malformed environment (`CNI_ARGS`, a container ID unfit for a handle) |
//! | 5 | the datastore file cannot be opened or read |
//! | 6 | the config does not decode (malformed JSON, a key of the wrong JSON type) |
//! | 7 | the config is invalid (wrong `ipam.type`, a pool CIDR that does not parse, an unsupported datastore) |
//! | 11 | try again later: datastore busy, too many conflicts, the time budget spent |
//! | 50 | STATUS: no allocation could succeed now |
//! | 100 | no usable pool (none exists, a named pool is missing or disabled) |
//! | 101 | the pools have no free address left |
//! | 102 | the allocator refused the request for another reason |
//! | 103 | CHECK: the handle does not hold the addresses of `prevResult` |
//! | 104 | GC: some stale allocations could not be released |

use rscni_plugin::error::Error as Cni;

use ipam_datastore as datastore;

/// The plugin's own error codes (the spec reserves 0-99).
pub mod codes {
    /// No usable pool.
    pub const NO_POOL: u32 = 100;
    /// The pools are full.
    pub const EXHAUSTED: u32 = 101;
    /// Refused by the allocator for another reason.
    pub const REFUSED: u32 = 102;
    /// CHECK found a mismatch.
    pub const CHECK_FAILED: u32 = 103;
    /// GC could not release everything.
    pub const GC_INCOMPLETE: u32 = 104;
}

/// What a CNI request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The network configuration is invalid (code 7).
    #[error("invalid network config: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A part of the configuration does not decode (code 6).
    #[error("cannot decode the {what}: {source}")]
    Decode {
        /// Which part.
        what: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The environment is unusable (code 4).
    #[error("invalid environment: {reason}")]
    Env {
        /// What is wrong.
        reason: String,
    },
    /// The datastore could not be chosen or opened (code 7 or 5).
    #[error(transparent)]
    Datastore(#[from] datastore::Error),
    /// The allocator failed (code 11, 100, 101, 102 or 5 by kind).
    #[error(transparent)]
    Ipam(#[from] ipam_core::Error),
    /// The allocation did not finish within its time budget (code 11).
    #[error("the allocation did not finish within {seconds}s; nothing was kept")]
    TimedOut {
        /// The budget in seconds.
        seconds: u64,
    },
    /// CHECK: the container's handle holds no address (code 3).
    #[error("handle {handle:?} holds no address")]
    UnknownContainer {
        /// The handle.
        handle: String,
    },
    /// CHECK: the handle does not hold an address the previous result lists (code 103).
    #[error("handle {handle:?} does not hold {missing}")]
    CheckFailed {
        /// The handle.
        handle: String,
        /// The addresses it does not hold.
        missing: String,
    },
    /// STATUS: an ADD could not succeed now (code 50).
    #[error("not available: {reason}")]
    NotAvailable {
        /// Why.
        reason: String,
    },
    /// GC released what it could; these failed (code 104).
    #[error("gc left {} allocation(s): {}", .failures.len(), .failures.join("; "))]
    GcIncomplete {
        /// One line per failure.
        failures: Vec<String>,
    },
    /// DEL released what it could; these handles failed (the first failure's code; every
    /// failure in the details).
    #[error("DEL left {} handle(s): {}", .failures.len(), describe_all(.failures))]
    DelIncomplete {
        /// Each handle that could not be released, with why.
        failures: Vec<(String, ipam_core::Error)>,
    },
    /// A blocking task or the async runtime could not be started (code 5).
    #[error("cannot run the request: {0}")]
    Runtime(#[source] std::io::Error),
}

/// `Result` with [`CniError`].
pub type Result<T, E = CniError> = std::result::Result<T, E>;

impl CniError {
    /// A [`CniError::Config`].
    pub fn config(reason: impl Into<String>) -> Self {
        CniError::Config {
            reason: reason.into(),
        }
    }

    /// The CNI error to report, with its code.
    pub fn to_cni(&self) -> Cni {
        let details = with_causes(self);
        match self {
            CniError::Config { .. } => Cni::InvalidNetworkConfig(details),
            CniError::Decode { .. } => Cni::FailedToDecode(details),
            CniError::Env { .. } => Cni::InvalidEnvValue(details),
            CniError::Datastore(datastore::Error::Sqlite(_)) | CniError::Runtime(_) => {
                Cni::IOFailure(details)
            }
            // An etcd that cannot be reached now may be reachable on the runtime's retry.
            CniError::Datastore(datastore::Error::Etcd(e)) if e.is_retryable() => {
                Cni::TryAgainLater(details)
            }
            CniError::Datastore(_) => Cni::InvalidNetworkConfig(details),
            CniError::Ipam(e) => ipam_error(e, details),
            CniError::DelIncomplete { failures } => match failures.first() {
                Some((_, e)) => ipam_error(e, details),
                None => Cni::IOFailure(details),
            },
            CniError::TimedOut { .. } => Cni::TryAgainLater(details),
            CniError::UnknownContainer { .. } => Cni::NotExist(details),
            CniError::CheckFailed { .. } => custom(codes::CHECK_FAILED, "Check failed", details),
            CniError::NotAvailable { .. } => Cni::PluginNotAvailable(details),
            CniError::GcIncomplete { .. } => custom(
                codes::GC_INCOMPLETE,
                "Garbage collection incomplete",
                details,
            ),
        }
    }
}

fn describe_all(failures: &[(String, ipam_core::Error)]) -> String {
    let lines: Vec<String> = failures.iter().map(|(h, e)| format!("{h}: {e}")).collect();
    lines.join("; ")
}

/// The error and every cause below it that its own text does not already show, so that the
/// runtime's log says why ("cannot prepare ...: database is locked"), not only what.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

fn custom(code: u32, msg: &str, details: String) -> Cni {
    Cni::Custom(code, msg.to_owned(), details)
}

fn ipam_error(e: &ipam_core::Error, details: String) -> Cni {
    use ipam_core::{Error as E, StoreError as S};
    if e.is_retryable() {
        return Cni::TryAgainLater(details);
    }
    match e {
        E::PoolExhausted { .. } => custom(codes::EXHAUSTED, "No free address", details),
        E::NoCandidatePools { .. } | E::PoolNotFound { .. } => {
            custom(codes::NO_POOL, "No usable IP pool", details)
        }
        E::InvalidCidr { .. }
        | E::BlockSizeOutOfRange { .. }
        | E::PoolOverlap { .. }
        | E::SpecialRange { .. } => Cni::InvalidNetworkConfig(details),
        E::Store(S::Other { .. }) => Cni::IOFailure(details),
        // Wrong or missing credentials, or a role without the grant: fixed in the config
        // or the datastore's grants, not by the runtime's retry.
        E::Store(S::Denied { .. }) => Cni::InvalidNetworkConfig(details),
        _ => custom(codes::REFUSED, "Allocation refused", details),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot prepare the database")]
        Hidden(#[source] std::io::Error),
        #[error("cannot decode: {0}")]
        Shown(#[source] std::io::Error),
    }

    #[test]
    fn details_name_each_cause_once() {
        let cause = || std::io::Error::other("database is locked");
        assert_eq!(
            with_causes(&Outer::Hidden(cause())),
            "cannot prepare the database: database is locked"
        );
        assert_eq!(
            with_causes(&Outer::Shown(cause())),
            "cannot decode: database is locked"
        );
    }
}
