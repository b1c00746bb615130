//! The stored resources, field for field as Calico's `crd.projectcalico.org/v1` specs.
//!
//! Every type here is the `spec` of one custom resource; names live beside the spec in
//! [`Stored`](crate::store::Stored), as they do in `metadata.name`. JSON names, omitted
//! fields and nulls follow Calico so that objects written by either side read on the other.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Attribute key of the node an allocation was made for.
pub const ATTR_NODE: &str = "node";
/// Attribute key of the pod's namespace.
pub const ATTR_NAMESPACE: &str = "namespace";
/// Attribute key of the pod's name.
pub const ATTR_POD: &str = "pod";
/// Attribute key of the allocation time (Go's `time.Time.String()` format, as Calico writes).
pub const ATTR_TIMESTAMP: &str = "timestamp";
/// Attribute key of what a node's own address is for (Calico's `type`).
pub const ATTR_TYPE: &str = "type";
/// The `type` values Calico gives a node's IPIP, VXLAN and WireGuard tunnel addresses.
pub const TUNNEL_TYPES: [&str; 5] = [
    "ipipTunnelAddress",
    "vxlanTunnelAddress",
    "vxlanV6TunnelAddress",
    "wireguardTunnelAddress",
    "wireguardV6TunnelAddress",
];
/// The handle of the addresses Calico reserves in each block on Windows nodes; they go
/// with their block and are never collected on their own.
pub const WINDOWS_RESERVED_HANDLE: &str = "windows-reserved-ipam-handle";

/// An `IPPool`: a CIDR that blocks are carved from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpPool {
    /// The pool's network.
    pub cidr: IpNet,
    /// Prefix length of each block; 0 means the family default (26 or 122).
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub block_size: u8,
    /// Calico selector over node labels; empty means `all()`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_selector: String,
    /// Calico selector over namespace labels (stored, not evaluated by the allocator).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_selector: String,
    /// A disabled pool hands out nothing new.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// What addresses of this pool may be used for; empty means `Workload` and `Tunnel`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_uses: Vec<IntendedUse>,
    /// `Manual` pools are used only when a request names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_mode: Option<AssignmentMode>,
    /// Kept for Calico's dataplane; the allocator does not read it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nat_outgoing: bool,
    /// Kept for Calico's dataplane; the allocator does not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_mode: Option<String>,
    /// Kept for Calico's dataplane; the allocator does not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_mode: Option<String>,
    /// Kept for Calico's dataplane; the allocator does not read it.
    #[serde(
        rename = "disableBGPExport",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_bgp_export: bool,
    /// Fields this version does not know, kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What an address is for, matched against a pool's `allowedUses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IntendedUse {
    /// A pod or container interface.
    Workload,
    /// A tunnel endpoint (IPIP, VXLAN, WireGuard).
    Tunnel,
    /// A Service load balancer address.
    LoadBalancer,
}

/// How a pool takes part in automatic assignment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignmentMode {
    /// Candidates for every automatic assignment.
    #[default]
    Automatic,
    /// Used only when a request names the pool.
    Manual,
}

/// An `IPAMBlock`: one block of a pool and who holds each of its addresses.
///
/// Go writes the nil slices and maps of a fresh or old block as `null` (Calico's `newBlock`
/// leaves `attributes` nil), so those fields read a missing value or `null` as empty; the
/// three arrays are always written as arrays. A slot count that then does not match the
/// CIDR is for [`IpamBlock::validate`] to refuse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamBlock {
    /// The block's network; its size never changes once written.
    pub cidr: IpNet,
    /// `host:<node>` or `virtual:<name>`; absent when the block has no affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// When the affinity was claimed (RFC 3339). Calico's etcd model spells it
    /// `affinity_claim_time`; it is read under either name and written as the CRD's.
    #[serde(
        default,
        alias = "affinity_claim_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub affinity_claim_time: Option<String>,
    /// One entry per ordinal: `null` when free, else an index into `attributes`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub allocations: Vec<Option<u32>>,
    /// Free ordinals, oldest free first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub unallocated: VecDeque<u32>,
    /// Owners of allocations, shared by ordinals with equal attributes. Each entry is behind
    /// an `Arc` so that copying a block (every read of a store) copies pointers, not strings.
    #[serde(default, deserialize_with = "null_as_default")]
    pub attributes: Vec<Arc<AllocationAttribute>>,
    /// Raised on every write of the block.
    #[serde(default, deserialize_with = "null_as_default")]
    pub sequence_number: u64,
    /// The block's sequence number when each ordinal was allocated, keyed by the ordinal
    /// as text on the wire. Missing on blocks from before sequence numbers; Calico creates
    /// the map on first use, so an empty one is left out.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub sequence_number_for_allocation: BTreeMap<u32, u64>,
    /// Soft-delete marker: readers treat a deleted block as absent.
    #[serde(default, deserialize_with = "null_as_default")]
    pub deleted: bool,
    /// Deprecated in Calico (the IPAMConfig setting is used); kept for the wire.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Fields this version does not know (the etcd model's `hostAffinity`, later Calico
    /// fields), kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The owner of one or more allocations in a block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationAttribute {
    /// The handle that owns the allocation.
    #[serde(rename = "handle_id", default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// Free-form details: node, namespace, pod, timestamp, type, ...
    /// (Calico's `ActiveOwnerAttrs`; older Calico writes an empty one as `null`.)
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub secondary: BTreeMap<String, String>,
    /// The other owner during a KubeVirt live migration (the target pod). The allocator
    /// never sets it; it is kept so that our writes do not drop Calico's.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub alternate_owner_attrs: BTreeMap<String, String>,
    /// Set when the allocation was released under an IP cooldown (RFC 3339). Such an entry
    /// holds nothing else: an address cooling down has no owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
    /// Fields this version does not know, kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A `BlockAffinity`: the claim of one node on one block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinity {
    /// The block's CIDR.
    pub cidr: IpNet,
    /// The node (or virtual owner) name.
    pub node: String,
    /// Where the two-phase claim stands.
    pub state: AffinityState,
    /// `host` or `virtual`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub affinity_type: Option<String>,
    /// Soft-delete marker; Calico writes it as the string `"true"` or `"false"`.
    #[serde(default, with = "string_bool")]
    pub deleted: bool,
    /// Fields this version does not know, kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The state of a block affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    /// Written before the block: counts as no affinity.
    Pending,
    /// The node owns the block.
    Confirmed,
    /// Being released: counts as no affinity.
    PendingDeletion,
}

