//! `ipamctl check`: read everything once, report every inconsistency and leak.
//!
//! Live owners come from `--live FILE` (`-` for stdin), one per line: a handle ID
//! (`k8s-pod-network.<container id>`), a bare container ID, or `namespace/pod`; `#` starts a
//! comment. Live nodes come from `--nodes FILE`, one node name per line. Without a list, the
//! corresponding leak check is skipped (and the report says so).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::ProgressBar;
use ipam_core::check::{Live, LiveOwners, Report, Snapshot, check};
use ipam_core::{Datastore, Ipam};
use time::OffsetDateTime;

use super::output::{Format, emit, scan_steps};
use super::{CtlError, EXIT_FINDINGS, EXIT_OK, Result, read_input};

/// `check` options.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// File of live owners, one per line: handle ID, container ID or namespace/pod
    /// (`-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub live: Option<PathBuf>,
    /// File of live node names, one per line (`-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub nodes: Option<PathBuf>,
    /// Examples printed per kind of finding in the table output (JSON/YAML list them all).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub examples: usize,
}

/// Runs `check`: exit 0 when clean, 1 when anything was found.
pub async fn run<D: Datastore>(
    ipam: &Ipam<D>,
    args: &CheckArgs,
    format: Format,
    out: &mut dyn Write,
) -> Result<u8> {
    if args.live.as_deref() == Some(Path::new("-")) && args.nodes.as_deref() == Some(Path::new("-"))
    {
        return Err(CtlError::InvalidArgument {
            arg: "--nodes",
            reason: "standard input can feed only one of --live and --nodes".into(),
        });
    }
    let owners = match &args.live {
        Some(path) => Some(
            LiveOwners::parse(&read_input(path)?).map_err(|e| CtlError::Parse {
                path: path.clone(),
                what: "list of live owners",
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    let nodes = match &args.nodes {
        Some(path) => Some(parse_nodes(&read_input(path)?)),
        None => None,
    };
    let bar = scan_steps(SNAPSHOT_STEPS + 1, "reading the config", format);
    let snapshot = read_snapshot(ipam.store(), &bar).await?;
    bar.set_message("checking");
    let live = Live {
        owners: owners.as_ref(),
        nodes: nodes.as_ref(),
    };
    let report = check(&snapshot, &live, OffsetDateTime::now_utc());
    bar.finish_and_clear();
    emit(out, format, &report, |w| print(w, &report, args.examples))?;
    Ok(if report.is_clean() {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    })
}

/// Node names, one per line; blank lines and `#` comments skipped.
pub fn parse_nodes(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The steps of [`read_snapshot`]: the config and four lists.
pub const SNAPSHOT_STEPS: u64 = Snapshot::READ_STEPS;

/// [`Snapshot::read_with`], moving `bar` a step per kind:
/// on a large Kubernetes or etcd store each list can take seconds, and the operator sees
/// which one is being read.
pub async fn read_snapshot<D: Datastore>(store: &D, bar: &ProgressBar) -> Result<Snapshot> {
    let snapshot = Snapshot::read_with(store, |next| {
        bar.inc(1);
        if next != "done" {
            bar.set_message(format!("reading {next}"));
        }
    })
    .await?;
    Ok(snapshot)
}

/// The human report: what was read, a count per kind, and examples.
pub fn print(w: &mut dyn Write, report: &Report, examples: usize) -> std::io::Result<()> {
    let t = &report.totals;
    writeln!(
        w,
        "Checked {} pools, {} blocks, {} affinities, {} handles, {} allocated addresses.",
        t.pools, t.blocks, t.affinities, t.handles, t.allocations
    )?;
    if !t.live_owners_checked {
        writeln!(
            w,
            "Leaks not checked: pass --live FILE with the live owners."
        )?;
    }
    if !t.live_nodes_checked {
        writeln!(
            w,
            "Blocks of dead nodes not checked: pass --nodes FILE with the live nodes."
        )?;
    }
    if report.is_clean() {
        return writeln!(w, "No problems found.");
    }
    let counts = report.counts();
    writeln!(w, "\nFound {} problems:\n", counts.values().sum::<usize>())?;
    let rows = counts
        .iter()
        .map(|(k, n)| [k.title().to_owned(), n.to_string()]);
    w.write_all(super::output::table(&["PROBLEM", "COUNT"], rows).as_bytes())?;
    for (kind, n) in &counts {
        writeln!(w, "\n{} ({n}):", kind.title())?;
        for f in report.of_kind(*kind).take(examples) {
            writeln!(w, "  {f}")?;
        }
        if *n > examples {
            writeln!(w, "  ... and {} more (-o json lists all)", n - examples)?;
        }
    }
    Ok(())
}
