//! The CustomResourceDefinitions: Calico's field schema for each spec, plus printer columns.
//!
//! The schemas describe the JSON that `ipam_core::model` reads and writes (the model types
//! are the one definition of each spec; a test checks every field they write is declared
//! here). Field names, types and required lists follow Calico's CRDs, with the fields newer
//! Calico releases added (`affinityClaimTime`, `releasedAt`, `assignmentMode`, ...).

use ipam_core::Kind;
use serde_json::{Value, json};

use crate::resource::{DEFS, GROUP, ResourceDef, VERSION};

fn string() -> Value {
    json!({"type": "string"})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

fn string_list() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

/// The `openAPIV3Schema` of `kind`'s `spec`.
pub fn spec_schema(kind: Kind) -> Value {
    match kind {
        Kind::IpPool => pool_spec(),
        Kind::IpamBlock => block_spec(),
        Kind::BlockAffinity => affinity_spec(),
        Kind::IpamHandle => handle_spec(),
        Kind::IpamConfig => config_spec(),
        Kind::IpReservation => reservation_spec(),
    }
}

fn pool_spec() -> Value {
    json!({
        "type": "object",
        "description": "IPPoolSpec: a CIDR that blocks are carved from.",
        "required": ["cidr"],
        "properties": {
            "cidr": string(),
            "blockSize": {"type": "integer"},
            "nodeSelector": string(),
            "namespaceSelector": string(),
            "disabled": boolean(),
            // A set, not `uniqueItems` (which kube-apiserver refuses in a structural
            // schema: "uniqueItems cannot be set to true since the runtime complexity
            // becomes quadratic"); a set list refuses duplicates all the same.
            "allowedUses": {"type": "array", "x-kubernetes-list-type": "set",
                "items": {"type": "string", "enum": ["Workload", "Tunnel", "LoadBalancer"]}},
            "assignmentMode": {"type": "string", "enum": ["Automatic", "Manual"]},
            "natOutgoing": boolean(),
            "ipipMode": {"type": "string", "enum": ["Never", "Always", "CrossSubnet"]},
            "vxlanMode": {"type": "string", "enum": ["Never", "Always", "CrossSubnet"]},
            "disableBGPExport": boolean(),
        }
    })
}

fn block_spec() -> Value {
    json!({
        "type": "object",
        "description": "IPAMBlockSpec: one block of a pool and who holds each address.",
        "required": ["allocations", "attributes", "cidr", "sequenceNumber",
                     "strictAffinity", "unallocated"],
        "properties": {
            "cidr": string(),
            "affinity": string(),
            "affinityClaimTime": {"type": "string", "format": "date-time"},
            "allocations": {"type": "array",
                "items": {"type": "integer", "nullable": true}},
            "unallocated": {"type": "array", "items": {"type": "integer"}},
            "attributes": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "handle_id": string(),
                    "secondary": {"type": "object",
                        "additionalProperties": {"type": "string"}},
                    // KubeVirt live migration's second owner: declared so that the
                    // API server does not prune it from Calico's writes.
                    "alternateOwnerAttrs": {"type": "object",
                        "additionalProperties": {"type": "string"}},
                    "releasedAt": {"type": "string", "format": "date-time"},
                }
            }},
            "sequenceNumber": {"type": "integer", "format": "int64"},
            "sequenceNumberForAllocation": {"type": "object",
                "additionalProperties": {"type": "integer", "format": "int64"}},
            "deleted": boolean(),
            "strictAffinity": boolean(),
        }
    })
}

fn affinity_spec() -> Value {
    json!({
        "type": "object",
        "description": "BlockAffinitySpec: the claim of one node on one block.",
        "required": ["cidr", "deleted", "node", "state"],
        "properties": {
            "cidr": string(),
            "node": string(),
            "state": string(),
            "type": string(),
            "deleted": {"type": "string",
                "description": "\"true\" or \"false\": a string, as Calico writes it."},
        }
    })
}

fn handle_spec() -> Value {
    json!({
        "type": "object",
        "description": "IPAMHandleSpec: the blocks holding one owner's addresses.",
        "required": ["block", "handleID"],
        "properties": {
            "handleID": string(),
            "block": {"type": "object", "additionalProperties": {"type": "integer"}},
            "deleted": boolean(),
        }
    })
}

