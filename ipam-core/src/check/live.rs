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
    /// Built from a cluster's pods ([`LiveOwners::from_pods`]): only allocations that name
    /// a pod can be judged, since nothing is known of other owners.
    pods_only: bool,
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

    /// The pods a cluster holds, as `(namespace, name)`. Unlike an operator's list, this
    /// says nothing about owners that are not pods (a tunnel address, an address assigned by
    /// hand with a handle), so only allocations with `namespace` and `pod` attributes are
    /// judged against it.
    ///
    /// ```
    /// use ipam_core::check::LiveOwners;
    /// let live = LiveOwners::from_pods([("default".to_owned(), "web-1".to_owned())]);
    /// assert_eq!(live.len(), 1);
    /// ```
    pub fn from_pods(pods: impl IntoIterator<Item = (String, String)>) -> Self {
        LiveOwners {
            ids: BTreeSet::new(),
            pods: pods.into_iter().collect(),
            pods_only: true,
        }
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

    /// Whether this list can judge `attr`: [`LiveOwners::can_judge`], and for a list of
    /// pods only allocations that name a pod.
    pub fn judges(&self, attr: &AllocationAttribute) -> bool {
        if self.pods_only {
            attr.secondary.contains_key(ATTR_NAMESPACE) && attr.secondary.contains_key(ATTR_POD)
        } else {
            Self::can_judge(attr)
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
