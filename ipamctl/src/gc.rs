//! `ipamctl gc`: return cooled-down addresses, release surplus empty blocks, and clean up
//! what a crash in the middle of a claim or an assignment left behind.
//!
//! Only cooldowns act at once. Everything else needs two observations at least `--grace`
//! apart that saw the same object unchanged (a block's sequence number, an affinity's or a
//! handle's revision): anything that touched it in between restarts the wait, so a block that
//! got an allocation is kept. Observations live in a small JSON state file between runs
//! (`--state`, by default beside the SQLite database) and in memory with `--interval`.
//! Losing the file only delays the next action by one grace period: every write gc makes is
//! a compare-and-swap on what it last read.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use ipam_core::check::{Snapshot, cooldown_over};
use ipam_core::{
    AffinityState, BlockAffinity, BlockCidr, Datastore, Error, Ipam, IpamBlock, IpamHandle,
    NodeName, StoreError, Stored,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::check::{SNAPSHOT_STEPS, read_snapshot};
use super::output::{Format, emit, parse_duration, progress, scan_steps, table};
use super::{CtlError, EXIT_OK, Result};

/// `gc` options.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep running: one pass every INTERVAL (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration, value_name = "INTERVAL")]
    pub interval: Option<Duration>,
    /// How long an empty block, a pending affinity or a miscounted handle must stay
    /// unchanged before gc acts on it.
    #[arg(long, value_parser = parse_duration, default_value = "15m", value_name = "DURATION")]
    pub grace: Duration,
    /// File keeping observations between runs (default: beside the SQLite database).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// With --interval, stop after this many passes.
    #[arg(long, value_name = "N", requires = "interval")]
    pub passes: Option<u64>,
}

/// What gc has seen and is waiting on, by object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcState {
    /// Empty surplus blocks, by CIDR.
    #[serde(default)]
    pub empty_blocks: BTreeMap<String, Seen>,
    /// Pending or pending-deletion affinities, by name.
    #[serde(default)]
    pub affinities: BTreeMap<String, Seen>,
    /// Handles whose counts disagree with the blocks, by name.
    #[serde(default)]
    pub handles: BTreeMap<String, Seen>,
}

/// One observation: the object's version then, and when it was first seen so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Sequence number or revision.
    pub mark: String,
    /// First seen with that mark (RFC 3339).
    pub since: String,
}

/// What one pass did.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PassReport {
    /// Addresses whose cooldown was over, freed in release order per block.
    pub freed: Vec<IpAddr>,
    /// Empty blocks released, as `node cidr`.
    pub blocks_released: Vec<String>,
    /// Stale affinities confirmed, finished or removed.
    pub affinities_fixed: Vec<String>,
    /// Handles rewritten to the blocks' counts or removed.
    pub handles_fixed: Vec<String>,
    /// Objects being watched until their grace period is over.
    pub watching: usize,
    /// What failed (gc goes on past errors).
    pub errors: Vec<String>,
}

/// Runs `gc`: one pass, or passes every `--interval`.
pub async fn run<D: Datastore>(
    ipam: &Ipam<D>,
    args: &GcArgs,
    format: Format,
    out: &mut dyn Write,
    state_default: Option<PathBuf>,
) -> Result<u8> {
    let path = args.state.clone().or(state_default);
    if path.is_none() && args.interval.is_none() {
        return Err(CtlError::InvalidArgument {
            arg: "--state",
            reason: "a single gc pass needs a state file to remember what it saw".into(),
        });
    }
    let mut state = match &path {
        Some(p) => load_state(p)?,
        None => GcState::default(),
    };
    let mut done = 0u64;
    loop {
        let now = OffsetDateTime::now_utc();
        let report = pass(ipam, &mut state, args.grace, now, format).await?;
        // What was done is printed before the state is saved, so a failing save cannot
        // hide it.
        emit(out, format, &report, |w| print(w, &report))?;
        out.flush().map_err(CtlError::Output)?;
        if let Some(p) = &path {
            save_state(p, &state)?;
        }
        done += 1;
        let Some(interval) = args.interval else { break };
        if args.passes.is_some_and(|n| done >= n) {
            break;
        }
        tokio::time::sleep(interval).await;
    }
    Ok(EXIT_OK)
}

