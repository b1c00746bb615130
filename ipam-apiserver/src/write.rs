//! Create, update (PUT), merge patch and delete, each one datastore compare-and-swap.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ipam_core::retry::{Conflicting, RetryError, retry_conflicts};
use ipam_core::{Datastore, Kind, Resource, Revision, StoreError, Stored};
use serde_json::{Value, json};

use super::{Admission, ApiServer, json, resolve, store_status};
use crate::admission::{Admit, Denied};
use crate::object::{Incoming, Refusal, Status, StatusReason, from_object, to_object};
use ipam_k8s::resource::{GROUP, labels_of, uid_of};
use ipam_k8s::with_kind;

/// Unconditional writes (no `resourceVersion` given) retry a conflict this many times.
const UNCONDITIONAL_ATTEMPTS: u32 = 16;

fn parse_body(body: &Bytes) -> Result<Value, Status> {
    serde_json::from_slice(body)
        .map_err(|e| Status::bad_request(format!("the body is not valid JSON: {e}")))
}

/// Parses and checks an object sent for `name` (None: take the body's name).
fn incoming<R: Resource>(body: &Value, url_name: Option<&str>) -> Result<Incoming<R>, Status> {
    let kind = R::KIND;
    let inc = from_object::<R>(body).map_err(|r| match r {
        Refusal::BadRequest(m) => Status::bad_request(m),
        Refusal::Invalid(field, why) => {
            let name = body["metadata"]["name"].as_str().unwrap_or("");
            Status::invalid(kind, name, &field, &why)
        }
    })?;
    let name = match (url_name, inc.name.as_deref()) {
        (None, None) | (None, Some("")) => {
            return Err(Status::invalid(
                kind,
                "",
                "metadata.name",
                "Required value: name is required",
            ));
        }
        (Some(url), Some(body_name)) if url != body_name => {
            return Err(Status::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({url})"
            )));
        }
        (Some(url), _) => url,
        (None, Some(n)) => n,
    };
    let derived = labels_of(&inc.spec);
    if let Some((k, v)) = inc.labels.iter().find(|(k, v)| derived.get(*k) != Some(*v)) {
        let why = format!(
            "{k}={v}: labels are derived from the spec and cannot be set (the datastore has no labels)"
        );
        return Err(Status::invalid(kind, name, "metadata.labels", &why));
    }
    if !inc.annotations.is_empty() {
        let why = "annotations cannot be stored by this server's datastore";
        return Err(Status::invalid(kind, name, "metadata.annotations", why));
    }
    if body["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
    {
        let why = "finalizers are not supported by this server";
        return Err(Status::invalid(kind, name, "metadata.finalizers", why));
    }
    if let Some(uid) = &inc.uid
        && *uid != uid_of(kind, name)
    {
        let why = format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            uid_of(kind, name)
        );
        return Err(Status::conflict(kind, name, &why));
    }
    Ok(inc)
}

/// A write attempt's failure: a datastore error (conflicts are retried) or a refusal.
enum Failure {
    /// The datastore failed; a conflict may succeed on a fresh read.
    Store(StoreError),
    /// The request or the object was refused; retrying cannot help.
    Refused(Status),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Refused(s)
    }
}

impl Conflicting for Failure {
    fn is_conflict(&self) -> bool {
        matches!(self, Failure::Store(e) if e.is_conflict())
    }
}

impl Failure {
    fn into_status(self, kind: Kind, name: &str) -> Status {
        match self {
            Failure::Store(e) => store_status(kind, name, e),
            Failure::Refused(s) => s,
        }
    }
}

/// The Status for what [`retry_conflicts`] gave up with.
fn gave_up(kind: Kind, name: &str, e: RetryError<Failure>) -> Status {
    match e {
        RetryError::Failed(f) | RetryError::Exhausted { last: f, .. } => f.into_status(kind, name),
    }
}

