//! STATUS on any datastore: whether an ADD could succeed now.

use ipam_core::{Datastore, Ipam};

use super::config::{PluginConfig, PoolRef};
use super::error::{CniError, Result};
use super::ops::Context;

/// STATUS: whether an ADD could succeed now: the store answered (it was opened to get
/// here) and every family the config assigns has a usable pool with a free address (or a
/// pool named by CIDR that ADD would create).
pub async fn status<D: Datastore>(ipam: &Ipam<D>, ctx: &Context<'_>) -> Result<()> {
    let not_available = |reason: String| CniError::NotAvailable { reason };
    let usage = ipam
        .utilization(&[])
        .await
        .map_err(|e| not_available(format!("the datastore cannot be read: {e}")))?;
    let pools = ipam
        .list_pools()
        .await
        .map_err(|e| not_available(format!("the datastore cannot be read: {e}")))?;
    let c = ctx.config;
    for (on, v6, refs) in [
        (c.assign_ipv4, false, &c.ipv4_pools),
        (c.assign_ipv6, true, &c.ipv6_pools),
    ] {
        if !on {
            continue;
        }
        let family = if v6 { "IPv6" } else { "IPv4" };
        let would_create = ctx.create_pools
            && refs.iter().any(|r| match r {
                PoolRef::Cidr(cidr) => !pools.iter().any(|p| p.value.cidr == *cidr),
                PoolRef::Name(_) => false,
            });
        let free: u128 = usage
            .iter()
            .filter(|u| matches!(u.cidr, ipnet::IpNet::V6(_)) == v6)
            .filter(|u| {
                pools
                    .iter()
                    .any(|p| p.name == u.name && usable(&p.value, &u.name, refs))
            })
            .map(|u| u.usage.available)
            .sum();
        if free == 0 && !would_create {
            let which = if refs.is_empty() {
                "any usable pool".to_owned()
            } else {
                PluginConfig::pool_names(refs).join(", ")
            };
            return Err(not_available(format!(
                "no {family} address is free in {which}"
            )));
        }
    }
    Ok(())
}

/// Whether ADD would use the pool: enabled, and named by the config, or (when the config
/// names none) automatic.
fn usable(pool: &ipam_core::IpPool, name: &str, refs: &[PoolRef]) -> bool {
    if pool.disabled {
        return false;
    }
    if refs.is_empty() {
        return !pool.is_manual();
    }
    refs.iter().any(|r| match r {
        PoolRef::Name(n) => n == name,
        PoolRef::Cidr(c) => *c == pool.cidr,
    })
}
