//! Assignment: `auto_assign` (addresses from the node's blocks, new blocks, or borrowed)
//! and `assign_ip` (one named address).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cidr::BlockCidr;
use crate::error::{Error, Result};
use crate::model::{
    AffinityState, AllocationAttribute, IntendedUse, IpPool, IpamBlock, IpamConfig, IpamHandle,
};
use crate::names::{HandleId, NodeName, fnv1a64};
use crate::selector::Selector;
use crate::store::{Datastore, Labelled, NodeSnapshot, Scope, StoreError, Stored};

use super::{Family, Ipam, Labels, Reservations};

mod family;
mod write;

/// What `auto_assign` is asked for.
#[derive(Clone, Debug)]
pub struct AutoAssignArgs {
    /// IPv4 addresses wanted.
    pub num4: u32,
    /// IPv6 addresses wanted.
    pub num6: u32,
    /// The owner; addresses without a handle can only be released by address.
    pub handle: Option<HandleId>,
    /// Secondary attributes stored with the allocation (node, namespace, pod, ...).
    pub attrs: BTreeMap<String, String>,
    /// The node the addresses are for.
    pub node: NodeName,
    /// The node's labels, for pool node selectors.
    pub node_labels: Labels,
    /// The labels of the pod's namespace, for pool namespace selectors; `None` (no
    /// namespace, or a datastore that cannot tell) matches only pools without one.
    pub namespace_labels: Option<Labels>,
    /// IPv4 pools to use, by name or CIDR; empty means every suitable pool.
    pub pools4: Vec<String>,
    /// IPv6 pools to use, by name or CIDR; empty means every suitable pool.
    pub pools6: Vec<String>,
    /// This request's block limit; the config's applies when it is lower (see
    /// [`IpamConfig::block_limit`]).
    pub max_blocks_per_host: Option<u32>,
    /// What the addresses are for.
    pub intended_use: IntendedUse,
    /// Read the node's labels, and those of the pod's namespace, from the datastore
    /// ([`Datastore::labels`]) in place of `node_labels` and `namespace_labels`; read only
    /// when a stored pool has a selector, so that the common case costs no round trip.
    pub labels_from_store: Option<LabelsFromStore>,
}

/// What [`AutoAssignArgs::labels_from_store`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelsFromStore {
    /// The pod's namespace, whose labels are read too; `None`: no namespace.
    pub namespace: Option<String>,
}

/// Addresses handed out, with their block's prefix length (`10.244.3.17/26`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assigned {
    /// IPv4 addresses.
    pub ipv4: Vec<IpNet>,
    /// IPv6 addresses.
    pub ipv6: Vec<IpNet>,
}

/// What settling an affinity whose block was not in the snapshot found.
enum Settled {
    /// The block is the node's and has room: recreated, or found though the snapshot
    /// left it out.
    Usable(Box<Stored<IpamBlock>>),
    /// The block is the node's (and full).
    Ours,
    /// The affinity was stale and is gone; it no longer counts against the block limit.
    Forgotten,
}

/// State shared by the steps of one `auto_assign` call.
struct Request<'a> {
    args: &'a AutoAssignArgs,
    config: IpamConfig,
    reservations: Reservations,
    attr: AllocationAttribute,
    handle: Option<Stored<IpamHandle>>,
}

impl AutoAssignArgs {
    /// A request for `num4` IPv4 and `num6` IPv6 workload addresses on `node`.
    pub fn new(node: NodeName, num4: u32, num6: u32) -> Self {
        AutoAssignArgs {
            num4,
            num6,
            handle: None,
            attrs: BTreeMap::new(),
            node,
            node_labels: Labels::new(),
            namespace_labels: None,
            pools4: Vec::new(),
            pools6: Vec::new(),
            max_blocks_per_host: None,
            intended_use: IntendedUse::Workload,
            labels_from_store: None,
        }
    }

    /// Sets the owner.
    pub fn with_handle(mut self, handle: HandleId) -> Self {
        self.handle = Some(handle);
        self
    }
}

impl Assigned {
    /// All addresses, IPv4 first.
    pub fn all(&self) -> impl Iterator<Item = &IpNet> {
        self.ipv4.iter().chain(&self.ipv6)
    }
}

