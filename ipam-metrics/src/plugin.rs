//! The CNI plugin's operations on `/metrics`: the totals each plugin run adds to its
//! node-local stats file ([`ipam_core::stats`]), rendered as
//! `ipam_cni_operation_duration_seconds` (a histogram by `operation` and `outcome`) and
//! `ipam_cni_cas_conflicts_total` (compare-and-swap conflicts met and retried, by
//! `operation`). Calico's plugin exports neither, so the names are ours.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ipam_core::stats::{LATENCY_BOUNDS, MAX_FILE_BYTES, PluginStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use rustix::fs::{FlockOperation, Mode, OFlags, flock};

/// Why a stats file gave nothing to render.
#[derive(Debug, thiserror::Error)]
pub enum StatsFileError {
    /// It could not be opened, locked or read.
    #[error("cannot read the plugin stats file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// It holds something the plugin cannot have written.
    #[error("the plugin stats file {path} is not the plugin's: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads the totals in `path`: `None` while no plugin has recorded anything there. The
/// file is read under a shared `flock` (the plugin rewrites it under an exclusive one),
/// without following a symlink and at most [`MAX_FILE_BYTES`] of it.
pub fn read_stats_file(path: &Path) -> Result<Option<PluginStats>, StatsFileError> {
    let io = |source: std::io::Error| StatsFileError::Io {
        path: path.to_owned(),
        source,
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io(e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(StatsFileError::Invalid {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    flock(&fd, FlockOperation::LockShared).map_err(|e| io(e.into()))?;
    let mut text = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(io)?;
    PluginStats::parse(&text).map_err(|reason| StatsFileError::Invalid {
        path: path.to_owned(),
        reason,
    })
}

/// The collector behind the two metrics: it renders whatever totals it was last given.
#[derive(Debug, Default)]
pub(crate) struct PluginOps(Mutex<PluginStats>);

impl PluginOps {
    pub(crate) fn set(&self, stats: PluginStats) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = stats;
    }
}

impl Collector for PluginOps {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if stats.operations.is_empty() {
            return Ok(());
        }
        let mut histogram = encoder.encode_descriptor(
            "ipam_cni_operation_duration_seconds",
            "Time the CNI plugin took to answer, from reading the request to the answer, by operation and outcome",
            None,
            MetricType::Histogram,
        )?;
        for t in &stats.operations {
            let labels = vec![
                ("operation", t.operation.clone()),
                ("outcome", t.outcome.as_str().to_owned()),
            ];
            let bounds = LATENCY_BOUNDS.iter().copied().chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(t.buckets.iter().copied()).collect();
            histogram
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(t.seconds_sum, t.count, &buckets, None)?;
        }
        let mut conflicts = encoder.encode_descriptor(
            "ipam_cni_cas_conflicts",
            "Compare-and-swap conflicts the CNI plugin's operations met and retried, by operation",
            None,
            MetricType::Counter,
        )?;
        for operation in ipam_core::stats::OPERATIONS {
            let of_op = stats.operations.iter().filter(|t| t.operation == operation);
            let Some(n) = of_op.map(|t| t.conflicts).reduce(u64::saturating_add) else {
                continue;
            };
            let labels = vec![("operation", operation.to_owned())];
            ConstCounter::new(n).encode(conflicts.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_plugin_writes_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.db.stats");
        assert!(read_stats_file(&path).unwrap().is_none());
        std::fs::write(&path, br#"{"operations":[]}"#).unwrap();
        assert_eq!(
            read_stats_file(&path).unwrap(),
            Some(PluginStats::default())
        );
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(
            read_stats_file(&path),
            Err(StatsFileError::Invalid { .. })
        ));
        std::fs::write(&path, vec![b' '; MAX_FILE_BYTES as usize + 1]).unwrap();
        let err = read_stats_file(&path).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            read_stats_file(&link),
            Err(StatsFileError::Io { .. })
        ));
        assert!(matches!(
            read_stats_file(dir.path()),
            Err(StatsFileError::Invalid { .. })
        ));
    }
}
