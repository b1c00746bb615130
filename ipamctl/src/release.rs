//! `ipamctl release`: one address, a handle's addresses, or exactly the leaks of a report.
//!
//! `--from-report` releases each leaked address only if it still carries the sequence number
//! and handle the report recorded, so an address reallocated since the report is skipped.
//! It also folds expired cooldowns the report named and releases the affinities of blocks
//! of dead nodes (a block that still holds addresses stays, unowned). Other findings need a
//! person and are only counted.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use ipam_core::check::{Finding, Report};
use ipam_core::{BlockCidr, Datastore, HandleId, Ipam, NodeName, ReleaseOutcome, ReleaseRequest};
use serde::Serialize;

use super::output::{Format, emit, or_dash, progress, table};
use super::{CtlError, EXIT_FINDINGS, EXIT_OK, Result, read_input};

/// Leaks released per datastore pass, so the progress bar moves on large reports.
const BATCH: usize = 64;

/// `release` options.
#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("what")
        .required(true)
        .multiple(true)
        .args(["ip", "handle", "from_report"])
))]
pub struct ReleaseArgs {
    /// The address to release.
    #[arg(long, value_name = "ADDR", conflicts_with = "from_report")]
    pub ip: Option<IpAddr>,
    /// Release only if the allocation still has this sequence number (see `show --ip`).
    #[arg(long, value_name = "N", requires = "ip")]
    pub sequence: Option<u64>,
    /// Release this handle's addresses; with `--ip`, release only if the address is its.
    #[arg(long, value_name = "HANDLE", conflicts_with = "from_report")]
    pub handle: Option<String>,
    /// Release the leaks named in a `check -o json` report (`-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub from_report: Option<PathBuf>,
}

/// What happened to one address.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Released {
    ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    handle: Option<String>,
    result: String,
}

/// What `--from-report` did.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct FromReport {
    addresses: Vec<Released>,
    cooldowns_folded: Vec<IpAddr>,
    affinities_released: Vec<String>,
    not_repaired: usize,
}

/// Runs `release`.
pub async fn run<D: Datastore>(
    ipam: &Ipam<D>,
    args: &ReleaseArgs,
    format: Format,
    out: &mut dyn Write,
) -> Result<u8> {
    if let Some(path) = &args.from_report {
        return from_report(ipam, path, format, out).await;
    }
    if let Some(ip) = args.ip {
        let request = ReleaseRequest {
            ip,
            sequence: args.sequence,
            handle: args.handle.clone(),
        };
        let outcomes = ipam.release_ips(&[request]).await?;
        let refused = outcomes.iter().any(|(_, o)| o.is_refused());
        let done: Vec<Released> = outcomes
            .into_iter()
            .map(|(ip, o)| Released {
                ip,
                handle: args.handle.clone(),
                result: describe(&o),
            })
            .collect();
        print_addresses(out, format, &done)?;
        return Ok(if refused { EXIT_FINDINGS } else { EXIT_OK });
    }
    let Some(handle) = &args.handle else {
        // clap's required group guarantees one of the three; say so if that ever changes.
        return Err(CtlError::InvalidArgument {
            arg: "release",
            reason: "give --ip, --handle or --from-report".into(),
        });
    };
    let id = HandleId::new(handle.as_str()).map_err(|e| CtlError::InvalidArgument {
        arg: "--handle",
        reason: e.to_string(),
    })?;
    let released = ipam.release_by_handle(&id).await?;
    let done: Vec<Released> = released
        .into_iter()
        .map(|ip| Released {
            ip: ip.addr(),
            handle: Some(handle.clone()),
            result: "released".into(),
        })
        .collect();
    print_addresses(out, format, &done)?;
    Ok(EXIT_OK)
}

fn describe(o: &ReleaseOutcome) -> String {
    match o {
        ReleaseOutcome::Released => "released".into(),
        ReleaseOutcome::CoolingDown => "released (cooling down)".into(),
        ReleaseOutcome::NotAllocated => "not allocated".into(),
        ReleaseOutcome::BadSequenceNumber { current } => format!(
            "skipped: reallocated since (sequence now {})",
            or_dash(*current)
        ),
        ReleaseOutcome::HandleMismatch { owner } => {
            format!("skipped: now owned by {}", or_dash(owner.as_deref()))
        }
    }
}