fn config_spec() -> Value {
    json!({
        "type": "object",
        "description": "IPAMConfigSpec: the cluster-wide IPAM settings.",
        "required": ["autoAllocateBlocks", "strictAffinity"],
        "properties": {
            "strictAffinity": boolean(),
            "autoAllocateBlocks": boolean(),
            "maxBlocksPerHost": {"type": "integer", "minimum": 0, "maximum": 1000000},
            "ipCooldownSeconds": {"type": "integer", "minimum": 0, "maximum": 1200},
        }
    })
}

fn reservation_spec() -> Value {
    json!({
        "type": "object",
        "description": "IPReservationSpec: addresses never handed out.",
        "properties": {"reservedCIDRs": string_list()}
    })
}

/// The whole object's `openAPIV3Schema` for `kind`.
pub fn object_schema(kind: Kind) -> Value {
    json!({
        "type": "object",
        "properties": {
            "apiVersion": string(),
            "kind": string(),
            "metadata": {"type": "object"},
            "spec": spec_schema(kind),
        }
    })
}

/// The `apiextensions.k8s.io/v1` CustomResourceDefinition of one kind.
pub fn crd(def: &ResourceDef) -> Value {
    let columns: Vec<Value> = def
        .columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.type_, "jsonPath": c.json_path,
                   "description": c.description})
        })
        .collect();
    let mut names = json!({
        "kind": def.kind_name(),
        "listKind": def.list_kind(),
        "plural": def.plural(),
        "singular": def.singular,
    });
    if !def.short_names.is_empty() {
        names["shortNames"] = json!(def.short_names);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": def.crd_name()},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Cluster",
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": object_schema(def.kind)},
                "additionalPrinterColumns": columns,
            }],
        }
    })
}

