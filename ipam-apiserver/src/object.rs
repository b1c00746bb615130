//! Kubernetes objects and `metav1.Status` as JSON, built from and parsed into the model.

use ipam_core::{Kind, Resource, Stored};
use serde_json::{Map, Value, json};

use ipam_k8s::resource::{API_VERSION, GROUP, labels_of, uid_of};

/// The metadata the server reports beside a stored spec.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    /// `metadata.creationTimestamp` (RFC 3339), if known.
    pub created: Option<String>,
}

/// The fields of an incoming object the server and `KubeStore` care about.
#[derive(Clone, Debug)]
pub struct Incoming<R> {
    /// `metadata.name`, if given.
    pub name: Option<String>,
    /// `metadata.resourceVersion`, if given.
    pub resource_version: Option<String>,
    /// `metadata.uid`, if given.
    pub uid: Option<String>,
    /// `metadata.labels`.
    pub labels: Map<String, Value>,
    /// `metadata.annotations`.
    pub annotations: Map<String, Value>,
    /// The spec.
    pub spec: R,
}

/// Why an incoming object was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a JSON object, or the wrong `apiVersion`/`kind` (400).
    BadRequest(String),
    /// A field failed validation (422): the field path and why.
    Invalid(String, String),
}

/// The JSON object for a stored spec, as the API serves it.
pub fn to_object<R: Resource>(stored: &Stored<R>, meta: &Meta) -> Value {
    let mut metadata = json!({
        "name": stored.name,
        "uid": uid_of(R::KIND, &stored.name),
        "resourceVersion": stored.revision.0,
        "creationTimestamp": meta.created,
    });
    let labels = labels_of(&stored.value);
    if !labels.is_empty() {
        metadata["labels"] = Value::Object(labels);
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": R::KIND.as_str(),
        "metadata": metadata,
        "spec": stored.value,
    })
}

