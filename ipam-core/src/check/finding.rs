//! What `check` can find: one [`Finding`] per inconsistency, grouped by [`FindingKind`].

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::block::BlockProblem;
use crate::model::AffinityState;

/// One inconsistency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Finding {
    /// Two blocks cover some of the same addresses.
    #[serde(rename_all = "camelCase")]
    OverlappingBlocks {
        /// The first block.
        block: IpNet,
        /// The block overlapping it.
        other: IpNet,
    },
    /// An address is allocated in two (overlapping) blocks.
    #[serde(rename_all = "camelCase")]
    AddressHeldTwice {
        /// The address.
        ip: IpAddr,
        /// The blocks holding it.
        blocks: Vec<IpNet>,
        /// The owners in those blocks, in the same order.
        handles: Vec<Option<String>>,
    },
    /// A block's own arrays disagree (see [`IpamBlock::problems`](crate::model::IpamBlock::problems)).
    #[serde(rename_all = "camelCase")]
    BlockInconsistent {
        /// The block.
        block: IpNet,
        /// What is wrong (stored as its sentence).
        problem: BlockProblem,
    },
    /// A handle's count for a block is not what the block holds for it.
    #[serde(rename_all = "camelCase")]
    HandleCountMismatch {
        /// The handle ID.
        handle: String,
        /// The block's CIDR as the handle keys it.
        block: String,
        /// What the `IPAMHandle` says (0 when it has no entry).
        recorded: u32,
        /// What the block holds for the handle.
        actual: u32,
        /// Whether an `IPAMHandle` object exists at all.
        handle_exists: bool,
    },
    /// An affinity with no block owned by its node.
    #[serde(rename_all = "camelCase")]
    AffinityWithoutBlock {
        /// The affinity's name.
        affinity: String,
        /// Its node.
        node: String,
        /// Its block CIDR.
        block: IpNet,
        /// Its state.
        state: AffinityState,
    },
    /// A block with a host affinity that no confirmed affinity backs.
    #[serde(rename_all = "camelCase")]
    BlockWithoutAffinity {
        /// The block.
        block: IpNet,
        /// The node its `affinity` names.
        node: String,
        /// Addresses allocated in it.
        in_use: usize,
    },
    /// A block in no pool.
    #[serde(rename_all = "camelCase")]
    BlockOutsidePools {
        /// The block.
        block: IpNet,
        /// Addresses allocated in it.
        in_use: usize,
    },
    /// An address whose cooldown is over but which is still held.
    #[serde(rename_all = "camelCase")]
    CooldownExpired {
        /// The address.
        ip: IpAddr,
        /// Its block.
        block: IpNet,
        /// Its former owner, named only by resting entries from earlier versions of ours:
        /// the entry written now holds only `releasedAt`, as Calico's does.
        handle: Option<String>,
        /// When it was released.
        released_at: String,
    },
    /// An allocation whose owner is not in the live list: a leak.
    #[serde(rename_all = "camelCase")]
    LeakedAllocation {
        /// The address.
        ip: IpAddr,
        /// Its block.
        block: IpNet,
        /// Its owner.
        handle: Option<String>,
        /// Its sequence number, to guard the release.
        sequence: Option<u64>,
        /// The `namespace` attribute.
        namespace: Option<String>,
        /// The `pod` attribute.
        pod: Option<String>,
        /// The `node` attribute.
        node: Option<String>,
    },
    /// A block owned by a node that is not in the live list.
    #[serde(rename_all = "camelCase")]
    DeadNodeBlock {
        /// The block.
        block: IpNet,
        /// Its node.
        node: String,
        /// Addresses allocated in it.
        in_use: usize,
    },
}

/// The kinds of [`Finding`], in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FindingKind {
    /// [`Finding::OverlappingBlocks`].
    OverlappingBlocks,
    /// [`Finding::AddressHeldTwice`].
    AddressHeldTwice,
    /// [`Finding::BlockInconsistent`].
    BlockInconsistent,
    /// [`Finding::HandleCountMismatch`].
    HandleCountMismatch,
    /// [`Finding::AffinityWithoutBlock`].
    AffinityWithoutBlock,
    /// [`Finding::BlockWithoutAffinity`].
    BlockWithoutAffinity,
    /// [`Finding::BlockOutsidePools`].
    BlockOutsidePools,
    /// [`Finding::CooldownExpired`].
    CooldownExpired,
    /// [`Finding::LeakedAllocation`].
    LeakedAllocation,
    /// [`Finding::DeadNodeBlock`].
    DeadNodeBlock,
}

impl Finding {
    /// The finding's kind.
    pub fn kind(&self) -> FindingKind {
        match self {
            Finding::OverlappingBlocks { .. } => FindingKind::OverlappingBlocks,
            Finding::AddressHeldTwice { .. } => FindingKind::AddressHeldTwice,
            Finding::BlockInconsistent { .. } => FindingKind::BlockInconsistent,
            Finding::HandleCountMismatch { .. } => FindingKind::HandleCountMismatch,
            Finding::AffinityWithoutBlock { .. } => FindingKind::AffinityWithoutBlock,
            Finding::BlockWithoutAffinity { .. } => FindingKind::BlockWithoutAffinity,
            Finding::BlockOutsidePools { .. } => FindingKind::BlockOutsidePools,
            Finding::CooldownExpired { .. } => FindingKind::CooldownExpired,
            Finding::LeakedAllocation { .. } => FindingKind::LeakedAllocation,
            Finding::DeadNodeBlock { .. } => FindingKind::DeadNodeBlock,
        }
    }
}

