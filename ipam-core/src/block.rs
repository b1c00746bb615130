//! Operations on one block value: assign, release, cooldown; its consistency rules are in
//! [`problem`].
//!
//! These are plain `&mut self` methods with no IO. Each returns what it changed and bumps
//! `sequenceNumber` once if it changed anything; the caller decides whether to write the
//! block. The free list is a FIFO queue: assignment pops the head, release pushes the tail.

use std::sync::Arc;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cidr::BlockCidr;
use crate::error::{Error, Result};
use crate::model::{AllocationAttribute, IpamBlock};

mod problem;

pub use self::problem::BlockProblem;

/// What happened to one address asked to be released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Freed: back at the tail of the free queue.
    Released,
    /// Released into cooldown: it returns to the free queue once the cooldown has passed.
    CoolingDown,
    /// It was not allocated (already released, or never assigned): nothing to do.
    NotAllocated,
    /// Its sequence number is not the one given: it was reallocated since; left alone.
    BadSequenceNumber {
        /// The allocation's current sequence number, if any.
        current: Option<u64>,
    },
    /// It belongs to another handle than the one given; left alone.
    HandleMismatch {
        /// The current owner.
        owner: Option<String>,
    },
}

impl ReleaseOutcome {
    /// Whether the release was refused because the address changed hands since the caller
    /// looked (a re-evaluate outcome: the caller reads again before acting).
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            ReleaseOutcome::BadSequenceNumber { .. } | ReleaseOutcome::HandleMismatch { .. }
        )
    }
}

/// How a release treats the freed ordinal.
#[derive(Clone, Copy, Debug)]
pub enum Cooldown<'a> {
    /// Free at once.
    None,
    /// Keep it allocated, stamped with this release time (RFC 3339).
    Until(&'a str),
}

impl IpamBlock {
    /// A new, empty block. `sequence_number` must not repeat any earlier block's (Calico
    /// uses the creation time in nanoseconds).
    pub fn new(
        cidr: BlockCidr,
        affinity: Option<String>,
        sequence_number: u64,
        claim_time: Option<String>,
    ) -> Self {
        let size = cidr.size();
        IpamBlock {
            cidr: cidr.net(),
            affinity,
            affinity_claim_time: claim_time,
            allocations: vec![None; size as usize],
            unallocated: (0..size).collect(),
            attributes: Vec::new(),
            sequence_number,
            sequence_number_for_allocation: Default::default(),
            deleted: false,
            strict_affinity: false,
            extra: Default::default(),
        }
    }

    /// The block's CIDR, validated.
    pub fn block_cidr(&self) -> Result<BlockCidr> {
        BlockCidr::new(self.cidr)
    }

    /// The node named by a `host:` affinity.
    pub fn host(&self) -> Option<&str> {
        self.affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
    }

    /// Whether an assignment could find an address here: a free ordinal, or one cooling down
    /// (its cooldown may have passed). A block without either is full for the allocator.
    pub fn has_room(&self) -> bool {
        !self.unallocated.is_empty() || self.attributes.iter().any(|a| a.released_at.is_some())
    }

    /// Ordinals that are allocated, in cooldown or not.
    pub fn in_use(&self) -> usize {
        self.allocations.iter().filter(|a| a.is_some()).count()
    }

    /// Whether no ordinal is allocated (cooldown entries count as allocated).
    pub fn is_empty(&self) -> bool {
        self.allocations.iter().all(Option::is_none)
    }

    /// The attribute of an allocated ordinal.
    pub fn attribute_of(&self, ordinal: u32) -> Option<&AllocationAttribute> {
        let index = (*self.allocations.get(ordinal as usize)?)?;
        self.attributes.get(index as usize).map(|a| &**a)
    }

    /// Whether `ordinal` is held by a live owner (allocated and not cooling down).
    pub fn is_live(&self, ordinal: u32) -> bool {
        self.attribute_of(ordinal)
            .is_some_and(|a| a.released_at.is_none())
    }

    /// Live ordinals owned by `handle`. An address cooling down belongs to no handle; the
    /// `releasedAt` test is still needed for resting entries that blocks written by earlier
    /// versions of ours left with their old handle.
    pub fn ordinals_of_handle(&self, handle: &str) -> Vec<u32> {
        (0..self.allocations.len() as u32)
            .filter(|&o| {
                self.attribute_of(o).is_some_and(|a| {
                    a.released_at.is_none() && a.handle_id.as_deref() == Some(handle)
                })
            })
            .collect()
    }

