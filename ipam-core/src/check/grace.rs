//! Waiting out a grace period before acting on something that looks abandoned.
//!
//! A leak, an empty block or a stuck claim may be work in progress: a pod being created, a
//! claim between its two phases. So a collector acts only on what two observations at least
//! a grace period apart saw in the same state (the same `mark`: a sequence number, a
//! revision). Anything that changed in between starts the wait again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::clock::rfc3339;

/// What a collector has seen and is waiting on, by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Observations(BTreeMap<String, Seen>);

/// One observation: the object's state then, and when it was first seen in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Sequence number, revision or any string that changes when the object does.
    pub mark: String,
    /// First seen with that mark (RFC 3339).
    pub since: String,
}

impl Observations {
    /// Records `key` at `mark`; true when it was already seen at `mark` at least `grace`
    /// before `now`. A new or changed mark restarts the wait.
    ///
    /// ```
    /// use ipam_core::check::Observations;
    /// use time::{Duration, OffsetDateTime};
    /// let mut seen = Observations::default();
    /// let t0 = OffsetDateTime::UNIX_EPOCH;
    /// let grace = Duration::seconds(10);
    /// assert!(!seen.due("10.0.0.1", "7", t0, grace));
    /// assert!(!seen.due("10.0.0.1", "7", t0 + Duration::seconds(9), grace));
    /// assert!(!seen.due("10.0.0.1", "8", t0 + Duration::seconds(10), grace)); // changed
    /// assert!(seen.due("10.0.0.1", "8", t0 + Duration::seconds(20), grace));
    /// ```
    pub fn due(
        &mut self,
        key: &str,
        mark: &str,
        now: OffsetDateTime,
        grace: time::Duration,
    ) -> bool {
        if let Some(s) = self.0.get(key).filter(|s| s.mark == mark) {
            // An unreadable stamp (a hand-edited file) restarts the wait rather than acting.
            let since = OffsetDateTime::parse(&s.since, &Rfc3339).unwrap_or(now);
            return since + grace <= now;
        }
        let seen = Seen {
            mark: mark.to_owned(),
            since: rfc3339(now),
        };
        self.0.insert(key.to_owned(), seen);
        false
    }

    /// Keeps only the observations of `current` keys: what is no longer in question is
    /// forgotten, so if it comes back its wait starts over.
    pub fn retain(&mut self, current: &BTreeSet<String>) {
        self.0.retain(|k, _| current.contains(k));
    }

    /// Forgets `key` (acted on, or found changed).
    pub fn forget(&mut self, key: &str) {
        self.0.remove(key);
    }

    /// How many objects are being waited on.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is being waited on.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
