//! GET of one object and of a collection (list, or watch with `?watch=true`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ipam_core::{Datastore, Resource, Scope, Stored};
use serde_json::{Value, json};

use super::{ApiServer, json, resolve, store_status, table, wants_table};
use crate::object::{Status, to_object};
use crate::selector::{LabelSelector, NameSelector};
use ipam_k8s::resource::{NODE_LABEL, ResourceDef, labels_of, node_scoped};
use ipam_k8s::with_kind;

type Params = Query<HashMap<String, String>>;

/// `GET .../{plural}/{name}`.
pub(super) async fn get_one<D: Datastore + 'static>(
    State(api): State<Arc<ApiServer<D>>>,
    Path((plural, name)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let def = match resolve(&plural) {
        Ok(d) => d,
        Err(s) => return s.into_response(),
    };
    let table = wants_table(&headers);
    let include = params.get("includeObject").map(String::as_str);
    with_kind!(def.kind, R => {
        match api.store.get::<R>(&name).await {
            Ok(stored) => {
                let obj = to_object(&stored, &api.meta(R::KIND, &name));
                if table {
                    json(StatusCode::OK, &table::table(def, &[obj], "", include))
                } else {
                    json(StatusCode::OK, &obj)
                }
            }
            Err(e) => store_status(def.kind, &name, e).into_response(),
        }
    })
}

/// The parsed query of a list or watch.
pub(super) struct ListQuery {
    pub labels: LabelSelector,
    pub names: NameSelector,
    pub limit: Option<usize>,
    /// The name to continue after, and the list revision of the first page.
    pub after: Option<(String, String)>,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub watch: bool,
    /// A streaming list (`sendInitialEvents=true`): every object as ADDED, then, with
    /// `allowWatchBookmarks=true`, a BOOKMARK marking the end of the initial events.
    pub send_initial_events: bool,
    pub allow_watch_bookmarks: bool,
}

impl ListQuery {
    fn parse(params: &HashMap<String, String>) -> Result<Self, Status> {
        let labels = LabelSelector::parse(params.get("labelSelector").map_or("", |s| s))
            .map_err(|e| Status::bad_request(format!("unable to parse labelSelector: {e}")))?;
        let names = NameSelector::parse(params.get("fieldSelector").map_or("", |s| s))
            .map_err(|e| Status::bad_request(format!("unable to parse fieldSelector: {e}")))?;
        let number = |key: &str| -> Result<Option<u64>, Status> {
            params
                .get(key)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| Status::bad_request(format!("{key} must be a number: {v:?}")))
                })
                .transpose()
        };
        let after = match params.get("continue").filter(|c| !c.is_empty()) {
            None => None,
            Some(token) => Some(decode_continue(token).ok_or_else(|| {
                Status::bad_request("invalid value for continue: not a token this server issued")
            })?),
        };
        let flag = |key: &str| params.get(key).is_some_and(|w| w == "true" || w == "1");
        let watch = flag("watch");
        Ok(ListQuery {
            labels,
            names,
            limit: number("limit")?.filter(|&n| n > 0).map(|n| n as usize),
            after,
            resource_version: params.get("resourceVersion").cloned(),
            timeout_seconds: number("timeoutSeconds")?,
            watch,
            send_initial_events: flag("sendInitialEvents"),
            allow_watch_bookmarks: flag("allowWatchBookmarks"),
        })
    }
}

/// `GET .../{plural}`: a list, or a watch.
pub(super) async fn list<D: Datastore + 'static>(
    State(api): State<Arc<ApiServer<D>>>,
    Path(plural): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let def = match resolve(&plural) {
        Ok(d) => d,
        Err(s) => return s.into_response(),
    };
    let query = match ListQuery::parse(&params) {
        Ok(q) => q,
        Err(s) => return s.into_response(),
    };
    let table = wants_table(&headers);
    let include = params.get("includeObject").cloned();
    if query.watch {
        return super::watch::watch(api, def, query, table, include).await;
    }
    with_kind!(def.kind, R => {
        match list_page::<D, R>(&api, def, &query).await {
            Ok((items, rv, next)) if table => {
                let mut t = table::table(def, &items, &rv, include.as_deref());
                if let Some(next) = next {
                    t["metadata"]["continue"] = json!(next);
                }
                json(StatusCode::OK, &t)
            }
            Ok((items, rv, next)) => {
                let mut metadata = json!({"resourceVersion": rv});
                if let Some(next) = next {
                    metadata["continue"] = json!(next);
                }
                json(StatusCode::OK, &json!({
                    "apiVersion": ipam_k8s::resource::API_VERSION,
                    "kind": def.list_kind(),
                    "metadata": metadata,
                    "items": items,
                }))
            }
            Err(s) => s.into_response(),
        }
    })
}

/// The matching objects, sorted by name, as JSON, with the list revision (the highest
/// revision among the objects read; pages keep the first page's).
pub(super) async fn select<D: Datastore + 'static, R: Resource>(
    api: &ApiServer<D>,
    query: &ListQuery,
) -> Result<(Vec<(Stored<R>, Value)>, Option<u64>), Status> {
    // A selector pinning the node label is answered from the datastore's node index. Digest
    // label values name no node, so those fall back to reading every object.
    let node = query
        .labels
        .pinned(NODE_LABEL)
        .filter(|v| node_scoped(R::KIND) && !v.starts_with("h-"));
    let scope = node.map_or(Scope::All, Scope::Node);
    let all = api
        .store
        .list::<R>(scope)
        .await
        .map_err(|e| store_status(R::KIND, "", e))?;
    let max_rev = all
        .iter()
        .filter_map(|s| s.revision.0.parse::<u64>().ok())
        .max();
    let out = all
        .into_iter()
        .filter(|s| query.names.matches(&s.name))
        .filter(|s| query.labels.matches(&labels_of(&s.value)))
        .map(|s| {
            let obj = to_object(&s, &api.meta(R::KIND, &s.name));
            (s, obj)
        })
        .collect();
    Ok((out, max_rev))
}

type Page = (Vec<Value>, String, Option<String>);

async fn list_page<D: Datastore + 'static, R: Resource>(
    api: &ApiServer<D>,
    _def: &ResourceDef,
    query: &ListQuery,
) -> Result<Page, Status> {
    let (all, max_rev) = select::<D, R>(api, query).await?;
    let rv = match &query.after {
        Some((_, rv)) => rv.clone(),
        None => max_rev.map(|r| r.to_string()).unwrap_or_else(|| "0".into()),
    };
    let start = query.after.as_ref().map(|(name, _)| name.as_str());
    let mut items: Vec<(String, Value)> = all
        .into_iter()
        .filter(|(s, _)| start.is_none_or(|after| s.name.as_str() > after))
        .map(|(s, v)| (s.name, v))
        .collect();
    let mut next = None;
    if let Some(limit) = query.limit
        && items.len() > limit
    {
        items.truncate(limit);
        next = items.last().map(|(name, _)| encode_continue(name, &rv));
    }
    Ok((items.into_iter().map(|(_, v)| v).collect(), rv, next))
}

/// A continue token: the last name served and the list revision, opaque to clients.
fn encode_continue(last: &str, rv: &str) -> String {
    URL_SAFE_NO_PAD.encode(json!({"v": 1, "after": last, "rv": rv}).to_string())
}

fn decode_continue(token: &str) -> Option<(String, String)> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        v.get("after")?.as_str()?.to_owned(),
        v.get("rv")?.as_str()?.to_owned(),
    ))
}
