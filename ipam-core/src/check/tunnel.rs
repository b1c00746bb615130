//! The tunnel addresses of deleted nodes, judged as Calico's kube-controllers judges them.
//!
//! A node's IPIP, VXLAN and WireGuard addresses name no pod, so no list of pods can call
//! them leaked. They are the node's own: once the node is gone, and nothing else on it is
//! still in use, they are released (and then its empty blocks and affinities go too). While
//! any other address made for that node is held by a live pod, or by an owner that is
//! neither a pod nor a tunnel, the node's tunnel addresses are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::rules::allocated;
use super::{LiveOwners, Snapshot};
use crate::model::{
    ATTR_NAMESPACE, ATTR_NODE, ATTR_POD, ATTR_TYPE, AllocationAttribute, TUNNEL_TYPES,
    WINDOWS_RESERVED_HANDLE,
};

/// A tunnel address of a node that no longer exists, with what a guarded release needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelLeak {
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block: IpNet,
    /// Its handle (Calico's `ipip-tunnel-addr-<node>` and the like).
    pub handle: Option<String>,
    /// The block's sequence number when it was allocated.
    pub sequence: Option<u64>,
    /// The node it was made for.
    pub node: String,
}

/// What an allocation made for a node says about releasing that node's tunnel addresses.
enum Role {
    Tunnel,
    /// Still in use: a live pod's, or an owner this controller knows nothing of.
    Holds,
    /// Neither (a pod that is gone, a Windows reservation).
    Irrelevant,
}

fn role(attr: &AllocationAttribute, pods: &LiveOwners) -> Role {
    let is = |k: &str| attr.secondary.contains_key(k);
    if attr.handle_id.as_deref() == Some(WINDOWS_RESERVED_HANDLE) {
        Role::Irrelevant
    } else if attr
        .secondary
        .get(ATTR_TYPE)
        .is_some_and(|t| TUNNEL_TYPES.contains(&t.as_str()))
    {
        Role::Tunnel
    } else if is(ATTR_NAMESPACE) && is(ATTR_POD) && !pods.is_live(attr) {
        Role::Irrelevant
    } else {
        Role::Holds
    }
}

/// The tunnel addresses of nodes not in `nodes` that nothing else on the node holds back;
/// `pods` are the cluster's live pods. Addresses cooling down are not looked at.
pub fn dead_node_tunnels(
    snapshot: &Snapshot,
    pods: &LiveOwners,
    nodes: &BTreeSet<String>,
) -> Vec<TunnelLeak> {
    let mut tunnels: BTreeMap<&str, Vec<TunnelLeak>> = BTreeMap::new();
    let mut held: BTreeSet<&str> = BTreeSet::new();
    for b in &snapshot.blocks {
        for (o, ip, attr) in allocated(&b.value) {
            let Some(node) = attr.secondary.get(ATTR_NODE) else {
                continue;
            };
            if attr.released_at.is_some() || nodes.contains(node) {
                continue;
            }
            match role(attr, pods) {
                Role::Tunnel => tunnels.entry(node).or_default().push(TunnelLeak {
                    ip,
                    block: b.value.cidr,
                    handle: attr.handle_id.clone(),
                    sequence: b.value.sequence_number_for_allocation.get(&o).copied(),
                    node: node.clone(),
                }),
                Role::Holds => {
                    held.insert(node);
                }
                Role::Irrelevant => {}
            }
        }
    }
    tunnels
        .into_iter()
        .filter(|(node, _)| !held.contains(node))
        .flat_map(|(_, leaks)| leaks)
        .collect()
}
