//! What this process has learnt about which blocks are taken, so that a claim walks past
//! them without a read each, and never lists the cluster's blocks more than once per
//! process in the steady state.
//!
//! A hint only: the CAS create of the claim stays the arbiter. A block wrongly believed free
//! costs one probe (and is then remembered as taken); a block wrongly believed taken is found
//! again by the claim's last pass, which re-learns the whole set from one list.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

/// Blocks known taken (owned, or holding addresses), by CIDR.
#[derive(Debug, Default)]
pub(crate) struct FreeBlockHints {
    taken: Mutex<HashSet<IpNet>>,
}

impl FreeBlockHints {
    fn lock(&self) -> MutexGuard<'_, HashSet<IpNet>> {
        // Every change is one insert or remove (or a whole replacement), so a set left by a
        // panicking holder is still a valid hint.
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `block` is believed taken.
    pub(crate) fn is_taken(&self, block: &IpNet) -> bool {
        self.lock().contains(block)
    }

    /// How many blocks are believed taken.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Remembers `block` as taken (a probe saw it, or this process claimed it).
    pub(crate) fn mark_taken(&self, block: IpNet) {
        self.lock().insert(block);
    }

    /// Forgets `block` (this process deleted it).
    pub(crate) fn mark_free(&self, block: &IpNet) {
        self.lock().remove(block);
    }

    /// Replaces what is known by what one list of every block showed.
    pub(crate) fn replace(&self, taken: HashSet<IpNet>) {
        *self.lock() = taken;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_forgets_and_replaces() {
        let h = FreeBlockHints::default();
        let a: IpNet = "10.0.0.0/24".parse().unwrap();
        let b: IpNet = "10.0.1.0/24".parse().unwrap();
        assert!(!h.is_taken(&a));
        h.mark_taken(a);
        assert!(h.is_taken(&a) && !h.is_taken(&b));
        h.mark_free(&a);
        assert!(!h.is_taken(&a));
        h.replace([b].into_iter().collect());
        assert!(h.is_taken(&b));
        assert_eq!(h.len(), 1);
    }
}