/// Every CRD, in a fixed order (`ipamctl crds` prints them as YAML).
pub fn crds() -> Vec<Value> {
    DEFS.iter().map(crd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipam_core::{
        BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle, Resource,
    };
    use serde_json::Value;

    /// A spec with every field the model knows set, as the model writes it back.
    fn full<R: Resource>(v: Value) -> Value {
        let model: R = serde_json::from_value(v.clone()).unwrap();
        let back = serde_json::to_value(&model).unwrap();
        assert_eq!(back, v, "{} fixture does not round-trip", R::KIND);
        back
    }

    fn fixtures() -> Vec<(Kind, Value)> {
        vec![
            (
                Kind::IpPool,
                full::<IpPool>(serde_json::json!({
                "cidr": "10.0.0.0/16", "blockSize": 24, "nodeSelector": "all()",
                "namespaceSelector": "a == 'b'", "disabled": true,
                "allowedUses": ["Workload", "LoadBalancer"], "assignmentMode": "Manual",
                "natOutgoing": true, "ipipMode": "Always", "vxlanMode": "Never",
                "disableBGPExport": true})),
            ),
            (
                Kind::IpamBlock,
                full::<IpamBlock>(serde_json::json!({
                "cidr": "10.0.0.0/30", "affinity": "host:n1",
                "affinityClaimTime": "2024-01-01T00:00:00Z",
                "allocations": [0, null, 0, null], "unallocated": [1, 3],
                "attributes": [{"handle_id": "h", "secondary": {"node": "n1"},
                                "alternateOwnerAttrs": {"pod": "p-target"},
                                "releasedAt": "2024-01-01T00:00:00Z"}],
                "sequenceNumber": 5, "sequenceNumberForAllocation": {"0": 3, "2": 4},
                "deleted": false, "strictAffinity": false})),
            ),
            (
                Kind::BlockAffinity,
                full::<BlockAffinity>(serde_json::json!({
                "cidr": "10.0.0.0/26", "node": "n1", "state": "confirmed",
                "type": "host", "deleted": "false"})),
            ),
            (
                Kind::IpamHandle,
                full::<IpamHandle>(serde_json::json!({
                "handleID": "h", "block": {"10.0.0.0/26": 2}, "deleted": false})),
            ),
            (
                Kind::IpamConfig,
                full::<IpamConfig>(serde_json::json!({
                "strictAffinity": true, "autoAllocateBlocks": false,
                "maxBlocksPerHost": 4, "ipCooldownSeconds": 30})),
            ),
            (
                Kind::IpReservation,
                full::<IpReservation>(serde_json::json!({
                "reservedCIDRs": ["10.0.0.5", "10.0.1.0/24"]})),
            ),
        ]
    }

    /// Checks `v` against `schema`: every field declared, every type right.
    fn conforms(v: &Value, schema: &Value, path: &str) {
        if v.is_null() {
            assert_eq!(schema["nullable"], true, "{path}: null where not nullable");
            return;
        }
        let ty = schema["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no type"));
        let ok = match ty {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            other => panic!("{path}: unexpected type {other}"),
        };
        assert!(ok, "{path}: {v} is not {ty}");
        if let Some(values) = schema["enum"].as_array() {
            assert!(values.contains(v), "{path}: {v} not in {values:?}");
        }
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    conforms(item, &schema["items"], &format!("{path}[{i}]"));
                }
            }
            Value::Object(fields) => {
                for (k, item) in fields {
                    let sub = if schema["properties"].is_object() {
                        schema["properties"]
                            .get(k)
                            .unwrap_or_else(|| panic!("{path}.{k} is not in the schema"))
                    } else {
                        &schema["additionalProperties"]
                    };
                    conforms(item, sub, &format!("{path}.{k}"));
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_model_field_is_in_the_schema_and_every_schema_field_in_the_model() {
        for (kind, spec) in fixtures() {
            let schema = spec_schema(kind);
            conforms(&spec, &schema, kind.as_str());
            let declared: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
            for field in declared {
                assert!(
                    spec.get(field).is_some(),
                    "{kind}: schema field {field} missing from the full fixture"
                );
            }
            for req in schema["required"].as_array().into_iter().flatten() {
                assert!(spec.get(req.as_str().unwrap()).is_some(), "{kind}: {req}");
            }
        }
    }

    #[test]
    fn required_fields_are_always_written() {
        // A minimal object of each required-field kind, written by the model, still has
        // every field the CRD requires (a real API server would refuse it otherwise).
        let block = IpamBlock {
            cidr: "10.0.0.0/30".parse().unwrap(),
            affinity: None,
            affinity_claim_time: None,
            allocations: vec![None; 4],
            unallocated: (0..4).collect(),
            attributes: vec![],
            sequence_number: 0,
            sequence_number_for_allocation: Default::default(),
            deleted: false,
            strict_affinity: false,
            extra: Default::default(),
        };
        let minimal = [
            (Kind::IpamBlock, serde_json::to_value(block).unwrap()),
            (
                Kind::IpamHandle,
                serde_json::to_value(IpamHandle::new("h")).unwrap(),
            ),
            (
                Kind::IpamConfig,
                serde_json::to_value(IpamConfig::default()).unwrap(),
            ),
            (
                Kind::IpPool,
                serde_json::to_value(IpPool::new("10.0.0.0/8".parse().unwrap())).unwrap(),
            ),
        ];
        for (kind, v) in minimal {
            for req in spec_schema(kind)["required"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert!(
                    v.get(req.as_str().unwrap()).is_some(),
                    "{kind}: {req} not written"
                );
            }
            conforms(&v, &spec_schema(kind), kind.as_str());
        }
    }

    #[test]
    fn manifests_parse_and_name_calicos_resources() {
        let docs = crds();
        assert_eq!(docs.len(), 6);
        let plurals = [
            "ippools",
            "ipamblocks",
            "blockaffinities",
            "ipamhandles",
            "ipamconfigs",
            "ipreservations",
        ];
        for (doc, plural) in docs.iter().zip(plurals) {
            assert_eq!(doc["apiVersion"], "apiextensions.k8s.io/v1");
            assert_eq!(
                doc["metadata"]["name"],
                format!("{plural}.crd.projectcalico.org")
            );
            assert_eq!(doc["spec"]["group"], "crd.projectcalico.org");
            assert_eq!(doc["spec"]["scope"], "Cluster");
            assert_eq!(doc["spec"]["names"]["plural"], plural);
            let v = &doc["spec"]["versions"][0];
            assert_eq!(v["name"], "v1");
            assert!(v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"].is_object());
        }
        let cols = |i: usize| -> Vec<String> {
            docs[i]["spec"]["versions"][0]["additionalPrinterColumns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(cols(0), ["CIDR", "Block Size", "Disabled", "Age"]);
        assert_eq!(cols(1), ["CIDR", "Affinity", "Age"]);
        assert_eq!(cols(2), ["Node", "CIDR", "State", "Age"]);
        assert_eq!(cols(3), ["Age"]);
    }
}