/// One gc pass at `now`: reads everything once, then acts (with progress shown as `format`
/// allows).
pub async fn pass<D: Datastore>(
    ipam: &Ipam<D>,
    state: &mut GcState,
    grace: Duration,
    now: OffsetDateTime,
    format: Format,
) -> Result<PassReport> {
    let bar = scan_steps(SNAPSHOT_STEPS, "reading the config", format);
    let snapshot = read_snapshot(ipam.store(), &bar).await?;
    bar.finish_and_clear();
    let mut report = PassReport::default();
    let mut watch = Watch {
        now,
        grace: time::Duration::try_from(grace).unwrap_or(time::Duration::MAX),
    };
    cooldowns(ipam, &snapshot, now, format, &mut report).await;
    empty_blocks(ipam, &snapshot, state, &mut watch, &mut report).await;
    affinities(ipam, &snapshot, state, &mut watch, &mut report).await;
    handles(ipam, &snapshot, state, &mut watch, &mut report).await;
    report.watching = state.empty_blocks.len() + state.affinities.len() + state.handles.len();
    Ok(report)
}

/// Decides, from a map of observations, what is due.
struct Watch {
    now: OffsetDateTime,
    grace: time::Duration,
}

impl Watch {
    /// Records `key` at `mark`; true when it was already seen at `mark` a grace period ago.
    fn due(&mut self, seen: &mut BTreeMap<String, Seen>, key: &str, mark: String) -> bool {
        if let Some(s) = seen.get(key).filter(|s| s.mark == mark) {
            let since =
                OffsetDateTime::parse(&s.since, &time::format_description::well_known::Rfc3339)
                    .unwrap_or(self.now);
            return since + self.grace <= self.now;
        }
        let since = ipam_core::clock::rfc3339(self.now);
        seen.insert(key.to_owned(), Seen { mark, since });
        false
    }
}

/// Keeps only the observations of objects still in question.
fn prune(seen: &mut BTreeMap<String, Seen>, current: &BTreeSet<String>) {
    seen.retain(|k, _| current.contains(k));
}

