//! ADD, DEL and CHECK on any datastore.
//!
//! ADD takes the host lock, then (within the time budget, counted from when the lock is
//! held) returns the addresses the container's handle already holds, or assigns new ones.
//! Pools named by CIDR that do not exist are created on the embedded store, and removed
//! again if the allocation still fails, so a rejected ADD leaves the store as it was.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipam_core::{
    AutoAssignArgs, Datastore, Error as IpamError, HandleId, Ipam, LabelsFromStore, NodeName,
    WantedPool, clock::go_time_string,
};
use ipnet::IpNet;

use super::config::{PluginConfig, PoolRef};
use super::error::{CniError, Result};
use super::hostlocal::HostLocal;
use super::lock::{HostLock, LOCK_WAIT};
use super::log::Logger;
use super::node::{PodRef, handle_for};

/// The secondary attribute recording the container's interface, so GC can match an
/// allocation to its attachment (container ID and interface).
pub const ATTR_IFNAME: &str = "ifname";

/// What every operation needs besides the store.
#[derive(Debug)]
pub struct Context<'a> {
    /// The plugin config.
    pub config: &'a PluginConfig,
    /// The node the request runs on.
    pub node: NodeName,
    /// Where to log.
    pub log: &'a Logger,
    /// The host lock file, when the store is local.
    pub lock_path: Option<PathBuf>,
    /// Whether pools named by CIDR may be created (the embedded store).
    pub create_pools: bool,
    /// On a store an older Calico may have written (Kubernetes): the file whose existence
    /// says this node's objects were upgraded since boot ([`upgrade_once`]).
    pub upgrade_marker: Option<PathBuf>,
}

/// One container attachment.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The pod from `CNI_ARGS`.
    pub pod: PodRef,
}

/// The addresses an ADD answers with, IPv4 first.
pub type Addresses = Vec<IpNet>;

/// ADD: the addresses the attachment holds, assigning them if it holds none.
pub async fn add<D: Datastore>(
    ipam: &Ipam<D>,
    ctx: &Context<'_>,
    att: &Attachment,
) -> Result<Addresses> {
    let handle = handle_for(&ctx.config.network, &att.container_id)?;
    let _lock = HostLock::acquire(ctx.lock_path.as_deref(), LOCK_WAIT, ctx.log).await;
    let assigning = Cell::new(false);
    let work = async {
        if let Some(marker) = &ctx.upgrade_marker {
            upgrade_once(ipam, ctx, marker).await?;
        }
        if let Some(held) = existing(ipam, &handle, &att.ifname).await? {
            ctx.log
                .info(format_args!("ADD {handle}: already holds {held:?}"));
            return Ok(held);
        }
        assigning.set(true);
        assign(ipam, ctx, att, &handle).await
    };
    match tokio::time::timeout(ctx.config.timeout, work).await {
        Ok(result) => result,
        Err(_) => {
            if assigning.get() {
                // The budget ran out mid-assignment: give back whatever was taken.
                let _ = ipam.release_by_handle(&handle).await;
            }
            Err(CniError::TimedOut {
                seconds: ctx.config.timeout.as_secs(),
            })
        }
    }
}

/// Brings this node's objects that an older Calico wrote to the shape the lookups need
/// (labels on its BlockAffinities), once: under the host lock, before the node's first ADD
/// since boot, as calico-ipam does. The marker records it; one that cannot be written only
/// means doing it again next time.
async fn upgrade_once<D: Datastore>(
    ipam: &Ipam<D>,
    ctx: &Context<'_>,
    marker: &Path,
) -> Result<()> {
    if marker.exists() {
        return Ok(());
    }
    let upgraded = ipam
        .store()
        .upgrade_node(ctx.node.as_str())
        .await
        .map_err(IpamError::from)?;
    if let Some(n) = upgraded.filter(|n| *n > 0) {
        ctx.log.info(format_args!(
            "labelled {n} block affinities an older Calico wrote"
        ));
    }
    if let Err(e) = ipam_sqlite::files::open_owned(marker, true, 0o600) {
        ctx.log.warn(format_args!(
            "cannot write {}: {e}; the upgrade check runs again next time",
            marker.display()
        ));
    }
    Ok(())
}

