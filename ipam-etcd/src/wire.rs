//! The etcd v3 messages this store sends and reads, as protobuf structs, and the builders of
//! its transactions.
//!
//! Only the fields the store uses are declared; field numbers are etcd's (`rpc.proto`,
//! `kv.proto` of etcd's API). Protobuf skips fields a reader does not declare, so a newer
//! etcd's additions decode cleanly. Declaring them here rather than generating them keeps
//! the plugin's build free of protoc and its binary free of a gRPC server.

use prost::{Message, Oneof};

/// The gRPC methods called, by etcd's service paths.
pub(crate) mod method {
    pub const RANGE: &str = "/etcdserverpb.KV/Range";
    pub const TXN: &str = "/etcdserverpb.KV/Txn";
    pub const AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";
}

/// The header of every response; only the revision is read.
#[derive(Clone, PartialEq, Message)]
pub struct ResponseHeader {
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

/// One stored key-value pair.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
}

impl KeyValue {
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn value(&self) -> &[u8] {
        &self.value
    }

    pub fn mod_revision(&self) -> i64 {
        self.mod_revision
    }
}

/// A read of `key`, or of `[key, range_end)`.
#[derive(Clone, PartialEq, Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
}

impl RangeRequest {
    /// A read of one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        RangeRequest {
            key: key.into(),
            range_end: Vec::new(),
        }
    }

    /// A read of every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_end(&key);
        RangeRequest { key, range_end }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
}

impl RangeResponse {
    pub fn kvs(&self) -> &[KeyValue] {
        &self.kvs
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// A delete of one key (the store never deletes a range).
#[derive(Clone, PartialEq, Message)]
pub struct DeleteRangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteRangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub deleted: i64,
}

/// One operation of a transaction branch.
#[derive(Clone, PartialEq, Message)]
pub struct TxnOp {
    #[prost(oneof = "Request", tags = "1, 2, 3, 4")]
    pub request: Option<Request>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Request {
    #[prost(message, tag = "1")]
    Range(RangeRequest),
    #[prost(message, tag = "2")]
    Put(PutRequest),
    #[prost(message, tag = "3")]
    Delete(DeleteRangeRequest),
    #[prost(message, tag = "4")]
    Txn(Txn),
}

impl TxnOp {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::of(Request::Put(PutRequest {
            key: key.into(),
            value: value.into(),
        }))
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::of(Request::Delete(DeleteRangeRequest { key: key.into() }))
    }

    /// A read of one key.
    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::of(Request::Range(RangeRequest::key(key)))
    }

    /// A read of every key under `prefix`.
    pub fn range(prefix: impl Into<Vec<u8>>) -> Self {
        TxnOp::of(Request::Range(RangeRequest::prefix(prefix)))
    }

    /// A transaction nested in this one's branch.
    pub fn txn(txn: Txn) -> Self {
        TxnOp::of(Request::Txn(txn))
    }

    fn of(request: Request) -> Self {
        TxnOp {
            request: Some(request),
        }
    }
}

/// What one operation of the branch that ran returned.
#[derive(Clone, PartialEq, Message)]
pub struct ResponseOp {
    #[prost(oneof = "TxnOpResponse", tags = "1, 2, 3, 4")]
    pub response: Option<TxnOpResponse>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum TxnOpResponse {
    #[prost(message, tag = "1")]
    Get(RangeResponse),
    #[prost(message, tag = "2")]
    Put(PutResponse),
    #[prost(message, tag = "3")]
    Delete(DeleteRangeResponse),
    #[prost(message, tag = "4")]
    Txn(TxnResponse),
}

/// A condition on one key: its create or mod revision equals a value. (etcd's `Compare`
/// can also order and compare versions, values and leases; the store needs only this.)
#[derive(Clone, PartialEq, Message)]
pub struct Compare {
    /// etcd's `CompareResult`; 0 is `EQUAL`.
    #[prost(int32, tag = "1")]
    pub result: i32,
    /// etcd's `CompareTarget`: 1 is `CREATE`, 2 is `MOD`.
    #[prost(int32, tag = "2")]
    pub target: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    #[prost(oneof = "Against", tags = "5, 6")]
    pub against: Option<Against>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Against {
    #[prost(int64, tag = "5")]
    CreateRevision(i64),
    #[prost(int64, tag = "6")]
    ModRevision(i64),
}

const EQUAL: i32 = 0;
const TARGET_CREATE: i32 = 1;
const TARGET_MOD: i32 = 2;

impl Compare {
    /// `key` was last written at `revision` (0: `key` does not exist).
    pub fn mod_revision(key: impl Into<Vec<u8>>, revision: i64) -> Self {
        Compare {
            result: EQUAL,
            target: TARGET_MOD,
            key: key.into(),
            against: Some(Against::ModRevision(revision)),
        }
    }