    /// Assigns up to `n` free ordinals from the head of the queue to `attr`, passing over
    /// (and keeping in place) ordinals for which `skip` is true, such as reserved ones.
    pub fn assign(
        &mut self,
        n: u32,
        attr: &AllocationAttribute,
        skip: impl Fn(u32) -> bool,
    ) -> Vec<u32> {
        let mut taken = Vec::new();
        let mut kept = std::collections::VecDeque::with_capacity(self.unallocated.len());
        while let Some(ordinal) = self.unallocated.pop_front() {
            if taken.len() as u32 == n {
                kept.push_back(ordinal);
                kept.extend(self.unallocated.drain(..));
                break;
            }
            if skip(ordinal) {
                kept.push_back(ordinal)
            } else {
                taken.push(ordinal)
            }
        }
        self.unallocated = kept;
        if !taken.is_empty() {
            let index = self.attribute_index(attr);
            for &o in &taken {
                self.point(o, Some(index));
                self.sequence_number_for_allocation
                    .insert(o, self.sequence_number);
            }
            self.sequence_number += 1;
        }
        taken
    }

    /// Assigns one specific ordinal; `false` if it is not free.
    pub fn assign_ordinal(&mut self, ordinal: u32, attr: &AllocationAttribute) -> bool {
        let Some(pos) = self.unallocated.iter().position(|&o| o == ordinal) else {
            return false;
        };
        if ordinal as usize >= self.allocations.len() {
            return false;
        }
        self.unallocated.remove(pos);
        let index = self.attribute_index(attr);
        self.point(ordinal, Some(index));
        self.sequence_number_for_allocation
            .insert(ordinal, self.sequence_number);
        self.sequence_number += 1;
        true
    }

    /// Releases one ordinal if its owner and sequence number match what the caller names.
    pub fn release(
        &mut self,
        ordinal: u32,
        sequence: Option<u64>,
        handle: Option<&str>,
        cooldown: Cooldown<'_>,
    ) -> ReleaseOutcome {
        let outcome = self.release_one(ordinal, sequence, handle, cooldown);
        if matches!(
            outcome,
            ReleaseOutcome::Released | ReleaseOutcome::CoolingDown
        ) {
            self.compact_attributes();
            self.sequence_number += 1;
        }
        outcome
    }

    /// Releases every live ordinal of `handle`; returns them.
    pub fn release_handle(&mut self, handle: &str, cooldown: Cooldown<'_>) -> Vec<u32> {
        let ordinals = self.ordinals_of_handle(handle);
        for &o in &ordinals {
            self.release_one(o, None, None, cooldown);
        }
        if !ordinals.is_empty() {
            self.compact_attributes();
            self.sequence_number += 1;
        }
        ordinals
    }

    /// Frees ordinals whose cooldown of `cooldown_seconds` has passed at `now`, oldest
    /// release first, so that they rejoin the queue in the order they were released.
    pub fn fold_cooldown(&mut self, now: OffsetDateTime, cooldown_seconds: u32) -> Vec<u32> {
        let mut due: Vec<(OffsetDateTime, u32)> = (0..self.allocations.len() as u32)
            .filter_map(|o| {
                let at = self.attribute_of(o)?.released_at.as_deref()?;
                // An unparsable stamp is treated as long past: holding an address forever
                // because of a malformed field would be a leak.
                let at = OffsetDateTime::parse(at, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH);
                (at + time::Duration::seconds(i64::from(cooldown_seconds)) <= now)
                    .then_some((at, o))
            })
            .collect();
        due.sort();
        for &(_, o) in &due {
            self.free(o);
        }
        if !due.is_empty() {
            self.compact_attributes();
            self.sequence_number += 1;
        }
        due.into_iter().map(|(_, o)| o).collect()
    }

    /// Whether an assignment at `now` could find a free ordinal: one in the queue, or one
    /// whose cooldown of `cooldown_seconds` has passed and would be folded back first.
    pub fn has_free_at(&self, now: OffsetDateTime, cooldown_seconds: u32) -> bool {
        !self.unallocated.is_empty() || {
            let mut probe = self.clone();
            !probe.fold_cooldown(now, cooldown_seconds).is_empty()
        }
    }