/// Runs the admission rules of `R` on a write of `spec` over `name`.
async fn admit<D: Datastore, R: Admit>(
    api: &ApiServer<D>,
    name: &str,
    spec: &R,
) -> Result<(), Failure> {
    if api.options.admission == Admission::SchemaOnly {
        return Ok(());
    }
    match R::admit_write(&api.store, name, spec).await {
        Ok(()) => Ok(()),
        Err(Denied::Store(e)) => Err(Failure::Store(e)),
        Err(Denied::Invalid(field, why)) => Err(Status::invalid(R::KIND, name, field, &why).into()),
    }
}

/// Runs the delete admission rules of `R` on `current`.
async fn admit_removal<D: Datastore, R: Admit>(
    api: &ApiServer<D>,
    current: &Stored<R>,
) -> Result<(), Failure> {
    if api.options.admission == Admission::SchemaOnly {
        return Ok(());
    }
    match R::admit_delete(&api.store, current).await {
        Ok(()) => Ok(()),
        Err(Denied::Store(e)) => Err(Failure::Store(e)),
        Err(Denied::Invalid(field, why)) => {
            Err(Status::invalid(R::KIND, &current.name, field, &why).into())
        }
    }
}

/// `POST .../{plural}`.
pub(super) async fn create<D: Datastore + 'static>(
    State(api): State<Arc<ApiServer<D>>>,
    Path(plural): Path<String>,
    body: Bytes,
) -> Response {
    let def = match resolve(&plural) {
        Ok(d) => d,
        Err(s) => return s.into_response(),
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(s) => return s.into_response(),
    };
    with_kind!(def.kind, R => match create_typed::<D, R>(&api, &body).await {
        Ok(obj) => json(StatusCode::CREATED, &obj),
        Err(s) => s.into_response(),
    })
}

async fn create_typed<D: Datastore + 'static, R: Admit>(
    api: &ApiServer<D>,
    body: &Value,
) -> Result<Value, Status> {
    let inc = incoming::<R>(body, None)?;
    let name = inc.name.clone().unwrap_or_default();
    if let Err(why) = rfc1123_subdomain(&name) {
        return Err(Status::invalid(R::KIND, &name, "metadata.name", &why));
    }
    if inc.resource_version.is_some() {
        let why = "resourceVersion should not be set on objects to be created";
        return Err(Status::invalid(
            R::KIND,
            &name,
            "metadata.resourceVersion",
            why,
        ));
    }
    // An existing name is AlreadyExists, whatever the admission rules would say of the spec.
    if api.store.get::<R>(&name).await.is_ok() {
        return Err(Status::already_exists(R::KIND, &name));
    }
    admit(api, &name, &inc.spec)
        .await
        .map_err(|f| f.into_status(R::KIND, &name))?;
    let revision = api
        .store
        .create::<R>(&name, inc.spec.clone())
        .await
        .map_err(|e| store_status(R::KIND, &name, e))?;
    api.born(R::KIND, &name);
    let stored = Stored {
        name: name.clone(),
        revision,
        value: inc.spec,
    };
    Ok(to_object(&stored, &api.meta(R::KIND, &name)))
}

/// The rule kube-apiserver holds a custom resource's name to: a lowercase RFC 1123
/// subdomain (at most 253 characters; dot-separated labels of `a-z`, `0-9` and `-` that
/// start and end alphanumeric).
fn rfc1123_subdomain(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        l.starts_with(alnum) && l.ends_with(alnum) && l.chars().all(|c| alnum(c) || c == '-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
             characters, '-' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

/// One admitted compare-and-swap of `spec` over `name` at `revision`.
async fn put_at<D: Datastore + 'static, R: Admit>(
    api: &ApiServer<D>,
    name: &str,
    spec: R,
    revision: &Revision,
) -> Result<Value, Failure> {
    admit(api, name, &spec).await?;
    let revision = api.store.update::<R>(name, spec.clone(), revision).await?;
    let stored = Stored {
        name: name.to_owned(),
        revision,
        value: spec,
    };
    Ok(to_object(&stored, &api.meta(R::KIND, name)))
}

/// Writes `spec` over `name` at `revision`. Without one it is refused, as kube-apiserver
/// refuses an unconditional update of a custom resource (its strategy allows none): a
/// replace from a copy without a version would overwrite whatever was written since.
async fn put<D: Datastore + 'static, R: Admit>(
    api: &ApiServer<D>,
    name: &str,
    spec: R,
    revision: Option<Revision>,
) -> Result<Value, Status> {
    let Some(rev) = revision else {
        let why = "must be specified for an update";
        return Err(Status::invalid(
            R::KIND,
            name,
            "metadata.resourceVersion",
            why,
        ));
    };
    put_at(api, name, spec, &rev)
        .await
        .map_err(|f| f.into_status(R::KIND, name))
}

