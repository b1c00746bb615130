//! The key layout: where each object, its node-index copy and its tombstone live.
//!
//! Under the prefix `P` (default `/ipam/v1/`):
//!
//! | key | value |
//! |---|---|
//! | `P<plural>/<name>` | a live object's JSON (the primary key; its mod revision is the object's revision) |
//! | `P nodes/<node>/<plural>/<name>` | for blocks and affinities tied to a node: a copy of the JSON |
//! | `P unowned/<plural>/<name>` | for blocks without a host: an empty marker |
//! | `P deleted/<plural>/<name>` | a soft-deleted object's JSON (its tombstone) |
//!
//! A live block or affinity has exactly one *placement* key (`nodes/...` or `unowned/...`),
//! always written in the same transaction as its primary key, so both carry the same mod
//! revision. That is what lets an update prove in one transaction that the object has not
//! moved to another node: it compares the placement key its new value implies against the
//! revision it read.

use ipam_core::{Kind, Revision};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/ipam/v1/";

/// Builds every key the store uses from one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`, which gets a trailing `/` if it lacks one.
    pub(crate) fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    /// The range holding every live object of `kind`.
    pub(crate) fn kind_prefix(&self, kind: Kind) -> String {
        format!("{}{}/", self.prefix, kind.plural())
    }

    /// A live object's key.
    pub(crate) fn primary(&self, kind: Kind, name: &str) -> String {
        format!("{}{name}", self.kind_prefix(kind))
    }

    /// Where a soft-deleted object is kept until it is deleted or re-created.
    pub(crate) fn tombstone(&self, kind: Kind, name: &str) -> String {
        format!("{}deleted/{}/{name}", self.prefix, kind.plural())
    }

    /// The range holding `node`'s objects of `kind`.
    pub(crate) fn node_prefix(&self, kind: Kind, node: &str) -> String {
        format!(
            "{}nodes/{}/{}/",
            self.prefix,
            escape_segment(node),
            kind.plural()
        )
    }

    /// The placement key of a live object of an indexed kind on `node` (or on no node);
    /// `None` for kinds without a node index.
    pub(crate) fn placement(&self, kind: Kind, name: &str, node: Option<&str>) -> Option<String> {
        if !indexed(kind) {
            return None;
        }
        Some(match node {
            Some(node) => format!("{}{name}", self.node_prefix(kind, node)),
            None => format!("{}unowned/{}/{name}", self.prefix, kind.plural()),
        })
    }

    /// Whether a placement key holds a copy of the value (node keys) or a bare marker.
    pub(crate) fn placement_holds_copy(node: Option<&str>) -> bool {
        node.is_some()
    }
}

/// Whether objects of `kind` are indexed by node (those whose [`ipam_core::Resource::node`]
/// can be set).
pub(crate) fn indexed(kind: Kind) -> bool {
    matches!(kind, Kind::IpamBlock | Kind::BlockAffinity)
}

/// A revision as etcd's signed mod revision. Anything that is not a positive number can match
/// no key (an absent key has mod revision 0), so it maps to -1.
pub(crate) fn revision_number(r: &Revision) -> i64 {
    r.0.parse::<i64>().ok().filter(|n| *n > 0).unwrap_or(-1)
}

/// A node name as one key segment: `/` and `%` are escaped so that no node's range can
/// contain another's.
fn escape_segment(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("/x");
        assert_eq!(k.primary(Kind::IpamHandle, "h"), "/x/ipamhandles/h");
        assert_eq!(
            k.tombstone(Kind::IpamHandle, "h"),
            "/x/deleted/ipamhandles/h"
        );
        assert_eq!(k.placement(Kind::IpamHandle, "h", None), None);
        assert_eq!(
            k.placement(Kind::IpamBlock, "b", Some("n/1")).as_deref(),
            Some("/x/nodes/n%2F1/ipamblocks/b")
        );
        assert_eq!(
            k.placement(Kind::BlockAffinity, "a", None).as_deref(),
            Some("/x/unowned/blockaffinities/a")
        );
        // One node's range never covers another node whose name extends it.
        let a = k.node_prefix(Kind::IpamBlock, "a");
        let other = k.placement(Kind::IpamBlock, "b", Some("a/ipamblocks"));
        assert!(!other.unwrap().starts_with(&a));
    }

    #[test]
    fn revisions() {
        assert_eq!(revision_number(&Revision::from_u64(7)), 7);
        for bad in ["0", "-3", "x", ""] {
            assert_eq!(revision_number(&Revision(bad.into())), -1);
        }
    }
}
