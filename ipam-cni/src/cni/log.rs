//! A small logger: one line per event to stderr or a file, never stdout (stdout carries the
//! CNI result). Callers log identifiers and addresses only, never the config, which may
//! hold credentials.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::CniError;

/// How much is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Every step.
    Debug,
    /// Each request and its outcome.
    Info,
    /// Degraded operation (no host lock) and errors.
    Warn,
    /// Errors only.
    Error,
    /// Nothing.
    Off,
}

/// Where log lines go.
#[derive(Clone, Debug)]
pub struct Logger {
    level: Level,
    file: Option<PathBuf>,
}

impl Level {
    /// Calico's `log_level` values (case-insensitive); `warn` when not given.
    pub fn parse(text: Option<&str>) -> Result<Level, CniError> {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return Ok(Level::Warn);
        };
        match text.to_ascii_lowercase().as_str() {
            "debug" | "trace" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warn" | "warning" => Ok(Level::Warn),
            "error" | "fatal" | "panic" => Ok(Level::Error),
            "none" | "off" => Ok(Level::Off),
            _ => Err(CniError::config(format!(
                "log_level {text:?} is not a log level"
            ))),
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Off => "off",
        }
    }
}

impl Logger {
    /// Logs at `level` and above, to `file` (appended) or stderr.
    pub fn new(level: Level, file: Option<&Path>) -> Self {
        Logger {
            level,
            file: file.map(Path::to_path_buf),
        }
    }

    /// Warnings and errors to stderr: what is used before the config is read.
    pub fn stderr() -> Self {
        Logger::new(Level::Warn, None)
    }

    /// Writes one line if `level` is enabled. A failing log write is ignored: logging must
    /// never turn a good answer into an error.
    pub fn log(&self, level: Level, msg: std::fmt::Arguments<'_>) {
        if level < self.level || level == Level::Off {
            return;
        }
        let now = ipam_core::clock::rfc3339(time::OffsetDateTime::now_utc());
        let line = format!(
            "{now} ipam-cni[{}] {}: {msg}\n",
            std::process::id(),
            level.tag()
        );
        let file = self.file.as_ref().and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        let _ = match file {
            Some(mut f) => f.write_all(line.as_bytes()),
            None => std::io::stderr().write_all(line.as_bytes()),
        };
    }

    /// [`Logger::log`] at [`Level::Debug`].
    pub fn debug(&self, msg: std::fmt::Arguments<'_>) {
        self.log(Level::Debug, msg);
    }

    /// [`Logger::log`] at [`Level::Info`].
    pub fn info(&self, msg: std::fmt::Arguments<'_>) {
        self.log(Level::Info, msg);
    }

    /// [`Logger::log`] at [`Level::Warn`].
    pub fn warn(&self, msg: std::fmt::Arguments<'_>) {
        self.log(Level::Warn, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_filter() {
        assert_eq!(Level::parse(None).unwrap(), Level::Warn);
        assert_eq!(Level::parse(Some("DEBUG")).unwrap(), Level::Debug);
        assert!(Level::parse(Some("loud")).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.log");
        let log = Logger::new(Level::Info, Some(&path));
        log.debug(format_args!("hidden"));
        log.info(format_args!("shown {}", 1));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("info: shown 1") && !text.contains("hidden"),
            "{text}"
        );
    }
}