/// `PUT .../{plural}/{name}`: a compare-and-swap on `metadata.resourceVersion` (409 when it
/// moved, 422 when it is missing).
pub(super) async fn update<D: Datastore + 'static>(
    State(api): State<Arc<ApiServer<D>>>,
    Path((plural, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let def = match resolve(&plural) {
        Ok(d) => d,
        Err(s) => return s.into_response(),
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(s) => return s.into_response(),
    };
    with_kind!(def.kind, R => {
        let inc = match incoming::<R>(&body, Some(&name)) {
            Ok(i) => i,
            Err(s) => return s.into_response(),
        };
        match put::<D, R>(&api, &name, inc.spec, inc.resource_version.map(Revision)).await {
            Ok(obj) => json(StatusCode::OK, &obj),
            Err(s) => s.into_response(),
        }
    })
}

/// `PATCH .../{plural}/{name}` with `application/merge-patch+json` (RFC 7386). A
/// `metadata.resourceVersion` in the patch is a precondition; without one, a conflict with
/// a concurrent writer re-reads and re-applies the patch.
pub(super) async fn patch<D: Datastore + 'static>(
    State(api): State<Arc<ApiServer<D>>>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let def = match resolve(&plural) {
        Ok(d) => d,
        Err(s) => return s.into_response(),
    };
    if let Err(s) = merge_patch_media(&headers) {
        return s.into_response();
    }
    let patch = match parse_body(&body) {
        Ok(b) => b,
        Err(s) => return s.into_response(),
    };
    with_kind!(def.kind, R => match patch_typed::<D, R>(&api, &name, &patch).await {
        Ok(obj) => json(StatusCode::OK, &obj),
        Err(s) => s.into_response(),
    })
}

/// Refuses a patch in any format but JSON merge patch (415).
fn merge_patch_media(headers: &HeaderMap) -> Result<(), Status> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim();
    if media == "application/merge-patch+json" {
        return Ok(());
    }
    let msg = format!(
        "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json (got {media:?})"
    );
    Err(Status::new(415, StatusReason::UnsupportedMediaType, msg))
}

async fn patch_typed<D: Datastore + 'static, R: Admit>(
    api: &ApiServer<D>,
    name: &str,
    patch: &Value,
) -> Result<Value, Status> {
    let pinned = patch["metadata"]["resourceVersion"]
        .as_str()
        .map(|s| Revision(s.to_owned()));
    // A pinned revision is a precondition: one attempt, its conflict answered as is.
    let limit = if pinned.is_some() {
        1
    } else {
        UNCONDITIONAL_ATTEMPTS
    };
    let pinned = &pinned;
    retry_conflicts(limit, (), |()| async move {
        let attempt = async {
            let current = api.store.get::<R>(name).await?;
            let mut obj = to_object(&current, &api.meta(R::KIND, name));
            merge_patch(&mut obj, patch);
            let inc = incoming::<R>(&obj, Some(name))?;
            let rev = pinned.as_ref().unwrap_or(&current.revision);
            put_at(api, name, inc.spec, rev).await
        };
        ((), attempt.await)
    })
    .await
    .map_err(|e| gave_up(R::KIND, name, e))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// `DELETE .../{plural}/{name}`, with optional `DeleteOptions.preconditions` (uid,
/// resourceVersion): a mismatch is 409 and deletes nothing.
pub(super) async fn delete<D: Datastore + 'static>(
    State(api): State<Arc<ApiServer<D>>>,
    Path((plural, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let def = match resolve(&plural) {
        Ok(d) => d,
        Err(s) => return s.into_response(),
    };
    let opts = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match parse_body(&body) {
            Ok(b) => b,
            Err(s) => return s.into_response(),
        }
    };
    let pre = &opts["preconditions"];
    if let Some(uid) = pre["uid"].as_str()
        && uid != uid_of(def.kind, &name)
    {
        let why = format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            uid_of(def.kind, &name)
        );
        return Status::conflict(def.kind, &name, &why).into_response();
    }
    let rv = pre["resourceVersion"]
        .as_str()
        .map(|s| Revision(s.to_owned()));
    with_kind!(def.kind, R => match delete_typed::<D, R>(&api, &name, rv).await {
        Ok(body) => json(StatusCode::OK, &body),
        Err(s) => s.into_response(),
    })
}