fn print_addresses(out: &mut dyn Write, format: Format, done: &[Released]) -> Result<()> {
    emit(out, format, &done, |w| {
        let rows = done.iter().map(|r| {
            [
                r.ip.to_string(),
                or_dash(r.handle.as_deref()),
                r.result.clone(),
            ]
        });
        w.write_all(table(&["ADDRESS", "HANDLE", "RESULT"], rows).as_bytes())
    })
}

/// Reads a report written by `check -o json` (or `-o yaml`).
pub fn read_report(path: &Path) -> Result<Report> {
    let text = read_input(path)?;
    serde_json::from_str(&text).or_else(|json_err| {
        serde_yaml::from_str(&text).map_err(|_| CtlError::Parse {
            path: path.to_owned(),
            what: "check report (from `ipamctl check -o json`)",
            reason: json_err.to_string(),
        })
    })
}

async fn from_report<D: Datastore>(
    ipam: &Ipam<D>,
    path: &Path,
    format: Format,
    out: &mut dyn Write,
) -> Result<u8> {
    let report = read_report(path)?;
    let plan = Repairs::from_findings(&report.findings)?;
    let mut done = FromReport {
        not_repaired: plan.not_repaired,
        ..FromReport::default()
    };
    release_leaks(ipam, &plan.leaks, format, &mut done).await?;
    for block in plan.cooled {
        done.cooldowns_folded
            .extend(ipam.release_cooled_down(block).await?);
    }
    for (block, node) in plan.dead {
        ipam.release_affinity(block, &node, false).await?;
        done.affinities_released.push(format!("{node} {block}"));
    }
    emit(out, format, &done, |w| print_repairs(w, &done))?;
    Ok(EXIT_OK)
}

/// What a report asks to repair, by kind of finding.
#[derive(Default)]
struct Repairs {
    leaks: Vec<ReleaseRequest>,
    cooled: BTreeSet<BlockCidr>,
    dead: Vec<(BlockCidr, NodeName)>,
    not_repaired: usize,
}

impl Repairs {
    fn from_findings(findings: &[Finding]) -> Result<Self> {
        let mut plan = Repairs::default();
        for f in findings {
            match f {
                Finding::LeakedAllocation {
                    ip,
                    handle,
                    sequence,
                    ..
                } => plan.leaks.push(ReleaseRequest {
                    ip: *ip,
                    sequence: *sequence,
                    handle: handle.clone(),
                }),
                Finding::CooldownExpired { block, .. } => {
                    plan.cooled.insert(BlockCidr::new(*block)?);
                }
                Finding::DeadNodeBlock { block, node, .. } => plan
                    .dead
                    .push((BlockCidr::new(*block)?, NodeName::new(node.as_str())?)),
                _ => plan.not_repaired += 1,
            }
        }
        Ok(plan)
    }
}

/// Releases each leak only while it still has the report's handle and sequence number.
async fn release_leaks<D: Datastore>(
    ipam: &Ipam<D>,
    leaks: &[ReleaseRequest],
    format: Format,
    done: &mut FromReport,
) -> Result<()> {
    let bar = progress(leaks.len() as u64, "releasing leaks", format);
    for batch in leaks.chunks(BATCH) {
        for (ip, outcome) in ipam.release_ips(batch).await? {
            let handle = batch
                .iter()
                .find(|r| r.ip == ip)
                .and_then(|r| r.handle.clone());
            done.addresses.push(Released {
                ip,
                handle,
                result: describe(&outcome),
            });
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

fn print_repairs(w: &mut dyn Write, done: &FromReport) -> std::io::Result<()> {
    let rows = done.addresses.iter().map(|r| {
        [
            r.ip.to_string(),
            or_dash(r.handle.as_deref()),
            r.result.clone(),
        ]
    });
    w.write_all(table(&["ADDRESS", "HANDLE", "RESULT"], rows).as_bytes())?;
    for ip in &done.cooldowns_folded {
        writeln!(w, "cooldown over, freed: {ip}")?;
    }
    for a in &done.affinities_released {
        writeln!(w, "affinity released (dead node): {a}")?;
    }
    if done.not_repaired > 0 {
        writeln!(
            w,
            "{} findings are not leaks and were left alone; see `ipamctl check`.",
            done.not_repaired
        )?;
    }
    Ok(())
}
