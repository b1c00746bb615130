//! Admission: every write through the API meets the rules the allocator keeps, so the server
//! cannot store an object the allocator would not have written.
//!
//! Each kind's rules are the allocator's own functions (`validate_pool`, `validate_config`,
//! the block invariants) plus the cross-object checks the allocator makes before it writes
//! (pool and block overlaps, a pool delete with allocations left). A refusal is the reason,
//! answered as 422 Invalid.

use std::future::Future;

use ipam_core::cidr::{overlaps, parse_cidr_or_ip};
use ipam_core::{
    BlockAffinity, Datastore, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle, NodeName,
    Resource, Scope, StoreError, Stored, validate_config, validate_pool,
};

/// Why a write was not admitted.
#[derive(Debug)]
pub(crate) enum Denied {
    /// The object breaks a rule: the field and why (422).
    Invalid(&'static str, String),
    /// Reading what the rule needs failed.
    Store(StoreError),
}

impl From<StoreError> for Denied {
    fn from(e: StoreError) -> Self {
        Denied::Store(e)
    }
}

fn invalid(field: &'static str, why: impl ToString) -> Denied {
    Denied::Invalid(field, why.to_string())
}

/// The admission rules of one resource kind.
pub(crate) trait Admit: Resource {
    /// Whether `spec` may be stored under `name` (a create or an update).
    fn admit_write<D: Datastore>(
        store: &D,
        name: &str,
        spec: &Self,
    ) -> impl Future<Output = Result<(), Denied>> + Send;

    /// Whether `current` may be deleted.
    fn admit_delete<D: Datastore>(
        _store: &D,
        _current: &Stored<Self>,
    ) -> impl Future<Output = Result<(), Denied>> + Send {
        async { Ok(()) }
    }
}

/// The block invariants, as ipam-core's one checker states them.
fn block_problems(block: &IpamBlock) -> Vec<String> {
    block.problems().iter().map(ToString::to_string).collect()
}

impl Admit for IpPool {
    async fn admit_write<D: Datastore>(store: &D, name: &str, spec: &Self) -> Result<(), Denied> {
        validate_pool(name, spec).map_err(|e| invalid("spec", e))?;
        for other in store.list::<IpPool>(Scope::All).await? {
            if other.name == name {
                // The allocator's update_pool: CIDR and block size never change.
                if other.value.cidr != spec.cidr {
                    return Err(invalid("spec.cidr", "the CIDR of a pool cannot change"));
                }
                if other.value.effective_block_size() != spec.effective_block_size() {
                    let why = "the block size of a pool cannot change";
                    return Err(invalid("spec.blockSize", why));
                }
            } else if overlaps(&other.value.cidr, &spec.cidr) {
                let why = format!(
                    "pool {} overlaps pool {:?} ({})",
                    spec.cidr, other.name, other.value.cidr
                );
                return Err(invalid("spec.cidr", why));
            }
        }
        Ok(())
    }

    async fn admit_delete<D: Datastore>(store: &D, current: &Stored<Self>) -> Result<(), Denied> {
        let blocks = store.list::<IpamBlock>(Scope::All).await?;
        let in_use: u64 = blocks
            .iter()
            .filter(|b| current.value.cidr.contains(&b.value.cidr))
            .map(|b| b.value.in_use() as u64)
            .sum();
        if in_use > 0 {
            let why = format!(
                "pool {:?} has {in_use} addresses in use; release them first (ipamctl pool delete --release)",
                current.name
            );
            return Err(invalid("metadata.name", why));
        }
        Ok(())
    }
}

impl Admit for IpamBlock {
    async fn admit_write<D: Datastore>(store: &D, name: &str, spec: &Self) -> Result<(), Denied> {
        let problems = block_problems(spec);
        if !problems.is_empty() {
            return Err(invalid("spec", problems.join("; ")));
        }
        let cidr = spec.block_cidr().map_err(|e| invalid("spec.cidr", e))?;
        if cidr.name() != name {
            let why = format!("a block over {cidr} must be named {:?}", cidr.name());
            return Err(invalid("metadata.name", why));
        }
        let pools = store.list::<IpPool>(Scope::All).await?;
        if !pools.iter().any(|p| p.value.cidr.contains(&spec.cidr)) {
            let why = format!("block {} lies outside every pool", spec.cidr);
            return Err(invalid("spec.cidr", why));
        }
        for other in store.list::<IpamBlock>(Scope::All).await? {
            if other.name != name && overlaps(&other.value.cidr, &spec.cidr) {
                let why = format!(
                    "block {} overlaps block {:?} ({})",
                    spec.cidr, other.name, other.value.cidr
                );
                return Err(invalid("spec.cidr", why));
            }
        }
        Ok(())
    }
}

impl Admit for BlockAffinity {
    async fn admit_write<D: Datastore>(store: &D, _name: &str, spec: &Self) -> Result<(), Denied> {
        NodeName::new(spec.node.clone()).map_err(|e| invalid("spec.node", e))?;
        if spec.cidr.trunc() != spec.cidr {
            return Err(invalid("spec.cidr", "host bits are set"));
        }
        let pools = store.list::<IpPool>(Scope::All).await?;
        let fits = pools.iter().any(|p| {
            p.value.cidr.contains(&spec.cidr)
                && p.value.effective_block_size() == spec.cidr.prefix_len()
        });
        if !fits {
            let why = format!("{} is not a block of any pool", spec.cidr);
            return Err(invalid("spec.cidr", why));
        }
        Ok(())
    }
}

impl Admit for IpamHandle {
    async fn admit_write<D: Datastore>(_store: &D, name: &str, spec: &Self) -> Result<(), Denied> {
        if spec.handle_id != name {
            let why = format!("handleID {:?} must equal the name", spec.handle_id);
            return Err(invalid("spec.handleID", why));
        }
        ipam_core::HandleId::new(spec.handle_id.clone())
            .map_err(|e| invalid("spec.handleID", e))?;
        for (cidr, count) in &spec.block {
            let net = cidr
                .parse::<ipnet::IpNet>()
                .map_err(|e| invalid("spec.block", format!("{cidr:?}: {e}")))?;
            if net.trunc() != net || *count == 0 {
                let why = format!("{cidr:?}: a block CIDR with a count above 0 is expected");
                return Err(invalid("spec.block", why));
            }
        }
        Ok(())
    }
}

impl Admit for IpamConfig {
    async fn admit_write<D: Datastore>(_store: &D, name: &str, spec: &Self) -> Result<(), Denied> {
        if name != "default" {
            return Err(invalid(
                "metadata.name",
                "the IPAMConfig is named \"default\"",
            ));
        }
        validate_config(spec).map_err(|e| invalid("spec", e))
    }
}

impl Admit for IpReservation {
    async fn admit_write<D: Datastore>(_store: &D, _name: &str, spec: &Self) -> Result<(), Denied> {
        for c in &spec.reserved_cidrs {
            parse_cidr_or_ip(c).map_err(|e| invalid("spec.reservedCIDRs", e))?;
        }
        Ok(())
    }
}