async fn delete_typed<D: Datastore + 'static, R: Admit>(
    api: &ApiServer<D>,
    name: &str,
    precondition: Option<Revision>,
) -> Result<Value, Status> {
    let kind = R::KIND;
    if let Some(rev) = precondition {
        return delete_at::<D, R>(api, name, rev).await;
    }
    let removed = retry_conflicts(UNCONDITIONAL_ATTEMPTS, (), |()| async move {
        let attempt = async {
            let current = api.store.get::<R>(name).await?;
            admit_removal(api, &current).await?;
            api.store.delete::<R>(name, &current.revision).await?;
            Ok::<_, Failure>(current)
        };
        ((), attempt.await)
    })
    .await
    .map_err(|e| gave_up(kind, name, e))?;
    let obj = to_object(&removed, &api.meta(kind, name));
    api.forget(kind, name);
    Ok(obj)
}

/// A delete under a `resourceVersion` precondition: one attempt, a mismatch answered 409.
async fn delete_at<D: Datastore + 'static, R: Admit>(
    api: &ApiServer<D>,
    name: &str,
    rev: Revision,
) -> Result<Value, Status> {
    let kind = R::KIND;
    // Only the allocator's rules need the object first; an object the read cannot see (soft
    // deleted, gone) is left to the delete itself to answer, as without admission.
    if api.options.admission == Admission::Allocator {
        match api.store.get::<R>(name).await {
            Ok(current) => admit_removal(api, &current)
                .await
                .map_err(|f| f.into_status(kind, name))?,
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(store_status(kind, name, e)),
        }
    }
    match api.store.delete::<R>(name, &rev).await {
        Ok(()) => {
            api.forget(kind, name);
            Ok(success(kind, name))
        }
        Err(StoreError::Conflict { .. }) => {
            let now = match api.store.get::<R>(name).await {
                Ok(s) => s.revision.0,
                Err(_) => "(soft-deleted)".to_owned(),
            };
            let why = format!(
                "Precondition failed: ResourceVersion in precondition: {rev}, ResourceVersion in object meta: {now}"
            );
            Err(Status::conflict(kind, name, &why))
        }
        Err(e) => Err(store_status(kind, name, e)),
    }
}

/// The `Status` kube-apiserver answers a delete with when it does not return the object.
fn success(kind: Kind, name: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": GROUP, "kind": kind.plural(), "uid": uid_of(kind, name)},
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_rfc1123_subdomains() {
        for ok in [
            "a",
            "k8s-pod-network.0a1b",
            "10-244-0-0-26",
            "node-1-fd00--122",
        ] {
            assert_eq!(super::rfc1123_subdomain(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in [
            "",
            "Upper_Case",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            &long,
        ] {
            assert!(super::rfc1123_subdomain(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1, 2]});
        merge_patch(&mut t, &json!({"a": [3]}));
        assert_eq!(t, json!({"a": [3]}));
    }
}
