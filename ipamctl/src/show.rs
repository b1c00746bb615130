//! `ipamctl show`: utilization per pool (and block), who holds an address, a handle's
//! addresses.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;

use clap::Args;
use ipam_core::{Datastore, HandleId, Ipam, PoolUsage, Usage};
use ipnet::IpNet;
use serde::Serialize;

use super::output::{Format, emit, or_dash, scan_steps, table};
use super::{CtlError, EXIT_OK, Result};

/// `show` options.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Also list every block with its node.
    #[arg(long)]
    pub show_blocks: bool,
    /// Say who holds this address, or that it is free.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["handle", "show_blocks"])]
    pub ip: Option<IpAddr>,
    /// List the addresses of this handle.
    #[arg(long, value_name = "HANDLE", conflicts_with = "show_blocks")]
    pub handle: Option<String>,
    /// Only these pools (name or CIDR).
    #[arg(long = "pool", value_name = "POOL")]
    pub pools: Vec<String>,
}

/// Counts as printed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Counts {
    capacity: u128,
    in_use: u128,
    reserved: u128,
    available: u128,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PoolView {
    name: String,
    cidr: IpNet,
    #[serde(flatten)]
    counts: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocks: Option<Vec<BlockView>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BlockView {
    cidr: IpNet,
    node: Option<String>,
    #[serde(flatten)]
    counts: Counts,
}

/// Who holds an address.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AddressView {
    ip: IpAddr,
    /// `in-use`, `cooling-down`, `reserved`, `free` or `not-in-pool`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    handle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    block_affinity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    released_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<String, String>,
}

/// Runs `show`.
pub async fn run<D: Datastore>(
    ipam: &Ipam<D>,
    args: &ShowArgs,
    format: Format,
    out: &mut dyn Write,
) -> Result<u8> {
    if let Some(ip) = args.ip {
        show_ip(ipam, ip, format, out).await?;
    } else if let Some(handle) = &args.handle {
        show_handle(ipam, handle, format, out).await?;
    } else {
        // One call lists pools, blocks and reservations; on a large store it takes seconds.
        let bar = scan_steps(1, "reading pools and blocks", format);
        let usage = ipam.utilization(&args.pools).await;
        bar.finish_and_clear();
        let usage = usage?;
        if usage.is_empty() && !args.pools.is_empty() {
            return Err(ipam_core::Error::PoolNotFound {
                name: args.pools.join(","),
            }
            .into());
        }
        show_usage(&usage, args.show_blocks, format, out)?;
    }
    Ok(EXIT_OK)
}

fn counts(u: &Usage) -> Counts {
    Counts {
        capacity: u.capacity,
        in_use: u.in_use,
        reserved: u.reserved,
        available: u.available,
    }
}

fn percent(part: u128, whole: u128) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

fn show_usage(
    usage: &[PoolUsage],
    show_blocks: bool,
    format: Format,
    out: &mut dyn Write,
) -> Result<()> {
    let views: Vec<PoolView> = usage
        .iter()
        .map(|p| PoolView {
            name: p.name.clone(),
            cidr: p.cidr,
            counts: counts(&p.usage),
            blocks: show_blocks.then(|| {
                p.blocks
                    .iter()
                    .map(|b| BlockView {
                        cidr: b.cidr,
                        node: b.affinity.clone(),
                        counts: counts(&b.usage),
                    })
                    .collect()
            }),
        })
        .collect();
    emit(out, format, &views, |w| {
        print_pools(w, usage)?;
        if show_blocks {
            writeln!(w)?;
            print_blocks(w, usage)?;
        }
        Ok(())
    })
}

fn print_pools(w: &mut dyn Write, usage: &[PoolUsage]) -> std::io::Result<()> {
    let header = [
        "POOL",
        "CIDR",
        "CAPACITY",
        "IN USE",
        "RESERVED",
        "AVAILABLE",
    ];
    let rows = usage.iter().map(|p| {
        let u = &p.usage;
        [
            p.name.clone(),
            p.cidr.to_string(),
            u.capacity.to_string(),
            format!("{} ({})", u.in_use, percent(u.in_use, u.capacity)),
            u.reserved.to_string(),
            format!("{} ({})", u.available, percent(u.available, u.capacity)),
        ]
    });
    w.write_all(table(&header, rows).as_bytes())
}

fn print_blocks(w: &mut dyn Write, usage: &[PoolUsage]) -> std::io::Result<()> {
    let header = [
        "BLOCK",
        "POOL",
        "AFFINITY",
        "CAPACITY",
        "IN USE",
        "RESERVED",
        "AVAILABLE",
    ];
    let rows = usage.iter().flat_map(|p| {
        p.blocks.iter().map(|b| {
            [
                b.cidr.to_string(),
                p.name.clone(),
                or_dash(b.affinity.as_deref()),
                b.usage.capacity.to_string(),
                b.usage.in_use.to_string(),
                b.usage.reserved.to_string(),
                b.usage.available.to_string(),
            ]
        })
    });
    w.write_all(table(&header, rows).as_bytes())
}

async fn show_ip<D: Datastore>(
    ipam: &Ipam<D>,
    ip: IpAddr,
    format: Format,
    out: &mut dyn Write,
) -> Result<()> {
    let held = ipam.get_assignment_attributes(ip).await?;
    let reservation = ipam.reserved_by(ip).await?;
    let in_pool = ipam
        .list_pools()
        .await?
        .iter()
        .any(|p| p.value.cidr.contains(&ip));
    let mut view = AddressView {
        ip,
        state: "free",
        handle: None,
        sequence: None,
        block_affinity: None,
        released_at: None,
        reservation,
        attributes: BTreeMap::new(),
    };
    if let Some(a) = held {
        view.state = if a.released_at.is_some() {
            "cooling-down"
        } else {
            "in-use"
        };
        view.handle = a.handle;
        view.sequence = a.sequence;
        view.block_affinity = a.affinity;
        view.released_at = a.released_at;
        view.attributes = a.attrs;
    } else if view.reservation.is_some() {
        view.state = "reserved";
    } else if !in_pool {
        view.state = "not-in-pool";
    }
    emit(out, format, &view, |w| {
        let mut rows = vec![["ADDRESS".to_owned(), ip.to_string()]];
        rows.push(["STATE".into(), view.state.into()]);
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                rows.push([k.into(), v.clone()]);
            }
        };
        add("HANDLE", &view.handle);
        add("SEQUENCE", &view.sequence.map(|s| s.to_string()));
        add("BLOCK AFFINITY", &view.block_affinity);
        add("RELEASED AT", &view.released_at);
        add("RESERVED BY", &view.reservation);
        for (k, v) in &view.attributes {
            rows.push([k.clone(), v.clone()]);
        }
        // Key/value pairs read better without a header row.
        let text = table(&["", ""], rows);
        w.write_all(
            text.split_once('\n')
                .map_or("", |(_, rest)| rest)
                .as_bytes(),
        )
    })
}

async fn show_handle<D: Datastore>(
    ipam: &Ipam<D>,
    handle: &str,
    format: Format,
    out: &mut dyn Write,
) -> Result<()> {
    let id = HandleId::new(handle).map_err(|e| CtlError::InvalidArgument {
        arg: "--handle",
        reason: e.to_string(),
    })?;
    let ips = ipam.ips_by_handle(&id).await?;
    let view = serde_json::json!({ "handle": handle, "addresses": ips });
    emit(out, format, &view, |w| {
        let rows = ips.iter().map(|ip| [handle.to_owned(), ip.to_string()]);
        w.write_all(table(&["HANDLE", "ADDRESS"], rows).as_bytes())
    })
}
