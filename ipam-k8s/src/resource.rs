//! What the API says about each kind: names, short names, printer columns and labels.
//!
//! One table drives the CRD manifests, the server's discovery documents and Table
//! responses, and `KubeStore`'s paths, so the three cannot disagree.

use std::any::Any;

use data_encoding::BASE32_NOPAD;
use ipam_core::{BlockAffinity, Kind, Resource};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sha3::Sha3_256;

/// The API group of every resource here.
pub const GROUP: &str = "crd.projectcalico.org";
/// The only served version.
pub const VERSION: &str = "v1";
/// `apiVersion` of every object.
pub const API_VERSION: &str = "crd.projectcalico.org/v1";
/// The label naming the node an affinity or an affine block belongs to, so that node-scoped
/// listing is a label selector answered by the API server, not a scan by the client.
pub const NODE_LABEL: &str = "crd.projectcalico.org/node";
/// The labels Calico (v3.30 and later) puts on every BlockAffinity and lists a node's
/// affinities by. Writing them too means each side finds the other's affinities.
pub const CALICO_HOSTNAME_HASH_LABEL: &str = "projectcalico.org/hostname-hash";
/// The affinity's `spec.type` (`host`, `virtual`, or empty), as Calico labels it.
pub const CALICO_AFFINITY_TYPE_LABEL: &str = "projectcalico.org/affinity-type";
/// `4` or `6`, from the affinity's CIDR, as Calico labels it.
pub const CALICO_IP_VERSION_LABEL: &str = "projectcalico.org/ip-version";

/// One `additionalPrinterColumns` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: &'static str,
    /// OpenAPI type: `string`, `integer`, `boolean` or `date`.
    pub type_: &'static str,
    /// A simple JSONPath (`.spec.cidr`).
    pub json_path: &'static str,
    /// What the column shows.
    pub description: &'static str,
}

/// The names and columns of one kind.
#[derive(Clone, Copy, Debug)]
pub struct ResourceDef {
    /// The core kind.
    pub kind: Kind,
    /// Singular lower-case name (`ipamblock`).
    pub singular: &'static str,
    /// Short names accepted by `kubectl`.
    pub short_names: &'static [&'static str],
    /// Extra `kubectl get` columns.
    pub columns: &'static [PrinterColumn],
}

const AGE: PrinterColumn = PrinterColumn {
    name: "Age",
    type_: "date",
    json_path: ".metadata.creationTimestamp",
    description: "Time since the object was created",
};

const fn col(
    name: &'static str,
    type_: &'static str,
    json_path: &'static str,
    description: &'static str,
) -> PrinterColumn {
    PrinterColumn {
        name,
        type_,
        json_path,
        description,
    }
}

/// Every kind's definition, in [`Kind::ALL`] order.
pub const DEFS: [ResourceDef; 6] = [
    ResourceDef {
        kind: Kind::IpPool,
        singular: "ippool",
        short_names: &[],
        columns: &[
            col("CIDR", "string", ".spec.cidr", "The pool's network"),
            col(
                "Block Size",
                "integer",
                ".spec.blockSize",
                "Prefix length of the pool's blocks",
            ),
            col(
                "Disabled",
                "boolean",
                ".spec.disabled",
                "Whether the pool hands out new addresses",
            ),
            AGE,
        ],
    },
    ResourceDef {
        kind: Kind::IpamBlock,
        singular: "ipamblock",
        short_names: &[],
        columns: &[
            col("CIDR", "string", ".spec.cidr", "The block's network"),
            col(
                "Affinity",
                "string",
                ".spec.affinity",
                "The host or virtual owner of the block",
            ),
            AGE,
        ],
    },
    ResourceDef {
        kind: Kind::BlockAffinity,
        singular: "blockaffinity",
        short_names: &[],
        columns: &[
            col(
                "Node",
                "string",
                ".spec.node",
                "The node that claims the block",
            ),
            col("CIDR", "string", ".spec.cidr", "The claimed block"),
            col("State", "string", ".spec.state", "Where the claim stands"),
            AGE,
        ],
    },
    ResourceDef {
        kind: Kind::IpamHandle,
        singular: "ipamhandle",
        short_names: &[],
        columns: &[AGE],
    },
    ResourceDef {
        kind: Kind::IpamConfig,
        singular: "ipamconfig",
        short_names: &[],
        columns: &[
            col(
                "Strict Affinity",
                "boolean",
                ".spec.strictAffinity",
                "Whether borrowing from other nodes' blocks is forbidden",
            ),
            col(
                "Max Blocks",
                "integer",
                ".spec.maxBlocksPerHost",
                "Blocks one node may hold (0: 20)",
            ),
            AGE,
        ],
    },
    ResourceDef {
        kind: Kind::IpReservation,
        singular: "ipreservation",
        short_names: &[],
        columns: &[AGE],
    },
];

impl ResourceDef {
    /// The definition of `kind`.
    pub fn of(kind: Kind) -> &'static ResourceDef {
        // DEFS lists every kind in Kind::ALL order, so the index is always in range.
        &DEFS[Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)]
    }

    /// The definition whose plural, singular or short name is `name`.
    pub fn by_resource(name: &str) -> Option<&'static ResourceDef> {
        DEFS.iter().find(|d| d.plural() == name)
    }

    /// `IPAMBlock`.
    pub fn kind_name(&self) -> &'static str {
        self.kind.as_str()
    }

    /// `ipamblocks`.
    pub fn plural(&self) -> &'static str {
        self.kind.plural()
    }

    /// `IPAMBlockList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind.as_str())
    }

    /// `ipamblocks.crd.projectcalico.org`, the CRD's name.
    pub fn crd_name(&self) -> String {
        format!("{}.{GROUP}", self.plural())
    }
}