    /// Refuses a block read from a store that assignment or release could not use safely
    /// (see [`BlockProblem::is_unsafe`]): a slot count that does not match the CIDR, a free
    /// ordinal outside the block or listed twice or also allocated (it would be handed out
    /// twice), an allocation pointing past `attributes`. Harmless untidiness passes.
    pub fn validate(&self) -> Result<()> {
        match self.problems().into_iter().find(BlockProblem::is_unsafe) {
            Some(problem) => Err(Error::CorruptObject {
                kind: "IPAMBlock",
                name: crate::cidr::cidr_to_name(&self.cidr),
                problem: problem.to_string(),
            }),
            None => Ok(()),
        }
    }

    fn release_one(
        &mut self,
        ordinal: u32,
        sequence: Option<u64>,
        handle: Option<&str>,
        cooldown: Cooldown<'_>,
    ) -> ReleaseOutcome {
        let Some(attr) = self.attribute_of(ordinal) else {
            return ReleaseOutcome::NotAllocated;
        };
        if attr.released_at.is_some() {
            return ReleaseOutcome::NotAllocated;
        }
        if let Some(h) = handle {
            if attr.handle_id.as_deref() != Some(h) {
                return ReleaseOutcome::HandleMismatch {
                    owner: attr.handle_id.clone(),
                };
            }
        }
        let current = self.sequence_number_for_allocation.get(&ordinal).copied();
        if sequence.is_some() && sequence != current {
            return ReleaseOutcome::BadSequenceNumber { current };
        }
        match cooldown {
            Cooldown::None => {
                self.free(ordinal);
                ReleaseOutcome::Released
            }
            Cooldown::Until(at) => {
                // As Calico's `addCooldownAttribute`: the resting entry holds only the
                // release time. Calico's handle lookups do not look at `releasedAt`, so a
                // handle (or attrs, or unknown fields) left here would still own the address
                // for Calico and kube-controllers.
                let resting = AllocationAttribute {
                    released_at: Some(at.to_owned()),
                    ..Default::default()
                };
                let index = self.attribute_index(&resting);
                self.point(ordinal, Some(index));
                ReleaseOutcome::CoolingDown
            }
        }
    }

    fn free(&mut self, ordinal: u32) {
        self.point(ordinal, None);
        self.sequence_number_for_allocation.remove(&ordinal);
        self.unallocated.push_back(ordinal);
    }

    /// Points `ordinal`'s slot at an attribute (or frees it). Stored data is never indexed
    /// directly: an ordinal outside the slots is ignored here, and [`IpamBlock::validate`]
    /// keeps such blocks away from assignment in the first place.
    fn point(&mut self, ordinal: u32, index: Option<u32>) {
        if let Some(slot) = self.allocations.get_mut(ordinal as usize) {
            *slot = index;
        }
    }

    /// The index of an attribute equal to `attr`, appending one if there is none.
    fn attribute_index(&mut self, attr: &AllocationAttribute) -> u32 {
        match self.attributes.iter().position(|a| **a == *attr) {
            Some(i) => i as u32,
            None => {
                self.attributes.push(Arc::new(attr.clone()));
                self.attributes.len() as u32 - 1
            }
        }
    }

    /// Drops attributes no allocation points at and renumbers the rest, keeping their order.
    fn compact_attributes(&mut self) {
        let mut used = vec![false; self.attributes.len()];
        for i in self.allocations.iter().flatten() {
            if let Some(u) = used.get_mut(*i as usize) {
                *u = true;
            }
        }
        if used.iter().all(|&u| u) {
            return;
        }
        let mut new_index = vec![0u32; used.len()];
        let mut next = 0;
        for (i, &u) in used.iter().enumerate() {
            new_index[i] = next;
            next += u32::from(u);
        }
        let mut i = 0;
        self.attributes.retain(|_| {
            i += 1;
            used[i - 1]
        });
        for a in self.allocations.iter_mut().flatten() {
            // A dangling index (a corrupt block) keeps its value rather than panicking.
            *a = new_index.get(*a as usize).copied().unwrap_or(*a);
        }
    }
}

#[cfg(test)]
mod tests;