/// Parses an object sent by a client: checks `apiVersion` and `kind`, and decodes the spec.
pub fn from_object<R: Resource>(body: &Value) -> Result<Incoming<R>, Refusal> {
    let obj = body
        .as_object()
        .ok_or_else(|| Refusal::BadRequest("the body is not a JSON object".into()))?;
    let kind = R::KIND.as_str();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some(API_VERSION) => {}
        Some(other) => {
            return Err(Refusal::BadRequest(format!(
                "apiVersion {other:?} does not match the expected {API_VERSION:?}"
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None => {}
        Some(k) if k == kind => {}
        Some(other) => {
            return Err(Refusal::BadRequest(format!(
                "kind {other:?} does not match the expected {kind:?}"
            )));
        }
    }
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let text = |key: &str| meta.get(key).and_then(Value::as_str).map(str::to_owned);
    let map = |key: &str| match meta.get(key) {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let spec_json = obj
        .get("spec")
        .cloned()
        .ok_or_else(|| Refusal::Invalid("spec".into(), "Required value".into()))?;
    let spec: R = serde_json::from_value(spec_json)
        .map_err(|e| Refusal::Invalid("spec".into(), e.to_string()))?;
    Ok(Incoming {
        name: text("name"),
        resource_version: text("resourceVersion").filter(|s| !s.is_empty()),
        uid: text("uid").filter(|s| !s.is_empty()),
        labels: map("labels"),
        annotations: map("annotations"),
        spec,
    })
}

/// `metav1.StatusReason`: the machine-readable cause of a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusReason {
    /// 400: the request itself is malformed.
    BadRequest,
    /// 401: no credentials, or credentials that do not match.
    Unauthorized,
    /// 403: the credentials (or their absence) do not allow the request.
    Forbidden,
    /// 404: no such object or resource.
    NotFound,
    /// 405: the resource does not take this method.
    MethodNotAllowed,
    /// 409: an object of that name exists.
    AlreadyExists,
    /// 409: a precondition or compare-and-swap failed.
    Conflict,
    /// 415: the body's media type is not accepted.
    UnsupportedMediaType,
    /// 422: the object breaks a rule.
    Invalid,
    /// 429: too many requests of this kind at once.
    TooManyRequests,
    /// 500: something failed inside the server or the datastore.
    InternalError,
    /// 503: the datastore cannot be reached now.
    ServiceUnavailable,
}

impl StatusReason {
    /// The reason as kube-apiserver spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusReason::BadRequest => "BadRequest",
            StatusReason::Unauthorized => "Unauthorized",
            StatusReason::Forbidden => "Forbidden",
            StatusReason::NotFound => "NotFound",
            StatusReason::MethodNotAllowed => "MethodNotAllowed",
            StatusReason::AlreadyExists => "AlreadyExists",
            StatusReason::Conflict => "Conflict",
            StatusReason::UnsupportedMediaType => "UnsupportedMediaType",
            StatusReason::Invalid => "Invalid",
            StatusReason::TooManyRequests => "TooManyRequests",
            StatusReason::InternalError => "InternalError",
            StatusReason::ServiceUnavailable => "ServiceUnavailable",
        }
    }
}

/// A `metav1.Status` failure.
#[derive(Clone, Debug)]
pub struct Status {
    /// HTTP status code.
    pub code: u16,
    /// Why, for machines.
    pub reason: StatusReason,
    /// Human-readable message.
    pub message: String,
    /// `details`, when the failure is about one object.
    pub details: Option<Value>,
}

impl Status {
    /// A failure with no object details.
    pub fn new(code: u16, reason: StatusReason, message: impl Into<String>) -> Self {
        Status {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// A failure about the object `name` of `kind`.
    pub fn about(
        code: u16,
        reason: StatusReason,
        kind: Kind,
        name: &str,
        message: impl Into<String>,
    ) -> Self {
        Status {
            code,
            reason,
            message: message.into(),
            details: Some(json!({"name": name, "group": GROUP, "kind": kind.plural()})),
        }
    }

    /// 404 for an object.
    pub fn not_found(kind: Kind, name: &str) -> Self {
        let msg = format!("{}.{GROUP} {name:?} not found", kind.plural());
        Status::about(404, StatusReason::NotFound, kind, name, msg)
    }

    /// 409 AlreadyExists.
    pub fn already_exists(kind: Kind, name: &str) -> Self {
        let msg = format!("{}.{GROUP} {name:?} already exists", kind.plural());
        Status::about(409, StatusReason::AlreadyExists, kind, name, msg)
    }

    /// 409 Conflict, with kube-apiserver's wording.
    pub fn conflict(kind: Kind, name: &str, why: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {}.{GROUP} {name:?}: {why}",
            kind.plural()
        );
        Status::about(409, StatusReason::Conflict, kind, name, msg)
    }

    /// 422 Invalid, naming the field.
    pub fn invalid(kind: Kind, name: &str, field: &str, why: &str) -> Self {
        let msg = format!(
            "{}.{GROUP} {name:?} is invalid: {field}: Invalid value: {why}",
            kind.as_str()
        );
        let mut s = Status::about(422, StatusReason::Invalid, kind, name, msg);
        if let Some(d) = s.details.as_mut() {
            d["kind"] = json!(kind.as_str());
            d["causes"] = json!([{"reason": "FieldValueInvalid", "message": why, "field": field}]);
        }
        s
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Status::new(400, StatusReason::BadRequest, message)
    }

    /// The `metav1.Status` body.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason.as_str(),
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipam_core::{BlockAffinity, IpamHandle, Revision};

    #[test]
    fn objects_round_trip_with_synthesized_labels() {
        let aff: BlockAffinity = serde_json::from_value(
            json!({"cidr":"10.0.0.0/26","node":"n1","state":"confirmed","deleted":"false"}),
        )
        .unwrap();
        let stored = Stored {
            name: "n1-10-0-0-0-26".into(),
            revision: Revision::from_u64(7),
            value: aff.clone(),
        };
        let obj = to_object(&stored, &Meta::default());
        assert_eq!(
            obj["metadata"]["labels"]["crd.projectcalico.org/node"],
            "n1"
        );
        assert_eq!(obj["metadata"]["resourceVersion"], "7");
        assert!(obj["metadata"]["creationTimestamp"].is_null());
        let back: Incoming<BlockAffinity> = from_object(&obj).unwrap();
        assert_eq!(back.spec, aff);
        assert_eq!(back.resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn wrong_kind_and_bad_spec_are_refused() {
        let wrong = json!({"apiVersion": API_VERSION, "kind": "IPPool", "spec": {}});
        assert!(matches!(
            from_object::<IpamHandle>(&wrong),
            Err(Refusal::BadRequest(_))
        ));
        let bad = json!({"spec": {"handleID": 3}});
        assert!(matches!(
            from_object::<IpamHandle>(&bad),
            Err(Refusal::Invalid(..))
        ));
    }
}