async fn cooldowns<D: Datastore>(
    ipam: &Ipam<D>,
    snapshot: &Snapshot,
    now: OffsetDateTime,
    format: Format,
    report: &mut PassReport,
) {
    let seconds = snapshot.config.ip_cooldown_seconds;
    let due: Vec<&Stored<IpamBlock>> = snapshot
        .blocks
        .iter()
        .filter(|b| {
            b.value
                .attributes
                .iter()
                .filter_map(|a| a.released_at.as_deref())
                .any(|at| cooldown_over(at, seconds, now))
        })
        .collect();
    let bar = progress(due.len() as u64, "returning cooled-down addresses", format);
    for b in due {
        match b.value.block_cidr() {
            Ok(cidr) => match ipam.release_cooled_down(cidr).await {
                Ok(freed) => report.freed.extend(freed),
                Err(e) => report.errors.push(format!("block {cidr}: {e}")),
            },
            Err(e) => report.errors.push(format!("block {}: {e}", b.value.cidr)),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
}

/// Each node's empty blocks but one: released after an unchanged grace period.
async fn empty_blocks<D: Datastore>(
    ipam: &Ipam<D>,
    snapshot: &Snapshot,
    state: &mut GcState,
    watch: &mut Watch,
    report: &mut PassReport,
) {
    let confirmed: BTreeSet<(ipnet::IpNet, &str)> = snapshot
        .affinities
        .iter()
        .filter(|a| a.value.state == AffinityState::Confirmed)
        .map(|a| (a.value.cidr, a.value.node.as_str()))
        .collect();
    let mut by_node: BTreeMap<&str, Vec<&IpamBlock>> = BTreeMap::new();
    for b in &snapshot.blocks {
        if let Some(node) = b.value.host() {
            if confirmed.contains(&(b.value.cidr, node)) {
                by_node.entry(node).or_default().push(&b.value);
            }
        }
    }
    let mut candidates = Vec::new();
    for (node, mut blocks) in by_node {
        blocks.sort_by_key(|b| (ipam_core::cidr::ip_to_u128(b.cidr.network()), b.cidr));
        let all_empty = blocks.iter().all(|b| b.is_empty());
        // The node keeps one block (its first, where the allocator looks first) so that its
        // next pod does not pay for a claim.
        let skip = usize::from(all_empty);
        for b in blocks.into_iter().filter(|b| b.is_empty()).skip(skip) {
            candidates.push((node, b));
        }
    }
    let keys: BTreeSet<String> = candidates.iter().map(|(_, b)| b.cidr.to_string()).collect();
    prune(&mut state.empty_blocks, &keys);
    for (node, b) in candidates {
        let key = b.cidr.to_string();
        if !watch.due(&mut state.empty_blocks, &key, b.sequence_number.to_string()) {
            continue;
        }
        state.empty_blocks.remove(&key);
        let released = async {
            let cidr = BlockCidr::new(b.cidr)?;
            ipam.release_affinity(cidr, &NodeName::new(node)?, true)
                .await
        };
        match released.await {
            Ok(()) => report.blocks_released.push(format!("{node} {key}")),
            // It got an address after we read it: it stays.
            Err(Error::BlockNotEmpty { .. }) => {}
            Err(e) => report.errors.push(format!("block {key} of {node}: {e}")),
        }
    }
}

/// Affinities stuck in `pending` (a claim that died) or `pendingDeletion` (a release that
/// died): finished or removed once unchanged for a grace period.
async fn affinities<D: Datastore>(
    ipam: &Ipam<D>,
    snapshot: &Snapshot,
    state: &mut GcState,
    watch: &mut Watch,
    report: &mut PassReport,
) {
    let stuck: Vec<&Stored<BlockAffinity>> = snapshot
        .affinities
        .iter()
        .filter(|a| a.value.state != AffinityState::Confirmed)
        .collect();
    let keys = stuck.iter().map(|a| a.name.clone()).collect();
    prune(&mut state.affinities, &keys);
    for a in stuck {
        if !watch.due(&mut state.affinities, &a.name, a.revision.0.clone()) {
            continue;
        }
        state.affinities.remove(&a.name);
        let block = snapshot
            .blocks
            .iter()
            .find(|b| b.value.cidr == a.value.cidr && b.value.host() == Some(&a.value.node));
        match fix_affinity(ipam, a, block.map(|b| &b.value)).await {
            Ok(Some(what)) => report.affinities_fixed.push(format!("{} {what}", a.name)),
            Ok(None) => {}
            Err(e) => report.errors.push(format!("affinity {}: {e}", a.name)),
        }
    }
}

/// Completes or undoes one stuck affinity; `None` when someone else moved it first.
async fn fix_affinity<D: Datastore>(
    ipam: &Ipam<D>,
    a: &Stored<BlockAffinity>,
    block: Option<&IpamBlock>,
) -> Result<Option<&'static str>> {
    let cidr = BlockCidr::new(a.value.cidr)?;
    let node = NodeName::new(a.value.node.as_str())?;
    let store = ipam.store();
    let written = match (a.value.state, block) {
        (AffinityState::PendingDeletion, _) => {
            ipam.release_affinity(cidr, &node, false).await?;
            return Ok(Some("release finished"));
        }
        (_, Some(b)) if b.is_empty() => {
            ipam.release_affinity(cidr, &node, true).await?;
            return Ok(Some("claim undone, empty block removed"));
        }
        // The block is the node's and holds its addresses: the claim had in fact succeeded.
        (_, Some(_)) => {
            let mut value = a.value.clone();
            value.state = AffinityState::Confirmed;
            store
                .update(&a.name, value, &a.revision)
                .await
                .map(|_| "confirmed")
        }
        (_, None) => {
            let mut value = a.value.clone();
            value.deleted = true;
            match store.update(&a.name, value, &a.revision).await {
                Ok(rev) => store
                    .delete::<BlockAffinity>(&a.name, &rev)
                    .await
                    .map(|()| "removed (no block)"),
                Err(e) => Err(e),
            }
        }
    };
    match written {
        Ok(what) => Ok(Some(what)),
        Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Handles whose counts disagree with the blocks (a crash between the handle write and the
/// block write): rewritten to what the blocks hold, or removed when they hold nothing.
async fn handles<D: Datastore>(
    ipam: &Ipam<D>,
    snapshot: &Snapshot,
    state: &mut GcState,
    watch: &mut Watch,
    report: &mut PassReport,
) {
    let mut actual: BTreeMap<&str, BTreeMap<String, u32>> = BTreeMap::new();
    for b in &snapshot.blocks {
        for o in 0..b.value.allocations.len() as u32 {
            let Some(attr) = b.value.attribute_of(o) else {
                continue;
            };
            if let (Some(h), None) = (attr.handle_id.as_deref(), &attr.released_at) {
                let counts = actual.entry(h).or_default();
                *counts.entry(b.value.cidr.to_string()).or_default() += 1;
            }
        }
    }
    let wrong: Vec<(&Stored<IpamHandle>, BTreeMap<String, u32>)> = snapshot
        .handles
        .iter()
        .map(|h| (h, actual.get(h.name.as_str()).cloned().unwrap_or_default()))
        .filter(|(h, counts)| h.value.block != *counts)
        .collect();
    let keys = wrong.iter().map(|(h, _)| h.name.clone()).collect();
    prune(&mut state.handles, &keys);
    for (h, counts) in wrong {
        if !watch.due(&mut state.handles, &h.name, h.revision.0.clone()) {
            continue;
        }
        state.handles.remove(&h.name);
        match fix_handle(ipam.store(), h, counts).await {
            Ok(Some(what)) => report.handles_fixed.push(format!("{} {what}", h.name)),
            Ok(None) => {}
            Err(e) => report.errors.push(format!("handle {}: {e}", h.name)),
        }
    }
}

async fn fix_handle<D: Datastore>(
    store: &D,
    h: &Stored<IpamHandle>,
    counts: BTreeMap<String, u32>,
) -> Result<Option<&'static str>> {
    let mut value = h.value.clone();
    let empty = counts.is_empty();
    value.block = counts;
    value.deleted = empty;
    let written = match store.update(&h.name, value, &h.revision).await {
        Ok(rev) if empty => store
            .delete::<IpamHandle>(&h.name, &rev)
            .await
            .map(|()| "removed (holds nothing)"),
        Ok(_) => Ok("recounted"),
        Err(e) => Err(e),
    };
    match written {
        Ok(what) => Ok(Some(what)),
        Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn print(w: &mut dyn Write, r: &PassReport) -> std::io::Result<()> {
    let mut rows: Vec<[String; 2]> = Vec::new();
    rows.extend(
        r.freed
            .iter()
            .map(|ip| ["freed (cooldown over)".into(), ip.to_string()]),
    );
    rows.extend(
        r.blocks_released
            .iter()
            .map(|b| ["empty block released".into(), b.clone()]),
    );
    rows.extend(
        r.affinities_fixed
            .iter()
            .map(|a| ["affinity".into(), a.clone()]),
    );
    rows.extend(r.handles_fixed.iter().map(|h| ["handle".into(), h.clone()]));
    rows.extend(r.errors.iter().map(|e| ["error".into(), e.clone()]));
    if rows.is_empty() {
        writeln!(w, "Nothing to collect.")?;
    } else {
        w.write_all(table(&["ACTION", "OBJECT"], rows).as_bytes())?;
    }
    if r.watching > 0 {
        writeln!(
            w,
            "Watching {} objects until their grace period is over.",
            r.watching
        )?;
    }
    Ok(())
}

fn load_state(path: &Path) -> Result<GcState> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| CtlError::Parse {
            path: path.to_owned(),
            what: "gc state file (delete it to start over)",
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GcState::default()),
        Err(source) => Err(CtlError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the state through a temporary file and a rename, so a crash leaves the old file.
fn save_state(path: &Path, state: &GcState) -> Result<()> {
    let io = |source| CtlError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let text =
        serde_json::to_string_pretty(state).map_err(|e| CtlError::Serialize(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