/// An `IPAMHandle`: the index from an owner to the blocks holding its addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamHandle {
    /// The handle ID, equal to the object's name.
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// How many addresses the handle holds in each block, keyed by block CIDR. Go writes a
    /// handle with no blocks as `null`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub block: BTreeMap<String, u32>,
    /// Soft-delete marker.
    #[serde(default, deserialize_with = "null_as_default")]
    pub deleted: bool,
    /// Fields this version does not know, kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The cluster-wide `IPAMConfig` (its name is always `default`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConfig {
    /// Never borrow addresses from another node's block.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Claim new blocks when a node's blocks are full.
    #[serde(default = "default_true")]
    pub auto_allocate_blocks: bool,
    /// Blocks one node may hold; 0 means the default of 20.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub max_blocks_per_host: u32,
    /// Seconds a released address rests before reuse (0..=1200).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ip_cooldown_seconds: u32,
    /// Fields this version does not know, kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// An `IPReservation`: addresses the allocator must never hand out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpReservation {
    /// Reserved CIDRs or single addresses, as written by the user.
    #[serde(rename = "reservedCIDRs", default)]
    pub reserved_cidrs: Vec<String>,
}

impl IpPool {
    /// A pool over `cidr` with Calico's defaults for everything else.
    pub fn new(cidr: IpNet) -> Self {
        IpPool {
            cidr,
            block_size: 0,
            node_selector: String::new(),
            namespace_selector: String::new(),
            disabled: false,
            allowed_uses: Vec::new(),
            assignment_mode: None,
            nat_outgoing: false,
            ipip_mode: None,
            vxlan_mode: None,
            disable_bgp_export: false,
            extra: serde_json::Map::new(),
        }
    }

    /// The block prefix length in force, with the family default applied.
    pub fn effective_block_size(&self) -> u8 {
        match (self.block_size, self.cidr) {
            (0, IpNet::V4(_)) => 26,
            (0, IpNet::V6(_)) => 122,
            (size, _) => size,
        }
    }

    /// Whether the pool may serve `use_`; an empty list allows workloads and tunnels.
    pub fn allows(&self, use_: IntendedUse) -> bool {
        if self.allowed_uses.is_empty() {
            return matches!(use_, IntendedUse::Workload | IntendedUse::Tunnel);
        }
        self.allowed_uses.contains(&use_)
    }

    /// Whether the pool is used only when named.
    pub fn is_manual(&self) -> bool {
        self.assignment_mode == Some(AssignmentMode::Manual)
    }
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
            ip_cooldown_seconds: 0,
            extra: serde_json::Map::new(),
        }
    }
}

impl IpamConfig {
    /// The name of the one config object.
    pub const NAME: &'static str = "default";
    /// What `maxBlocksPerHost: 0` stands for.
    pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 20;
    /// The largest cooldown accepted.
    pub const MAX_COOLDOWN_SECONDS: u32 = 1200;
    /// The largest `maxBlocksPerHost` accepted (the bound Calico's CRD sets).
    pub const MAX_MAX_BLOCKS_PER_HOST: u32 = 1_000_000;

    /// The block limit in force.
    pub fn effective_max_blocks(&self) -> u32 {
        self.block_limit(None)
    }

    /// The block limit for a request that asks for `requested` (0 or `None`: not set), as
    /// Calico merges them: the lower of the two that are set, and 20 when neither is.
    pub fn block_limit(&self, requested: Option<u32>) -> u32 {
        match (requested.unwrap_or(0), self.max_blocks_per_host) {
            (0, 0) => Self::DEFAULT_MAX_BLOCKS_PER_HOST,
            (0, global) => global,
            (asked, 0) => asked,
            (asked, global) => asked.min(global),
        }
    }
}

impl IpamHandle {
    /// An empty handle.
    pub fn new(handle_id: &str) -> Self {
        IpamHandle {
            handle_id: handle_id.to_owned(),
            block: BTreeMap::new(),
            deleted: false,
            extra: serde_json::Map::new(),
        }
    }

    /// Addresses held across all blocks.
    pub fn total(&self) -> u64 {
        self.block.values().map(|&n| u64::from(n)).sum()
    }
}

fn default_true() -> bool {
    true
}

fn is_zero_u8(n: &u8) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// Reads a missing field (with `#[serde(default)]`) or Go's `null` (a nil slice or map
/// without `omitempty`) as the empty value.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Calico's `BlockAffinity.deleted` is a string; accept a bool too, write the string.
mod string_bool {
    use super::*;

    pub fn serialize<S: Serializer>(value: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *value { "true" } else { "false" })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bool(bool),
            Str(String),
        }
        match Either::deserialize(d)? {
            Either::Bool(b) => Ok(b),
            Either::Str(s) if s.is_empty() || s == "false" => Ok(false),
            Either::Str(s) if s == "true" => Ok(true),
            Either::Str(s) => Err(serde::de::Error::custom(format!(
                "deleted must be \"true\" or \"false\", not {s:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
