//! Watch: a chunked stream of JSON events, found by polling the datastore and comparing
//! revisions (no datastore here pushes changes). Each watch holds one of a bounded number
//! of slots, ends at `timeoutSeconds`, and stops polling as soon as the client goes away
//! (the response body is dropped, and with it the stream).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream;
use ipam_core::{Datastore, Resource};
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::read::{ListQuery, select};
use super::{ApiServer, table};
use crate::object::{Status, StatusReason};
use ipam_k8s::resource::ResourceDef;
use ipam_k8s::with_kind;

/// The longest watch, whatever the client asks for.
const MAX_WATCH: Duration = Duration::from_secs(3600);

pub(super) async fn watch<D: Datastore + 'static>(
    api: Arc<ApiServer<D>>,
    def: &'static ResourceDef,
    query: ListQuery,
    as_table: bool,
    include: Option<String>,
) -> Response {
    let Ok(permit) = api.watches.clone().try_acquire_owned() else {
        return Status::new(
            429,
            StatusReason::TooManyRequests,
            "too many watches are open; try again later",
        )
        .into_response();
    };
    let wanted = query
        .timeout_seconds
        .map_or(api.options.watch_timeout, Duration::from_secs);
    let deadline = Instant::now() + wanted.min(MAX_WATCH);
    with_kind!(def.kind, R => {
        // Objects at or below the requested revision are what the client already has; a
        // streaming list's revision is only a lower bound, and it gets every object.
        let since = query
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| !query.send_initial_events);
        let known = match (since, select::<D, R>(&api, &query).await) {
            (Some(n), Ok((items, _))) if n > 0 => items
                .into_iter()
                .filter(|(s, _)| s.revision.0.parse::<u64>().is_ok_and(|r| r <= n))
                .map(|(s, v)| (s.name, (s.revision.0, v)))
                .collect(),
            (_, Err(s)) => return s.into_response(),
            _ => BTreeMap::new(),
        };
        let bookmark = query.send_initial_events && query.allow_watch_bookmarks;
        let state = Watch::<D, R> {
            api, def, query, as_table, include, deadline, known,
            queue: VecDeque::new(), first: true, done: false,
            bookmark,
            _permit: permit, _kind: std::marker::PhantomData,
        };
        let body = stream::unfold(state, |mut w| async move {
            w.next().await.map(|line| (Ok::<_, Infallible>(line), w))
        });
        let mut resp = Response::new(Body::from_stream(body));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        resp
    })
}

struct Watch<D, R> {
    api: Arc<ApiServer<D>>,
    def: &'static ResourceDef,
    query: ListQuery,
    as_table: bool,
    include: Option<String>,
    deadline: Instant,
    /// Name -> (revision, object) as last sent.
    known: BTreeMap<String, (String, Value)>,
    queue: VecDeque<Bytes>,
    first: bool,
    done: bool,
    /// A BOOKMARK is owed after the first poll (the end of a streaming list's initial events).
    bookmark: bool,
    _permit: OwnedSemaphorePermit,
    _kind: std::marker::PhantomData<fn() -> R>,
}

impl<D: Datastore + 'static, R: Resource> Watch<D, R> {
    /// The next event line, or None when the watch is over.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.queue.pop_front() {
                return Some(line);
            }
            if self.done || Instant::now() >= self.deadline {
                return None;
            }
            if !self.first {
                let wake = (Instant::now() + self.api.options.watch_poll).min(self.deadline);
                tokio::time::sleep_until(wake).await;
            }
            self.first = false;
            self.poll().await;
        }
    }

    async fn poll(&mut self) {
        let (items, revision) = match select::<D, R>(&self.api, &self.query).await {
            Ok(found) => found,
            Err(status) => {
                self.done = true;
                self.push("ERROR", status.to_json());
                return;
            }
        };
        let mut seen = BTreeMap::new();
        for (stored, obj) in items {
            let rev = stored.revision.0;
            match self.known.get(&stored.name) {
                Some((old, _)) if *old == rev => {}
                Some(_) => self.push_object("MODIFIED", &obj),
                None => self.push_object("ADDED", &obj),
            }
            seen.insert(stored.name, (rev, obj));
        }
        let gone: Vec<Value> = self
            .known
            .iter()
            .filter(|(name, _)| !seen.contains_key(*name))
            .map(|(_, (_, obj))| obj.clone())
            .collect();
        for obj in gone {
            self.push_object("DELETED", &obj);
        }
        self.known = seen;
        if std::mem::take(&mut self.bookmark) {
            self.push_initial_events_end(revision);
        }
    }

    /// The BOOKMARK a streaming list ends its initial events with, as kube-apiserver sends
    /// it: an object of the kind holding only the revision and the end annotation.
    fn push_initial_events_end(&mut self, revision: Option<u64>) {
        let object = json!({
            "kind": self.def.kind_name(),
            "apiVersion": ipam_k8s::resource::API_VERSION,
            "metadata": {
                "resourceVersion": revision.unwrap_or(0).to_string(),
                "annotations": {"k8s.io/initial-events-end": "true"},
            },
        });
        self.push("BOOKMARK", object);
    }

    fn push_object(&mut self, kind: &str, obj: &Value) {
        let object = if self.as_table {
            let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
            table::table(
                self.def,
                std::slice::from_ref(obj),
                rv,
                self.include.as_deref(),
            )
        } else {
            obj.clone()
        };
        self.push(kind, object);
    }

    fn push(&mut self, kind: &str, object: Value) {
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        self.queue.push_back(Bytes::from(line));
    }
}