impl FindingKind {
    /// Every kind, in report order.
    pub const ALL: [FindingKind; 10] = [
        FindingKind::OverlappingBlocks,
        FindingKind::AddressHeldTwice,
        FindingKind::BlockInconsistent,
        FindingKind::HandleCountMismatch,
        FindingKind::AffinityWithoutBlock,
        FindingKind::BlockWithoutAffinity,
        FindingKind::BlockOutsidePools,
        FindingKind::CooldownExpired,
        FindingKind::LeakedAllocation,
        FindingKind::DeadNodeBlock,
    ];

    /// A short heading for reports.
    pub fn title(self) -> &'static str {
        match self {
            FindingKind::OverlappingBlocks => "overlapping blocks",
            FindingKind::AddressHeldTwice => "addresses held twice",
            FindingKind::BlockInconsistent => "blocks whose arrays disagree",
            FindingKind::HandleCountMismatch => "handles whose counts disagree with blocks",
            FindingKind::AffinityWithoutBlock => "affinities without a block",
            FindingKind::BlockWithoutAffinity => "blocks without a confirmed affinity",
            FindingKind::BlockOutsidePools => "blocks outside every pool",
            FindingKind::CooldownExpired => "addresses held past their cooldown",
            FindingKind::LeakedAllocation => "leaked allocations (owner not live)",
            FindingKind::DeadNodeBlock => "blocks of nodes not live",
        }
    }
}

impl Finding {
    /// Whether the finding breaks an invariant the allocator keeps after every operation,
    /// even one cut short by a crash or a lost race: no two blocks overlap, no address is
    /// held twice, a block's arrays agree, handle counts equal what the blocks hold, and a
    /// block holds addresses only for a node whose affinity is confirmed (a pending claim
    /// owns nothing). The other findings are states an interrupted claim or release, an
    /// operator's change or the passing of time may leave, which `gc` and repairs tidy.
    pub fn breaks_invariant(&self) -> bool {
        match self {
            Finding::OverlappingBlocks { .. }
            | Finding::AddressHeldTwice { .. }
            | Finding::BlockInconsistent { .. }
            | Finding::HandleCountMismatch { .. } => true,
            Finding::BlockWithoutAffinity { in_use, .. } => *in_use > 0,
            Finding::AffinityWithoutBlock { .. }
            | Finding::BlockOutsidePools { .. }
            | Finding::CooldownExpired { .. }
            | Finding::LeakedAllocation { .. }
            | Finding::DeadNodeBlock { .. } => false,
        }
    }
}

/// An optional owner or attribute as reports print it (`-` for none).
fn or_dash(o: &Option<String>) -> &str {
    o.as_deref().unwrap_or("-")
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::OverlappingBlocks { block, other } => {
                write!(f, "block {block} overlaps block {other}")
            }
            Finding::AddressHeldTwice {
                ip,
                blocks,
                handles,
            } => {
                let owners: Vec<&str> = handles.iter().map(or_dash).collect();
                write!(f, "{ip} is held in {blocks:?} by {owners:?}")
            }
            Finding::BlockInconsistent { block, problem } => write!(f, "block {block}: {problem}"),
            Finding::HandleCountMismatch {
                handle,
                block,
                recorded,
                actual,
                handle_exists,
            } => {
                let missing = if *handle_exists {
                    ""
                } else {
                    " (no IPAMHandle)"
                };
                write!(
                    f,
                    "handle {handle}{missing} records {recorded} in {block}, "
                )?;
                write!(f, "the block holds {actual}")
            }
            Finding::AffinityWithoutBlock { .. } | Finding::BlockWithoutAffinity { .. } => {
                fmt_ownership(self, f)
            }
            Finding::BlockOutsidePools { block, in_use } => {
                write!(f, "block {block} ({in_use} in use) is in no pool")
            }
            Finding::CooldownExpired { .. } | Finding::LeakedAllocation { .. } => {
                fmt_unowned(self, f)
            }
            Finding::DeadNodeBlock {
                block,
                node,
                in_use,
            } => write!(f, "block {block} of node {node} ({in_use} in use)"),
        }
    }
}

/// The findings about who owns a block: an affinity and a block that do not back each other.
fn fmt_ownership(finding: &Finding, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match finding {
        Finding::AffinityWithoutBlock {
            affinity,
            node,
            block,
            state,
        } => write!(
            f,
            "affinity {affinity} ({state:?}) of {node} for {block}: no such block of {node}"
        ),
        Finding::BlockWithoutAffinity {
            block,
            node,
            in_use,
        } => write!(
            f,
            "block {block} says host:{node} ({in_use} in use) but no confirmed affinity backs it"
        ),
        // Display routes only the two findings above here.
        other => write!(f, "{other:?}"),
    }
}

/// The findings about an address held with no live owner: past its cooldown, or leaked.
fn fmt_unowned(finding: &Finding, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match finding {
        Finding::CooldownExpired {
            ip,
            handle,
            released_at,
            ..
        } => write!(
            f,
            "{ip} (was {}) released at {released_at} is past its cooldown",
            or_dash(handle)
        ),
        Finding::LeakedAllocation {
            ip,
            handle,
            sequence,
            namespace,
            pod,
            ..
        } => {
            let seq = sequence.map_or_else(|| "-".into(), |s| s.to_string());
            let (handle, namespace, pod) = (or_dash(handle), or_dash(namespace), or_dash(pod));
            write!(f, "{ip} handle={handle} pod={namespace}/{pod} seq={seq}")
        }
        // Display routes only the two findings above here.
        other => write!(f, "{other:?}"),
    }
}
