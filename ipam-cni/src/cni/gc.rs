//! GC on any datastore.
//!
//! GC releases every allocation of this network on this node whose attachment is not one
//! the runtime still uses (`cni.dev/valid-attachments`). An allocation belongs to the
//! network when its handle is `<network>.<container id>`, to the node when its `node`
//! attribute names it (or, lacking one, when its block is affine to the node), and to an
//! attachment by container ID and the `ifname` attribute (allocations written without one,
//! by calico-ipam, match on the container ID alone). GC goes on past failures and reports
//! them all at the end.

use std::collections::{BTreeSet, HashSet};

use ipam_core::{Datastore, Error as IpamError, HandleId, Ipam, IpamBlock, Scope};

use super::error::{CniError, Result};
use super::ops::{ATTR_IFNAME, Context};

/// An attachment the runtime still uses: container ID and interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValidAttachment {
    /// The container ID.
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// An attachment as the config lists it (`cni.dev/attachments`).
#[derive(Debug, serde::Deserialize)]
pub struct WireAttachment {
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// GC: releases stale allocations; returns the handles released.
pub async fn gc<D: Datastore>(
    ipam: &Ipam<D>,
    ctx: &Context<'_>,
    valid: &[ValidAttachment],
) -> Result<Vec<String>> {
    let blocks = ipam
        .store()
        .list::<IpamBlock>(Scope::All)
        .await
        .map_err(IpamError::from)?;
    let stale = stale_handles(
        ctx,
        &blocks.into_iter().map(|b| b.value).collect::<Vec<_>>(),
        valid,
    );
    let mut released = Vec::new();
    let mut failures = Vec::new();
    for handle in stale {
        let id = match HandleId::new(handle.as_str()) {
            Ok(id) => id,
            Err(e) => {
                failures.push(format!("{handle}: {e}"));
                continue;
            }
        };
        match ipam.release_by_handle(&id).await {
            Ok(ips) => {
                ctx.log.info(format_args!("GC released {handle}: {ips:?}"));
                released.push(handle);
            }
            Err(IpamError::HandleNotFound { .. }) => {}
            Err(e) => failures.push(format!("{handle}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(released)
    } else {
        Err(CniError::GcIncomplete { failures })
    }
}

/// The handles of this network and node whose attachment is not valid.
fn stale_handles(
    ctx: &Context<'_>,
    blocks: &[IpamBlock],
    valid: &[ValidAttachment],
) -> BTreeSet<String> {
    let prefix = format!("{}.", ctx.config.network);
    let node = ctx.node.as_str();
    let host = ctx.node.host_affinity();
    let exact: HashSet<(&str, &str)> = valid
        .iter()
        .map(|v| (v.container_id.as_str(), v.ifname.as_str()))
        .collect();
    let containers: HashSet<&str> = valid.iter().map(|v| v.container_id.as_str()).collect();
    let mut stale = BTreeSet::new();
    for block in blocks {
        let affine = block.affinity.as_deref() == Some(host.as_str());
        for attr in &block.attributes {
            let Some(handle) = attr.handle_id.as_deref() else {
                continue;
            };
            let Some(container) = handle.strip_prefix(&prefix) else {
                continue;
            };
            let ours = match attr.secondary.get("node") {
                Some(n) => n == node,
                None => affine,
            };
            if !ours || attr.released_at.is_some() {
                continue;
            }
            let in_use = match attr.secondary.get(ATTR_IFNAME) {
                Some(ifname) => exact.contains(&(container, ifname.as_str())),
                None => containers.contains(container),
            };
            if !in_use {
                stale.insert(handle.to_owned());
            }
        }
    }
    stale
}