/// Calls `$body` with the type alias `$r` bound to the model type of `$kind`.
#[macro_export]
#[doc(hidden)]
macro_rules! with_kind {
    ($kind:expr, $r:ident => $body:expr) => {
        match $kind {
            ipam_core::Kind::IpPool => {
                type $r = ipam_core::IpPool;
                $body
            }
            ipam_core::Kind::IpamBlock => {
                type $r = ipam_core::IpamBlock;
                $body
            }
            ipam_core::Kind::BlockAffinity => {
                type $r = ipam_core::BlockAffinity;
                $body
            }
            ipam_core::Kind::IpamHandle => {
                type $r = ipam_core::IpamHandle;
                $body
            }
            ipam_core::Kind::IpamConfig => {
                type $r = ipam_core::IpamConfig;
                $body
            }
            ipam_core::Kind::IpReservation => {
                type $r = ipam_core::IpReservation;
                $body
            }
        }
    };
}

/// The label value standing for `node`: the name itself when it is a valid label value,
/// else a digest (node names may be 253 characters; label values only 63).
pub fn node_label_value(node: &str) -> String {
    let valid = !node.is_empty()
        && node.len() <= 63
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && node.as_bytes()[0].is_ascii_alphanumeric()
        && node.as_bytes()[node.len() - 1].is_ascii_alphanumeric();
    if valid {
        return node.to_owned();
    }
    let digest = Sha256::digest(node.as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

/// Calico's label value for a node: host names may be longer than a label value, so it
/// is the unpadded base32 of the name's SHA3-256 (52 characters).
pub fn calico_hostname_hash(node: &str) -> String {
    BASE32_NOPAD.encode(&Sha3_256::digest(node.as_bytes()))
}

/// The labels an object carries: derived from its spec, never stored separately.
pub fn labels_of<R: Resource>(value: &R) -> Map<String, Value> {
    let mut labels = Map::new();
    if let Some(node) = value.node() {
        labels.insert(NODE_LABEL.to_owned(), Value::String(node_label_value(node)));
    }
    if let Some(affinity) = (value as &dyn Any).downcast_ref::<BlockAffinity>() {
        add_calico_affinity_labels(affinity, &mut labels);
    }
    labels
}

fn add_calico_affinity_labels(affinity: &BlockAffinity, labels: &mut Map<String, Value>) {
    let version = if affinity.cidr.addr().is_ipv4() {
        "4"
    } else {
        "6"
    };
    let kind = affinity.affinity_type.clone().unwrap_or_default();
    for (key, value) in [
        (
            CALICO_HOSTNAME_HASH_LABEL,
            calico_hostname_hash(&affinity.node),
        ),
        (CALICO_AFFINITY_TYPE_LABEL, kind),
        (CALICO_IP_VERSION_LABEL, version.to_owned()),
    ] {
        labels.insert(key.to_owned(), Value::String(value));
    }
}

/// A stable UID for an object: a name-based UUID (version 8) of its group, kind and name.
///
/// The datastores keep no metadata beside the spec, so the UID is derived rather than
/// stored; it names the object, and deletes are guarded by `resourceVersion`, which never
/// repeats across incarnations in any backend.
pub fn uid_of(kind: Kind, name: &str) -> String {
    let digest = Sha256::digest(format!("{GROUP}/{}/{name}", kind.as_str()).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8: custom
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `R` is listed by node (affinities and blocks).
pub fn node_scoped(kind: Kind) -> bool {
    matches!(kind, Kind::BlockAffinity | Kind::IpamBlock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinities_carry_calicos_labels() {
        // Values printed by Go's crypto/sha3 and base32 (StdEncoding, no padding), as
        // Calico's EnsureBlockAffinityLabels computes them.
        assert_eq!(
            calico_hostname_hash("node-1"),
            "A3XPYDATRKB7Q4SM2O5FN4RXIHBFIL2PITFX26BAIP5XAB2X74CA"
        );
        let affinity = BlockAffinity {
            cidr: "fd00::/122".parse().expect("cidr"),
            node: "a-very-long-node-name.example.com".into(),
            state: ipam_core::AffinityState::Confirmed,
            affinity_type: Some("host".into()),
            deleted: false,
            extra: Map::new(),
        };
        let labels = labels_of(&affinity);
        let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_owned);
        assert_eq!(
            label(CALICO_HOSTNAME_HASH_LABEL).as_deref(),
            Some("GEYM65P6UTA7YDT2XINE3T6NFKN4L35RXPKATW2HDYD56URYLKJQ")
        );
        assert_eq!(label(CALICO_AFFINITY_TYPE_LABEL).as_deref(), Some("host"));
        assert_eq!(label(CALICO_IP_VERSION_LABEL).as_deref(), Some("6"));
    }

    #[test]
    fn long_node_names_get_a_digest_label() {
        assert_eq!(node_label_value("node-1"), "node-1");
        let long = "n".repeat(80);
        let v = node_label_value(&long);
        assert!(v.len() <= 63 && v.starts_with("h-"));
        assert_eq!(v, node_label_value(&long));
        assert_ne!(node_label_value("Node_1."), "Node_1.");
    }

    #[test]
    fn uids_are_stable_and_distinct() {
        let a = uid_of(Kind::IpamHandle, "x");
        assert_eq!(a, uid_of(Kind::IpamHandle, "x"));
        assert_ne!(a, uid_of(Kind::IpamBlock, "x"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }

    #[test]
    fn every_kind_has_a_definition() {
        for kind in Kind::ALL {
            assert_eq!(ResourceDef::of(kind).kind, kind);
            assert_eq!(
                ResourceDef::by_resource(kind.plural()).map(|d| d.kind),
                Some(kind)
            );
        }
    }
}
