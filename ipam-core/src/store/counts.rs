//! Datastore round trips counted, for benchmarks and cost checks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of datastore round trips, for benchmarks and cost checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Single-object reads.
    pub gets: u64,
    /// List reads (one per round trip, however many objects).
    pub lists: u64,
    /// Creates.
    pub creates: u64,
    /// Compare-and-swap updates.
    pub updates: u64,
    /// Compare-and-swap deletes.
    pub deletes: u64,
}

/// Atomic counters a backend embeds to implement [`Datastore::op_counts`](super::Datastore::op_counts).
#[derive(Debug, Default)]
pub struct OpCounter {
    gets: AtomicU64,
    lists: AtomicU64,
    creates: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
}

/// One operation, for [`OpCounter::count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A get.
    Get,
    /// A list.
    List,
    /// A create.
    Create,
    /// An update.
    Update,
    /// A delete.
    Delete,
}

impl OpCounts {
    /// Round trips that only read.
    pub fn reads(&self) -> u64 {
        self.gets + self.lists
    }

    /// Round trips that write.
    pub fn writes(&self) -> u64 {
        self.creates + self.updates + self.deletes
    }

    /// The counts accrued since `earlier`.
    pub fn since(&self, earlier: &OpCounts) -> OpCounts {
        OpCounts {
            gets: self.gets - earlier.gets,
            lists: self.lists - earlier.lists,
            creates: self.creates - earlier.creates,
            updates: self.updates - earlier.updates,
            deletes: self.deletes - earlier.deletes,
        }
    }
}

impl OpCounter {
    /// Counts one round trip.
    pub fn count(&self, op: Op) {
        let cell = match op {
            Op::Get => &self.gets,
            Op::List => &self.lists,
            Op::Create => &self.creates,
            Op::Update => &self.updates,
            Op::Delete => &self.deletes,
        };
        cell.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> OpCounts {
        OpCounts {
            gets: self.gets.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            creates: self.creates.load(Ordering::Relaxed),
            updates: self.updates.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
        }
    }
}