impl<D: Datastore> Ipam<D> {
    /// Assigns addresses to a node: from its own blocks first, then from a newly claimed
    /// block, then (without strict affinity) borrowed from other nodes' blocks.
    ///
    /// All or nothing: when not every address can be had, those already taken are released
    /// and the error says how many could be found.
    pub async fn auto_assign(&self, args: &AutoAssignArgs) -> Result<Assigned> {
        let mut snapshot = self.store.node_snapshot(args.node.as_str()).await?;
        let labelled;
        let args = match &args.labels_from_store {
            Some(from) if snapshot.pools.iter().any(|p| has_selector(&p.value)) => {
                labelled = self.with_stored_labels(args, from).await?;
                &labelled
            }
            _ => args,
        };
        let mut req = Request {
            args,
            config: snapshot
                .config
                .as_ref()
                .map(|c| c.value.clone())
                .unwrap_or_default(),
            reservations: Reservations::parse(&snapshot.reservations),
            attr: AllocationAttribute {
                handle_id: args.handle.as_ref().map(|h| h.to_string()),
                secondary: args.attrs.clone(),
                released_at: None,
                ..Default::default()
            },
            handle: None,
        };
        let mut out = Assigned::default();
        let families = [
            (Family::V4, args.num4, &args.pools4),
            (Family::V6, args.num6, &args.pools6),
        ];
        // A request no pool can serve fails before either family claims or takes anything.
        for (family, num, requested) in families {
            if num > 0 {
                precheck(&snapshot, args, family, num, requested)?;
            }
        }
        for (family, num, requested) in families {
            if num == 0 {
                continue;
            }
            let got = self
                .assign_family(&mut snapshot, &mut req, family, num, requested, &mut out)
                .await;
            if let Err(e) = got {
                self.undo(&out).await;
                return Err(e);
            }
        }
        Ok(out)
    }

    /// Assigns one named address to `handle` on `node`, claiming its block for the node if
    /// nobody owns it yet.
    pub async fn assign_ip(
        &self,
        ip: IpAddr,
        handle: Option<&HandleId>,
        attrs: BTreeMap<String, String>,
        node: &NodeName,
    ) -> Result<IpNet> {
        let pool = self.pool_for(ip).await?.ok_or(Error::NotInPool { ip })?;
        if let Some(name) = self.reservations().await?.covering(ip) {
            return Err(Error::Reserved {
                ip,
                reservation: name.to_owned(),
            });
        }
        let cidr = BlockCidr::containing(ip, pool.value.effective_block_size())?;
        let config = self.get_config().await?;
        let attr = AllocationAttribute {
            handle_id: handle.map(|h| h.to_string()),
            secondary: attrs,
            released_at: None,
            ..Default::default()
        };
        let ordinal = cidr.ordinal_of(ip).unwrap_or(0);
        let (config, attr) = (&config, &attr);
        let mut known = None;
        self.retry_with(
            "assigning an address",
            &mut known,
            move |known| async move {
                let result = async {
                    let mut block = match self.store.get::<IpamBlock>(&cidr.name()).await {
                        Ok(b) => b,
                        Err(StoreError::NotFound { .. }) => {
                            self.claim_block_once(node, cidr).await?
                        }
                        Err(e) => return Err(e.into()),
                    };
                    block.value.validate()?;
                    if let Some(owner) = block.value.host().filter(|h| *h != node.as_str()) {
                        if config.strict_affinity {
                            return Err(Error::StrictAffinity {
                                ip,
                                block: cidr.net(),
                                owner: owner.to_owned(),
                            });
                        }
                    }
                    block
                        .value
                        .fold_cooldown(self.now(), config.ip_cooldown_seconds);
                    if !block.value.assign_ordinal(ordinal, attr) {
                        let handle = block
                            .value
                            .attribute_of(ordinal)
                            .and_then(|a| a.handle_id.clone());
                        return Err(Error::AlreadyAssigned { ip, handle });
                    }
                    self.write_assignment(block, attr, 1, known).await
                }
                .await;
                (known, result)
            },
        )
        .await?;
        Ok(cidr.addr_net(ordinal))
    }

    /// `args` with the node's and the namespace's labels the store holds. A node the store
    /// does not know has no labels; a namespace it does not know matches only pools without
    /// a namespace selector.
    async fn with_stored_labels(
        &self,
        args: &AutoAssignArgs,
        from: &LabelsFromStore,
    ) -> Result<AutoAssignArgs> {
        let mut args = args.clone();
        let node = self
            .store
            .labels(Labelled::Node(args.node.as_str()))
            .await?;
        args.node_labels = node.unwrap_or_default();
        args.namespace_labels = match &from.namespace {
            Some(ns) => self.store.labels(Labelled::Namespace(ns)).await?,
            None => None,
        };
        Ok(args)
    }