    /// `key` was created at `revision` (0: `key` does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>, revision: i64) -> Self {
        Compare {
            result: EQUAL,
            target: TARGET_CREATE,
            key: key.into(),
            against: Some(Against::CreateRevision(revision)),
        }
    }
}

/// A transaction: if every compare holds, the success branch runs, else the failure branch.
#[derive(Clone, PartialEq, Message)]
pub struct Txn {
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<TxnOp>,
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compares);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct TxnResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
    #[prost(message, repeated, tag = "3")]
    pub responses: Vec<ResponseOp>,
}

impl TxnResponse {
    pub fn succeeded(&self) -> bool {
        self.succeeded
    }

    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }

    /// The responses of the branch that ran, in order; an empty one for an answer etcd left
    /// out, so positions stay meaningful.
    pub fn op_responses(&self) -> Vec<TxnOpResponse> {
        self.responses
            .iter()
            .map(|r| {
                r.response
                    .clone()
                    .unwrap_or(TxnOpResponse::Get(RangeResponse::default()))
            })
            .collect()
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct AuthenticateRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub password: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AuthenticateResponse {
    #[prost(string, tag = "2")]
    pub token: String,
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte that
/// is not 0xff incremented and what follows dropped; `\0` (every key) if there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b != 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_past_every_key_under_it() {
        assert_eq!(prefix_end(b"/ipam/v1/"), b"/ipam/v10".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    /// Protobuf's encoding with etcd's field numbers: a compare on the mod revision of "k" at
    /// 7 is `result` (EQUAL, 0, omitted), `target` (field 2) MOD = 2, `key` (field 3) and
    /// `mod_revision` (field 6) = 7; a oneof member is sent even when it is 0.
    #[test]
    fn a_compare_encodes_with_etcds_field_numbers() {
        let bytes = Compare::mod_revision("k", 7).encode_to_vec();
        assert_eq!(bytes, vec![0x10, 0x02, 0x1a, 0x01, b'k', 0x30, 0x07]);
        let bytes = Compare::create_revision("k", 0).encode_to_vec();
        assert_eq!(bytes, vec![0x10, 0x01, 0x1a, 0x01, b'k', 0x28, 0x00]);
    }

    #[test]
    fn a_nested_transaction_round_trips() {
        let inner = Txn::new()
            .when([Compare::mod_revision("a", 3)])
            .and_then([TxnOp::delete("a")]);
        let txn = Txn::new()
            .when([Compare::create_revision("b", 0)])
            .and_then([TxnOp::put("b", "v"), TxnOp::range("p/")])
            .or_else([TxnOp::txn(inner)]);
        let back = Txn::decode(txn.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, txn);
    }

    #[test]
    fn fields_a_newer_etcd_adds_are_skipped() {
        // A KeyValue with version (4) and lease (6), which this store does not declare.
        let mut bytes = KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            value: b"v".to_vec(),
        }
        .encode_to_vec();
        bytes.extend([0x20, 0x03, 0x30, 0x09]);
        let kv = KeyValue::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            (kv.key(), kv.mod_revision(), kv.value()),
            (&b"k"[..], 5, &b"v"[..])
        );
    }
}