/// DEL: releases the attachment's handle and Calico's `<namespace>.<pod>` handle.
/// Nothing to release is success.
pub async fn del<D: Datastore>(
    ipam: &Ipam<D>,
    ctx: &Context<'_>,
    att: &Attachment,
) -> Result<Addresses> {
    let mut handles = vec![handle_for(&ctx.config.network, &att.container_id)?];
    handles.extend(att.pod.workload_handle());
    let mut released = Vec::new();
    let mut failures = Vec::new();
    // Every handle is tried even when one fails, so one bad handle cannot pin the others.
    for handle in &handles {
        match ipam.release_by_handle(handle).await {
            Ok(ips) => released.extend(ips),
            Err(IpamError::HandleNotFound { .. }) => {}
            Err(e) => failures.push((handle.to_string(), e)),
        }
    }
    ctx.log
        .info(format_args!("DEL {}: released {released:?}", handles[0]));
    if failures.is_empty() {
        Ok(released)
    } else {
        Err(CniError::DelIncomplete { failures })
    }
}

/// CHECK: the attachment's handle must hold every address of `prev` (the previous
/// result's addresses), and at least one address.
pub async fn check<D: Datastore>(
    ipam: &Ipam<D>,
    ctx: &Context<'_>,
    att: &Attachment,
    prev: &[IpAddr],
) -> Result<()> {
    let handle = handle_for(&ctx.config.network, &att.container_id)?;
    let held = match ipam.ips_by_handle(&handle).await {
        Ok(ips) => ips,
        Err(IpamError::HandleNotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if held.is_empty() {
        return Err(CniError::UnknownContainer {
            handle: handle.to_string(),
        });
    }
    let missing: Vec<String> = prev
        .iter()
        .filter(|ip| !held.iter().any(|h| h.addr() == **ip))
        .map(IpAddr::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(CniError::CheckFailed {
            handle: handle.to_string(),
            missing: missing.join(", "),
        });
    }
    Ok(())
}

/// The addresses `handle` already holds, if any; refused if they belong to another
/// interface of the same container on this network.
async fn existing<D: Datastore>(
    ipam: &Ipam<D>,
    handle: &HandleId,
    ifname: &str,
) -> Result<Option<Addresses>> {
    let mut held = match ipam.ips_by_handle(handle).await {
        Ok(ips) if !ips.is_empty() => ips,
        Ok(_) | Err(IpamError::HandleNotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if let Some(first) = held.first()
        && let Some(a) = ipam.get_assignment_attributes(first.addr()).await?
        && let Some(other) = a.attrs.get(ATTR_IFNAME).filter(|i| *i != ifname)
    {
        return Err(CniError::config(format!(
            "handle {handle} already holds {held:?} for interface {other:?}; \
             one container gets one set of addresses per network"
        )));
    }
    held.sort_by_key(|n| matches!(n, IpNet::V6(_)));
    Ok(Some(held))
}

/// Assigns new addresses, creating pools named by CIDR on the embedded store if needed.
async fn assign<D: Datastore>(
    ipam: &Ipam<D>,
    ctx: &Context<'_>,
    att: &Attachment,
    handle: &HandleId,
) -> Result<Addresses> {
    if let Some(hl) = &ctx.config.host_local {
        return assign_host_local(ipam, ctx, att, handle, hl).await;
    }
    let args = assign_args(ctx, att, handle);
    let first = ipam.auto_assign(&args).await;
    let got = match first {
        Err(IpamError::PoolNotFound { .. }) if ctx.create_pools => {
            let done = ipam.ensure_pools(&wanted_pools(ctx.config)).await?;
            let again = ipam.auto_assign(&args).await;
            if again.is_err() {
                ipam.undo_ensure(&done).await;
            }
            again
        }
        other => other,
    };
    let got = match got {
        Err(IpamError::NoCandidatePools { .. }) if no_pools_at_all(ipam).await => {
            return Err(CniError::config(
                "no IP pool exists: name a CIDR in ipam.ipv4_pools / ipam.ipv6_pools (created \
                 on first use), give host-local's ipam.ranges, or create a pool with \
                 `ipamctl pool create`",
            ));
        }
        other => other?,
    };
    let addrs: Addresses = got.all().copied().collect();
    ctx.log
        .info(format_args!("ADD {handle}: assigned {addrs:?}"));
    Ok(addrs)
}

/// host-local mode: one address from each range set, in order, from the pools of its
/// ranges (made to exist with their reservations first, on any store: the config
/// defines them). All or nothing.
async fn assign_host_local<D: Datastore>(
    ipam: &Ipam<D>,
    ctx: &Context<'_>,
    att: &Attachment,
    handle: &HandleId,
    hl: &HostLocal,
) -> Result<Addresses> {
    let done = ipam.ensure_pools(&hl.wanted_pools()).await?;
    let mut addrs = Addresses::new();
    for set in &hl.range_sets {
        let v6 = set
            .first()
            .is_some_and(|r| matches!(r.subnet, IpNet::V6(_)));
        let mut args = assign_args(ctx, att, handle);
        args.num4 = u32::from(!v6);
        args.num6 = u32::from(v6);
        let names: Vec<String> = set.iter().map(|r| r.subnet.to_string()).collect();
        (args.pools4, args.pools6) = if v6 {
            (Vec::new(), names)
        } else {
            (names, Vec::new())
        };
        match ipam.auto_assign(&args).await {
            Ok(got) => addrs.extend(got.all().copied()),
            Err(e) => {
                if !addrs.is_empty() {
                    let _ = ipam.release_by_handle(handle).await;
                }
                ipam.undo_ensure(&done).await;
                return Err(e.into());
            }
        }
    }
    ctx.log.info(format_args!(
        "ADD {handle}: assigned {addrs:?} (host-local ranges)"
    ));
    Ok(addrs)
}

/// The pools calico-ipam mode names, as [`Ipam::ensure_pools`] takes them.
fn wanted_pools(config: &PluginConfig) -> Vec<WantedPool> {
    let families = [
        (config.assign_ipv4, &config.ipv4_pools),
        (config.assign_ipv6, &config.ipv6_pools),
    ];
    families
        .iter()
        .filter(|(on, _)| *on)
        .flat_map(|(_, refs)| refs.iter())
        .map(|r| match r {
            PoolRef::Name(name) => WantedPool::Existing(name.clone()),
            PoolRef::Cidr(cidr) => WantedPool::Cidr {
                cidr: *cidr,
                manual: false,
                reserved: Vec::new(),
            },
        })
        .collect()
}

fn assign_args(ctx: &Context<'_>, att: &Attachment, handle: &HandleId) -> AutoAssignArgs {
    let c = ctx.config;
    let mut args = AutoAssignArgs::new(
        ctx.node.clone(),
        u32::from(c.assign_ipv4),
        u32::from(c.assign_ipv6),
    )
    .with_handle(handle.clone());
    args.pools4 = PluginConfig::pool_names(&c.ipv4_pools);
    args.pools6 = PluginConfig::pool_names(&c.ipv6_pools);
    // Pool selectors read the Node's and the Namespace's labels where the store has them.
    args.labels_from_store = Some(LabelsFromStore {
        namespace: att.pod.namespace.clone(),
    });
    let mut attrs = BTreeMap::new();
    attrs.insert("node".to_owned(), ctx.node.to_string());
    if let Some(ns) = &att.pod.namespace {
        attrs.insert("namespace".to_owned(), ns.clone());
    }
    if let Some(pod) = &att.pod.name {
        attrs.insert("pod".to_owned(), pod.clone());
    }
    attrs.insert(
        "timestamp".to_owned(),
        go_time_string(time::OffsetDateTime::now_utc()),
    );
    attrs.insert(ATTR_IFNAME.to_owned(), att.ifname.clone());
    args.attrs = attrs;
    args
}

async fn no_pools_at_all<D: Datastore>(ipam: &Ipam<D>) -> bool {
    ipam.list_pools().await.is_ok_and(|p| p.is_empty())
}