    /// Settles a confirmed affinity of `node` whose block the snapshot did not show, as
    /// Calico's `getBlockFromAffinity` does: a block that is gone is created again (and
    /// returned), an affinity whose block another node (or none) owns is deleted, a block
    /// of the node's with room is returned, and a full one is left alone.
    async fn settle_affinity(&self, node: &NodeName, cidr: IpNet) -> Result<Settled> {
        let Ok(block) = BlockCidr::new(cidr) else {
            return Ok(Settled::Ours);
        };
        match self.store.get::<IpamBlock>(&block.name()).await {
            Err(StoreError::NotFound { .. }) => match self.claim_block(node, block).await {
                Ok(b) => Ok(Settled::Usable(Box::new(b))),
                Err(Error::BlockOwned { .. }) => {
                    self.release_affinity(block, node, false).await?;
                    Ok(Settled::Forgotten)
                }
                Err(e) => Err(e),
            },
            Ok(b) if b.value.host() != Some(node.as_str()) => {
                // Releasing checks the owner again and leaves another node's block alone.
                self.release_affinity(block, node, false).await?;
                Ok(Settled::Forgotten)
            }
            // Ours with room, though the snapshot did not show it: a store whose node-scoped
            // list missed it (a Kubernetes block Calico rewrote without our node label).
            // Assigning from it writes it back in full.
            Ok(b) if b.value.has_room() => Ok(Settled::Usable(Box::new(b))),
            Ok(_) => Ok(Settled::Ours),
            Err(e) => Err(e.into()),
        }
    }

    /// Releases `node`'s empty blocks of `family` whose pool neither serves this request nor
    /// selects the node any more, as Calico's `prepareAffinityBlocksForHost` does on every
    /// assignment. Best effort: a block in use stays, and a failure here is the next
    /// request's to retry, never this one's.
    async fn release_unselected_blocks(
        &self,
        snapshot: &NodeSnapshot,
        args: &AutoAssignArgs,
        family: Family,
        pools: &[&Stored<IpPool>],
    ) {
        for aff in &snapshot.affinities {
            let cidr = aff.value.cidr;
            let unused = Family::of(&cidr) == family
                && aff.value.state == AffinityState::Confirmed
                && !pools.iter().any(|p| p.value.cidr.contains(&cidr));
            if !unused {
                continue;
            }
            let Some(pool) = snapshot.pools.iter().find(|p| p.value.cidr.contains(&cidr)) else {
                continue;
            };
            if selects(&pool.value.node_selector, Some(&args.node_labels)) {
                continue;
            }
            if let Ok(block) = BlockCidr::new(cidr) {
                let _ = self.release_affinity(block, &args.node, true).await;
            }
        }
    }

    /// Borrows addresses from blocks of other nodes (or of none), in a per-node order.
    async fn borrow(
        &self,
        req: &mut Request<'_>,
        family: Family,
        n: u32,
        in_pools: &(dyn Fn(&IpNet) -> bool + Sync),
    ) -> Result<Vec<IpNet>> {
        let now = self.now();
        let mut blocks: Vec<Stored<IpamBlock>> = self
            .store
            .list::<IpamBlock>(Scope::All)
            .await?
            .into_iter()
            .filter(|b| {
                Family::of(&b.value.cidr) == family
                    && in_pools(&b.value.cidr)
                    && b.value.validate().is_ok()
                    && b.value.has_free_at(now, req.config.ip_cooldown_seconds)
            })
            .collect();
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let start = (fnv1a64(req.args.node.as_str().as_bytes()) % blocks.len() as u64) as usize;
        blocks.rotate_left(start);
        let mut got = Vec::new();
        for block in blocks {
            if got.len() as u32 == n {
                break;
            }
            got.extend(
                self.assign_from_block(block, req, n - got.len() as u32, None)
                    .await?,
            );
        }
        Ok(got)
    }

    /// Releases what a failed `auto_assign` had taken, with no cooldown: the addresses were
    /// never used. Best effort: the caller is already returning the first error, and a
    /// failure here leaves addresses `check` reports.
    async fn undo(&self, out: &Assigned) {
        let requests: Vec<_> = out
            .all()
            .map(|n| super::ReleaseRequest::new(n.addr()))
            .collect();
        let _ = self.release_ips_inner(&requests, true).await;
    }
}

