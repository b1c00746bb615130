//! A block's own consistency: its arrays must agree with its CIDR and with each other.
//!
//! One function per rule; [`IpamBlock::problems`] runs them all. Each [`BlockProblem`] knows
//! whether it makes the block unsafe for assignment or release ([`BlockProblem::is_unsafe`]),
//! which is what [`IpamBlock::validate`] refuses.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::IpamBlock;

/// One way a block's arrays disagree. Its text (Display) is one sentence, and it is stored
/// as that text in reports, so that reports keep reading as before.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum BlockProblem {
    /// The CIDR is not a valid block (host bits set, size out of range).
    InvalidCidr {
        /// Why, as the CIDR check says it.
        reason: String,
    },
    /// The number of allocation slots is not the block's size.
    SlotCount {
        /// Slots in `allocations`.
        slots: usize,
        /// Addresses in the CIDR.
        size: usize,
    },
    /// A free ordinal lies outside the block.
    FreeOutside {
        /// The ordinal.
        ordinal: u32,
    },
    /// A free ordinal is listed twice (it would be handed out twice).
    FreeTwice {
        /// The ordinal.
        ordinal: u32,
    },
    /// An ordinal is both free and allocated (it would be handed out while held).
    FreeAndAllocated {
        /// The ordinal.
        ordinal: u32,
    },
    /// An ordinal is neither free nor allocated: an address lost to assignment.
    Lost {
        /// The ordinal.
        ordinal: u32,
    },
    /// An allocation points past `attributes`.
    MissingAttribute {
        /// The ordinal.
        ordinal: u32,
        /// The index it points at.
        attribute: u32,
    },
    /// An attribute no allocation points at (the next write drops it).
    UnusedAttribute {
        /// Its index.
        attribute: u32,
    },
}

impl BlockProblem {
    /// Whether assignment or release could not use the block safely. A lost ordinal or an
    /// unused attribute is harmless untidiness: the next write tidies the latter, and
    /// `ipamctl check` reports both.
    pub fn is_unsafe(&self) -> bool {
        !matches!(
            self,
            BlockProblem::Lost { .. } | BlockProblem::UnusedAttribute { .. }
        )
    }
}

impl IpamBlock {
    /// Every way the block's arrays disagree, in a stable order; empty when consistent.
    pub fn problems(&self) -> Vec<BlockProblem> {
        let size = match self.block_cidr() {
            Ok(c) => c.size() as usize,
            Err(e) => {
                return vec![BlockProblem::InvalidCidr {
                    reason: e.to_string(),
                }];
            }
        };
        let mut problems: Vec<BlockProblem> = slot_count(self, size).into_iter().collect();
        let (free, free_problems) = free_list(self, size);
        problems.extend(free_problems);
        let (referenced, slot_problems) = slots(self, &free);
        problems.extend(slot_problems);
        problems.extend(unused_attributes(&referenced));
        problems
    }
}

/// The slot count must be the CIDR's size.
fn slot_count(b: &IpamBlock, size: usize) -> Option<BlockProblem> {
    (b.allocations.len() != size).then_some(BlockProblem::SlotCount {
        slots: b.allocations.len(),
        size,
    })
}

/// Every free ordinal lies inside the block, once, and is not allocated. Returns which slots
/// are free, indexed by ordinal, for [`slots`].
///
/// A bitmap rather than a hash set: every assignment validates the block it reads, and
/// hashing each free ordinal was most of a steady-state `auto_assign` on `MemoryStore`.
fn free_list(b: &IpamBlock, size: usize) -> (Vec<bool>, Vec<BlockProblem>) {
    // Never longer than the slot array, so a huge CIDR does not make a huge bitmap.
    let mut free = vec![false; size.min(b.allocations.len())];
    // Ordinals inside the block but past its slots: only when the slot count is wrong.
    let mut past_slots = HashSet::new();
    let mut problems = Vec::new();
    for &ordinal in &b.unallocated {
        let o = ordinal as usize;
        if o >= size {
            problems.push(BlockProblem::FreeOutside { ordinal });
            continue;
        }
        let first = match free.get_mut(o) {
            Some(seen) => !std::mem::replace(seen, true),
            None => past_slots.insert(ordinal),
        };
        if !first {
            problems.push(BlockProblem::FreeTwice { ordinal });
        } else if b.allocations.get(o).is_some_and(Option::is_some) {
            problems.push(BlockProblem::FreeAndAllocated { ordinal });
        }
    }
    (free, problems)
}

/// Every slot is free or points at an attribute that exists. Returns which attributes are
/// pointed at, for [`unused_attributes`].
fn slots(b: &IpamBlock, free: &[bool]) -> (Vec<bool>, Vec<BlockProblem>) {
    let mut referenced = vec![false; b.attributes.len()];
    let mut problems = Vec::new();
    for (o, slot) in b.allocations.iter().enumerate() {
        let ordinal = o as u32;
        match *slot {
            None if !free.get(o).copied().unwrap_or(false) => {
                problems.push(BlockProblem::Lost { ordinal })
            }
            None => {}
            Some(attribute) => match referenced.get_mut(attribute as usize) {
                Some(r) => *r = true,
                None => problems.push(BlockProblem::MissingAttribute { ordinal, attribute }),
            },
        }
    }
    (referenced, problems)
}

