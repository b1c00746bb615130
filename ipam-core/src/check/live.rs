//! The operator's list of live allocation owners, against which `check` finds leaks.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::model::{ATTR_NAMESPACE, ATTR_POD, AllocationAttribute};

/// The owners the operator says are alive: handle IDs, container IDs and `namespace/pod`s.
///
/// An allocation is alive when its handle is listed, when its handle ends in `.<id>` for a
/// listed container ID (handles are `<network>.<container id>`), or when its `namespace`
/// and `pod` attributes match a listed `namespace/pod`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveOwners {
    ids: BTreeSet<String>,
    pods: BTreeSet<(String, String)>,
}

impl LiveOwners {
    /// Parses one owner per line: a handle ID, a container ID, or `namespace/pod`.
    /// Blank lines and lines starting with `#` are ignored.
    ///
    /// ```
    /// use ipam_core::check::LiveOwners;
    /// let live = LiveOwners::parse("# live pods\nkube-system/coredns-1\nabc123\n").unwrap();
    /// assert_eq!(live.len(), 2);
    /// assert!(LiveOwners::parse("a/b/c").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let mut live = LiveOwners::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split('/').collect::<Vec<_>>().as_slice() {
                [id] => {
                    live.ids.insert((*id).to_owned());
                }
                [ns, pod] if !ns.is_empty() && !pod.is_empty() => {
                    live.pods.insert(((*ns).to_owned(), (*pod).to_owned()));
                }
                _ => {
                    return Err(Error::InvalidName {
                        kind: "live owner (handle, container ID or namespace/pod)",
                        name: line.to_owned(),
                    });
                }
            }
        }
        Ok(live)
    }

    /// How many owners are listed.
    pub fn len(&self) -> usize {
        self.ids.len() + self.pods.len()
    }

    /// Whether nothing is listed (then every owned allocation is a leak).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the owner of `attr` is listed.
    pub fn is_live(&self, attr: &AllocationAttribute) -> bool {
        if let Some(h) = attr.handle_id.as_deref() {
            if self.ids.contains(h) {
                return true;
            }
            if let Some((_, container)) = h.split_once('.') {
                if self.ids.contains(container) {
                    return true;
                }
            }
        }
        match (
            attr.secondary.get(ATTR_NAMESPACE),
            attr.secondary.get(ATTR_POD),
        ) {
            (Some(ns), Some(pod)) => self.pods.contains(&(ns.clone(), pod.clone())),
            _ => false,
        }
    }

    /// Whether an allocation can be judged at all: it names a handle or a pod. Allocations
    /// with neither (made by address, without an owner) are never reported as leaks.
    pub fn can_judge(attr: &AllocationAttribute) -> bool {
        attr.handle_id.is_some()
            || (attr.secondary.contains_key(ATTR_NAMESPACE)
                && attr.secondary.contains_key(ATTR_POD))
    }
}
