//! The names the allocator keys objects by: handle IDs, node names, affinity names, and the
//! per-node hash that seeds a node's walk over a pool.
//!
//! [`HandleId`] and [`NodeName`] are built only through constructors that check them, so
//! past the edge a name is known to be one a datastore can key by.

use std::fmt;

use crate::cidr::BlockCidr;
use crate::error::{Error, Result};

/// Kubernetes' limit on an object name.
pub const MAX_NAME_LEN: usize = 253;

/// An allocation owner's ID, as used for `IPAMHandle` names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandleId(String);

/// A node name, as used in affinities (`host:<node>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl HandleId {
    /// Validates a handle ID: non-empty, at most 253 bytes, no `/` (it names a key).
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("it is empty")
        } else if id.len() > MAX_NAME_LEN {
            Some("it is longer than 253 bytes")
        } else if id.contains('/') || id.chars().any(char::is_control) {
            Some("it contains '/' or a control character")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidHandle { handle: id, reason }),
            None => Ok(HandleId(id)),
        }
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HandleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl NodeName {
    /// Validates a node name: a non-empty DNS-subdomain-like name of at most 253 bytes.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if valid {
            Ok(NodeName(name))
        } else {
            Err(Error::InvalidNodeName { node: name })
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The block `affinity` value for this node (`host:<node>`).
    pub fn host_affinity(&self) -> String {
        format!("host:{}", self.0)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `BlockAffinity` name for `node` and `block`: `<node>-<block name>`, cut to 253
/// bytes with a hash suffix when longer, so that distinct pairs keep distinct names.
pub fn affinity_name(node: &str, block: &BlockCidr) -> String {
    let full = format!("{node}-{}", block.name());
    if full.len() <= MAX_NAME_LEN {
        return full;
    }
    let suffix = format!("{:016x}", fnv1a64(full.as_bytes()));
    let mut cut = MAX_NAME_LEN - suffix.len() - 1;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{suffix}", &full[..cut])
}

/// FNV-1a: a stable hash for name suffixes and per-node seeds (not for security).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(s: &str) -> BlockCidr {
        BlockCidr::new(s.parse().unwrap()).unwrap()
    }

    #[test]
    fn handle_and_node_names_are_validated() {
        assert!(HandleId::new("k8s-pod-network.abc").is_ok());
        assert!(HandleId::new("").is_err());
        assert!(HandleId::new("a/b").is_err());
        assert!(NodeName::new("node-1.example").is_ok());
        assert!(NodeName::new("bad node").is_err());
        assert!(NodeName::new("").is_err());
    }

    #[test]
    fn long_affinity_names_are_cut_with_a_distinct_hash() {
        let long_a = "a".repeat(250);
        let long_b = format!("{}b", "a".repeat(249));
        let na = affinity_name(&long_a, &block("10.0.0.0/26"));
        let nb = affinity_name(&long_b, &block("10.0.0.0/26"));
        assert_eq!(na.len(), MAX_NAME_LEN);
        assert_ne!(na, nb);
    }
}