/// Every attribute is pointed at by some slot.
fn unused_attributes(referenced: &[bool]) -> impl Iterator<Item = BlockProblem> + '_ {
    (0..referenced.len() as u32)
        .filter(|&i| !referenced[i as usize])
        .map(|attribute| BlockProblem::UnusedAttribute { attribute })
}

const INVALID_CIDR: &str = "its CIDR is invalid: ";

impl fmt::Display for BlockProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockProblem::InvalidCidr { reason } => write!(f, "{INVALID_CIDR}{reason}"),
            BlockProblem::SlotCount { slots, size } => {
                write!(f, "has {slots} allocation slots for {size} addresses")
            }
            BlockProblem::FreeOutside { ordinal } => {
                write!(f, "free ordinal {ordinal} is outside the block")
            }
            BlockProblem::FreeTwice { ordinal } => write!(f, "ordinal {ordinal} is free twice"),
            BlockProblem::FreeAndAllocated { ordinal } => {
                write!(f, "ordinal {ordinal} is both free and allocated")
            }
            BlockProblem::Lost { ordinal } => {
                write!(f, "ordinal {ordinal} is neither free nor allocated")
            }
            BlockProblem::MissingAttribute { ordinal, attribute } => {
                write!(
                    f,
                    "ordinal {ordinal} points at missing attribute {attribute}"
                )
            }
            BlockProblem::UnusedAttribute { attribute } => {
                write!(f, "attribute {attribute} is not used by any allocation")
            }
        }
    }
}

impl From<BlockProblem> for String {
    fn from(p: BlockProblem) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for BlockProblem {
    /// Why the text is no problem's: itself, quoted (serde wraps it in its error).
    type Error = String;

    /// Reads back what Display wrote (a stored report).
    fn try_from(text: String) -> Result<Self, String> {
        let unknown = || format!("not a block problem: {text:?}");
        if let Some(reason) = text.strip_prefix(INVALID_CIDR) {
            return Ok(BlockProblem::InvalidCidr {
                reason: reason.to_owned(),
            });
        }
        // Every other text is words and numbers: match the words, take the numbers.
        let words: Vec<&str> = text.split(' ').collect();
        let n = |i: usize| words.get(i).and_then(|w| w.parse::<u32>().ok());
        let shape: Vec<&str> = words
            .iter()
            .map(|w| if w.parse::<u32>().is_ok() { "#" } else { w })
            .collect();
        let problem = match shape.join(" ").as_str() {
            "has # allocation slots for # addresses" => BlockProblem::SlotCount {
                slots: n(1).ok_or_else(unknown)? as usize,
                size: n(5).ok_or_else(unknown)? as usize,
            },
            "free ordinal # is outside the block" => BlockProblem::FreeOutside {
                ordinal: n(2).ok_or_else(unknown)?,
            },
            "ordinal # is free twice" => BlockProblem::FreeTwice {
                ordinal: n(1).ok_or_else(unknown)?,
            },
            "ordinal # is both free and allocated" => BlockProblem::FreeAndAllocated {
                ordinal: n(1).ok_or_else(unknown)?,
            },
            "ordinal # is neither free nor allocated" => BlockProblem::Lost {
                ordinal: n(1).ok_or_else(unknown)?,
            },
            "ordinal # points at missing attribute #" => BlockProblem::MissingAttribute {
                ordinal: n(1).ok_or_else(unknown)?,
                attribute: n(6).ok_or_else(unknown)?,
            },
            "attribute # is not used by any allocation" => BlockProblem::UnusedAttribute {
                attribute: n(1).ok_or_else(unknown)?,
            },
            _ => return Err(unknown()),
        };
        Ok(problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_reads_back_from_its_text() {
        let all = [
            BlockProblem::InvalidCidr {
                reason: "host bits are set".into(),
            },
            BlockProblem::SlotCount { slots: 3, size: 8 },
            BlockProblem::FreeOutside { ordinal: 99 },
            BlockProblem::FreeTwice { ordinal: 1 },
            BlockProblem::FreeAndAllocated { ordinal: 2 },
            BlockProblem::Lost { ordinal: 3 },
            BlockProblem::MissingAttribute {
                ordinal: 4,
                attribute: 9,
            },
            BlockProblem::UnusedAttribute { attribute: 5 },
        ];
        for p in all {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("{:?}", p.to_string()), "stored as its text");
            assert_eq!(serde_json::from_str::<BlockProblem>(&json).unwrap(), p);
        }
        for bad in ["", "ordinal x is free twice", "ordinal 1 is free thrice"] {
            assert!(BlockProblem::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }
}