/// The state of `node`'s affinity for `cidr`, when the block names the node.
fn affinity_state(snapshot: &NodeSnapshot, node: &NodeName, cidr: &IpNet) -> Option<AffinityState> {
    snapshot
        .affinities
        .iter()
        .find(|a| a.value.cidr == *cidr && a.value.node == node.as_str())
        .map(|a| a.value.state)
        .filter(|s| *s != AffinityState::PendingDeletion)
}

/// The pools a request may use, in stored order.
pub(crate) fn candidate_pools<'p>(
    pools: &'p [Stored<IpPool>],
    family: Family,
    requested: &[String],
    args: &AutoAssignArgs,
) -> Result<Vec<&'p Stored<IpPool>>> {
    for r in requested {
        if !pools.iter().any(|p| names_pool(r, p)) {
            return Err(Error::PoolNotFound { name: r.clone() });
        }
    }
    let mut refused = Vec::new();
    let mut out = Vec::new();
    for p in pools.iter().filter(|p| Family::of(&p.value.cidr) == family) {
        let named = requested.iter().any(|r| names_pool(r, p));
        if !requested.is_empty() && !named {
            continue;
        }
        // A pool asked for by name is used whatever its selectors say, as Calico does
        // (`determinePools`); being enabled and allowing the use still count.
        let why = if p.value.disabled {
            Some("disabled")
        } else if p.value.is_manual() && !named {
            Some("manual")
        } else if !p.value.allows(args.intended_use) {
            Some("use not allowed")
        } else if !named && !selects(&p.value.node_selector, Some(&args.node_labels)) {
            Some("node selector does not match")
        } else if !named && !selects(&p.value.namespace_selector, args.namespace_labels.as_ref()) {
            Some("namespace selector does not match")
        } else {
            None
        };
        match why {
            None => out.push(p),
            Some(why) if named => refused.push(format!("{} ({why})", p.name)),
            Some(_) => {}
        }
    }
    if out.is_empty() {
        let detail = if refused.is_empty() {
            String::new()
        } else {
            format!(": refused {}", refused.join(", "))
        };
        return Err(Error::NoCandidatePools {
            family: family.name(),
            node: args.node.to_string(),
            detail,
        });
    }
    Ok(out)
}

/// Whether a pool's node or namespace selector can select less than everything.
fn has_selector(pool: &IpPool) -> bool {
    let narrows = |s: &str| !matches!(s.trim(), "" | "all()");
    narrows(&pool.node_selector) || narrows(&pool.namespace_selector)
}

/// Whether a pool's `selector` selects an object with `labels`. An empty selector selects
/// everything, even without labels; any other selects nothing without labels (Calico's
/// rule for a pod without a namespace) and nothing when it does not parse.
fn selects(selector: &str, labels: Option<&Labels>) -> bool {
    if selector.trim().is_empty() {
        return true;
    }
    labels.is_some_and(|l| Selector::parse(selector).is_ok_and(|s| s.matches(l)))
}

/// Refuses a request that no pool can serve or that exceeds what the pools could ever hold.
fn precheck(
    snapshot: &NodeSnapshot,
    args: &AutoAssignArgs,
    family: Family,
    num: u32,
    requested: &[String],
) -> Result<()> {
    let pools = candidate_pools(&snapshot.pools, family, requested, args)?;
    let capacity: u128 = pools.iter().map(|p| pool_capacity(&p.value.cidr)).sum();
    if u128::from(num) > capacity {
        return Err(Error::PoolExhausted {
            family: family.name(),
            requested: num,
            available: u32::try_from(capacity).unwrap_or(u32::MAX),
        });
    }
    Ok(())
}

/// Addresses in a pool, saturating for IPv6 pools larger than 2^127.
fn pool_capacity(net: &IpNet) -> u128 {
    let bits = u32::from(net.max_prefix_len() - net.prefix_len());
    1u128.checked_shl(bits).unwrap_or(u128::MAX)
}

fn names_pool(requested: &str, pool: &Stored<IpPool>) -> bool {
    pool.name == requested
        || requested
            .parse::<IpNet>()
            .is_ok_and(|c| c == pool.value.cidr)
}
