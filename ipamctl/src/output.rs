//! Output: kubectl-style tables, JSON and YAML, durations, and progress bars on stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use comfy_table::{ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{CtlError, Result};

/// Scans shorter than this get no progress bar: it would only flicker.
const PROGRESS_THRESHOLD: u64 = 256;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for machines (pretty-printed).
    Json,
    /// YAML for machines.
    Yaml,
}

/// Writes `value` as JSON or YAML, or, for tables, calls `table`.
pub fn emit<T: Serialize>(
    out: &mut dyn Write,
    format: Format,
    value: &T,
    table: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    match format {
        Format::Table => table(out).map_err(CtlError::Output),
        Format::Json => {
            let text = serde_json::to_string_pretty(value)
                .map_err(|e| CtlError::Serialize(e.to_string()))?;
            writeln!(out, "{text}").map_err(CtlError::Output)
        }
        Format::Yaml => {
            let text =
                serde_yaml::to_string(value).map_err(|e| CtlError::Serialize(e.to_string()))?;
            write!(out, "{text}").map_err(CtlError::Output)
        }
    }
}

/// A kubectl-style table: upper-case headers, no borders, columns three spaces apart.
pub fn table<I, R, C>(header: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = C>,
    C: ToString,
{
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .force_no_tty()
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row.into_iter().map(|c| c.to_string()).collect::<Vec<_>>());
    }
    let last = header.len().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 3 }));
    }
    let mut text: String = t
        .lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

/// Whether progress is drawn: for people only, so only beside a table and only when stderr
/// is a terminal; JSON and YAML are for machines, whose stderr may be a log.
pub fn shows_progress(format: Format, stderr_is_terminal: bool) -> bool {
    format == Format::Table && stderr_is_terminal
}

fn progress_wanted(format: Format) -> bool {
    shows_progress(format, std::io::stderr().is_terminal())
}

/// A progress bar on stderr over `len` items, shown only for long scans (see
/// [`shows_progress`]).
pub fn progress(len: u64, what: &'static str, format: Format) -> ProgressBar {
    if len < PROGRESS_THRESHOLD || !progress_wanted(format) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(what);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A progress bar on stderr over the steps of a scan (one list of a kind each), with a
/// spinner and the time taken, since one step alone (every block of a large Kubernetes or
/// etcd store) can take seconds. Shown as [`shows_progress`] says; [`ProgressBar::inc`]
/// moves to the next step, [`ProgressBar::set_message`] names it.
pub fn scan_steps(steps: u64, first: &'static str, format: Format) -> ProgressBar {
    if !progress_wanted(format) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps).with_message(first);
    let template = "{spinner} {msg:<24} [{bar:20}] {pos}/{len} {elapsed}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    // Drawn now, not at the first tick, so even a short scan shows what it reads.
    bar.tick();
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Parses a duration: `500ms`, `30s`, `5m`, `2h`, or a number of seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 30s, 5m, 1h)"))?;
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|e| format!("{text:?}: {e}"))
}

/// `-` for a missing value.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_kubectl() {
        let t = table(&["NAME", "CIDR"], [["a", "10.0.0.0/16"], ["longer", "x"]]);
        assert_eq!(t, "NAME     CIDR\na        10.0.0.0/16\nlonger   x\n");
    }

    #[test]
    fn progress_is_for_people_at_a_terminal() {
        assert!(shows_progress(Format::Table, true));
        assert!(!shows_progress(Format::Table, false));
        assert!(!shows_progress(Format::Json, true));
        assert!(!shows_progress(Format::Yaml, true));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
