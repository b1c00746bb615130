//! `KubeStore`: the datastore contract over a Kubernetes API server, with kube-rs.
//!
//! - A [`Revision`] is `<resourceVersion>/<uid>`, plus `/deleted` when the write that made it
//!   soft-deleted the object. The uid rides along so that updates and deletes carry both
//!   preconditions without an extra read (as Calico's KDD sends them), and the marker lets
//!   an update of a soft-deleted object fail as `NotFound` without a round trip.
//! - `update` is a PUT naming the resourceVersion (409 -> `Conflict`); `create` is a POST
//!   (409 -> `AlreadyExists`, unless the existing object is soft-deleted: then it is
//!   replaced at its resourceVersion); `delete` sends `preconditions` (uid, resourceVersion).
//! - Node-scoped lists are label-selector lists: affinities on Calico's hostname-hash label,
//!   blocks on [`NODE_LABEL`]; every write sets the labels from the spec; lists are paged
//!   (`limit`/`continue`). A node's snapshot finds its blocks through its affinities.
//! - Every HTTP request is counted once in [`Datastore::op_counts`].

use ipam_core::retry::{RetryError, retry_conflicts};
use ipam_core::store::{Op, OpCounter};
use ipam_core::{
    Datastore, IpPool, Kind, Labelled, Labels, NodeSnapshot, OpCounts, Resource, Revision, Scope,
    StoreError, Stored,
};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Client;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, ObjectMeta, PostParams, Preconditions,
};
use serde_json::{Value, json};

use crate::resource::{
    API_VERSION, CALICO_HOSTNAME_HASH_LABEL, NODE_LABEL, calico_hostname_hash, labels_of,
    node_label_value,
};

/// Objects per list page.
const PAGE_SIZE: u32 = 500;
/// Pages one list reads at most (5 million objects): a bound, not an expected size.
const MAX_PAGES: usize = 10_000;
/// How often `create` re-tries replacing a soft-deleted object that keeps changing.
const CREATE_ATTEMPTS: u32 = 3;
/// A [`Datastore`] backed by `crd.projectcalico.org/v1` custom resources.
pub struct KubeStore {
    pub(crate) client: Client,
    pub(crate) counter: OpCounter,
}

/// The parts of a [`Revision`].
struct Rev<'a> {
    resource_version: &'a str,
    uid: Option<&'a str>,
    deleted: bool,
}

impl KubeStore {
    fn object<R: Resource>(
        name: &str,
        value: &R,
        rev: Option<&Rev<'_>>,
    ) -> Result<DynamicObject, StoreError> {
        let labels = labels_of(value)
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
            .collect();
        let spec = serde_json::to_value(value).map_err(other)?;
        Ok(DynamicObject {
            types: Some(kube::api::TypeMeta {
                api_version: API_VERSION.to_owned(),
                kind: R::KIND.as_str().to_owned(),
            }),
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels),
                resource_version: rev.map(|r| r.resource_version.to_owned()),
                uid: rev.and_then(|r| r.uid.map(str::to_owned)),
                ..ObjectMeta::default()
            },
            data: json!({ "spec": spec }),
        })
    }

    /// One attempt of a create: a plain create, or the replacement of a soft-deleted object
    /// of that name. A lost race is returned as a conflict.
    /// Every live object of kind `R` matching the label `selector` (all without one) that
    /// `keep` accepts, sorted by name; paged, at most [`MAX_PAGES`] pages.
    pub(crate) async fn list_selected<R: Resource>(
        &self,
        selector: Option<&str>,
        keep: impl Fn(&Stored<R>) -> bool,
    ) -> Result<Vec<Stored<R>>, StoreError> {
        let api = self.api::<R>();
        let mut params = ListParams::default().limit(PAGE_SIZE);
        if let Some(selector) = selector {
            params = params.labels(selector);
        }
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .send(Op::List, || api.list(&params))
                .await
                .map_err(|e| map_err::<R>("", e))?;
            for obj in page.items {
                let stored = decode::<R>(obj)?;
                if keep(&stored) && !stored.value.is_deleted() {
                    out.push(stored);
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params.continue_token = Some(token),
                None => {
                    out.sort_by(|a, b| a.name.cmp(&b.name));
                    return Ok(out);
                }
            }
        }
        Err(StoreError::Invalid {
            kind: R::KIND,
            name: String::new(),
            reason: format!("list exceeded {MAX_PAGES} pages"),
        })
    }

    async fn create_or_replace<R: Resource>(
        &self,
        name: &str,
        value: &R,
    ) -> Result<Revision, StoreError> {
        let api = self.api::<R>();
        let obj = Self::object(name, value, None)?;
        let post = PostParams::default();
        match self.send(Op::Create, || api.create(&post, &obj)).await {
            Ok(created) => return Ok(revision_of(&created, value)),
            Err(e) => match map_err::<R>(name, e) {
                StoreError::AlreadyExists { .. } => {}
                e => return Err(e),
            },
        }
        // A soft-deleted object of that name is replaced; a live one wins.
        let existing = match self.send(Op::Get, || api.get(name)).await {
            Ok(o) => decode::<R>(o)?,
            Err(e) => return Err(map_err::<R>(name, e).into_conflict()),
        };
        if !existing.value.is_deleted() {
            return Err(StoreError::already_exists::<R>(name));
        }
        let rev = Rev::parse(&existing.revision);
        let obj = Self::object(
            name,
            value,
            Some(&Rev {
                deleted: false,
                ..rev
            }),
        )?;
        match self
            .send(Op::Update, || api.replace(name, &post, &obj))
            .await
        {
            Ok(replaced) => Ok(revision_of(&replaced, value)),
            Err(e) => Err(map_err::<R>(name, e).into_conflict()),
        }
    }
}

impl Rev<'_> {
    /// `Conflict` for a revision this store never issued (every one it issues names the
    /// object's uid): it cannot be the object's current one. Sent as a precondition, a
    /// resourceVersion kube-apiserver cannot parse is a 500, not a 409.
    fn issued_here<R: Resource>(&self, name: &str) -> Result<(), StoreError> {
        match self.uid {
            Some(_) => Ok(()),
            None => Err(StoreError::conflict::<R>(name)),
        }
    }

    fn parse(rev: &Revision) -> Rev<'_> {
        let mut parts = rev.0.split('/');
        let resource_version = parts.next().unwrap_or("");
        let uid = parts.next().filter(|u| !u.is_empty());
        let deleted = parts.next() == Some("deleted");
        Rev {
            resource_version,
            uid,
            deleted,
        }
    }
}

/// The revision of a written or read object.
fn revision_of<R: Resource>(obj: &DynamicObject, value: &R) -> Revision {
    let rv = obj.metadata.resource_version.as_deref().unwrap_or("");
    let uid = obj.metadata.uid.as_deref().unwrap_or("");
    let mut s = format!("{rv}/{uid}");
    if value.is_deleted() {
        s.push_str("/deleted");
    }
    Revision(s)
}

/// Decodes an object read from the API.
fn decode<R: Resource>(obj: DynamicObject) -> Result<Stored<R>, StoreError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
    let value: R = serde_json::from_value(spec).map_err(|e| StoreError::Invalid {
        kind: R::KIND,
        name: name.clone(),
        reason: format!("undecodable spec: {e}"),
    })?;
    Ok(Stored {
        revision: revision_of(&obj, &value),
        name,
        value,
    })
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Other {
        source: Box::new(e),
    }
}

/// Maps an API error about `name` to the contract's errors.
fn map_err<R: Resource>(name: &str, e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(resp) => match (resp.code, resp.reason.as_str()) {
            (404, _) => StoreError::not_found::<R>(name),
            (409, "AlreadyExists") => StoreError::already_exists::<R>(name),
            (409, _) => StoreError::conflict::<R>(name),
            (400 | 422, _) => StoreError::Invalid {
                kind: R::KIND,
                name: name.to_owned(),
                reason: resp.message.clone(),
            },
            (401 | 403, _) => StoreError::Denied {
                source: Box::new(e),
            },
            (429 | 500..=599, _) => StoreError::Unavailable {
                source: Box::new(e),
            },
            _ => other(e),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => StoreError::Unavailable {
            source: Box::new(e),
        },
        _ => other(e),
    }
}

/// The label selector of `node`'s objects of `kind`: affinities by Calico's label, so that
/// those Calico wrote are found; blocks (which Calico does not label) by ours.
fn node_selector(kind: Kind, node: &str) -> String {
    match kind {
        Kind::BlockAffinity => format!(
            "{CALICO_HOSTNAME_HASH_LABEL}={}",
            calico_hostname_hash(node)
        ),
        _ => format!("{NODE_LABEL}={}", node_label_value(node)),
    }
}

impl Datastore for KubeStore {
    async fn get<R: Resource>(&self, name: &str) -> Result<Stored<R>, StoreError> {
        let api = self.api::<R>();
        let obj = self
            .send(Op::Get, || api.get(name))
            .await
            .map_err(|e| map_err::<R>(name, e))?;
        let stored = decode::<R>(obj)?;
        if stored.value.is_deleted() {
            return Err(StoreError::not_found::<R>(name));
        }
        Ok(stored)
    }

    async fn list<R: Resource>(&self, scope: Scope<'_>) -> Result<Vec<Stored<R>>, StoreError> {
        match scope {
            Scope::All => self.list_selected(None, |_: &Stored<R>| true).await,
            // A digest label value can collide; the spec decides.
            Scope::Node(node) => {
                let selector = node_selector(R::KIND, node);
                let on_node = |s: &Stored<R>| s.value.node() == Some(node);
                self.list_selected(Some(&selector), on_node).await
            }
        }
    }

    async fn create<R: Resource>(&self, name: &str, value: R) -> Result<Revision, StoreError> {
        // The API has no "create or replace a soft-deleted object": a create that finds a
        // soft-deleted object replaces it, and losing that race to another writer means
        // looking again. Only those lost races are retried, in the one retry loop.
        let attempt = |()| async { ((), self.create_or_replace(name, &value).await) };
        match retry_conflicts(CREATE_ATTEMPTS, (), attempt).await {
            Ok(rev) => Ok(rev),
            Err(RetryError::Failed(e)) => Err(e),
            Err(RetryError::Exhausted { .. }) => Err(StoreError::already_exists::<R>(name)),
        }
    }

    async fn update<R: Resource>(
        &self,
        name: &str,
        value: R,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        let rev = Rev::parse(revision);
        if rev.deleted {
            // The revision is of a soft-deleted object, which is absent to writers too.
            return Err(StoreError::not_found::<R>(name));
        }
        rev.issued_here::<R>(name)?;
        let obj = Self::object(name, &value, Some(&rev))?;
        let (api, post) = (self.api::<R>(), PostParams::default());
        let written = self
            .send(Op::Update, || api.replace(name, &post, &obj))
            .await
            .map_err(|e| map_err::<R>(name, e))?;
        Ok(revision_of(&written, &value))
    }

    async fn delete<R: Resource>(&self, name: &str, revision: &Revision) -> Result<(), StoreError> {
        let rev = Rev::parse(revision);
        rev.issued_here::<R>(name)?;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(rev.resource_version.to_owned()),
                uid: rev.uid.map(str::to_owned),
            }),
            ..DeleteParams::default()
        };
        let api = self.api::<R>();
        self.send(Op::Delete, || api.delete(name, &params))
            .await
            .map(|_| ())
            .map_err(|e| map_err::<R>(name, e))
    }

    async fn labels(&self, object: Labelled<'_>) -> Result<Option<Labels>, StoreError> {
        // Metadata only: labels are all a selector reads. The error mapping names no IPAM
        // kind that matters here: a missing object is `None`, not an error.
        let found = match object {
            Labelled::Node(name) => {
                let api: Api<Node> = Api::all(self.client.clone());
                let meta = self.send(Op::Get, || api.get_metadata_opt(name)).await;
                meta.map(|m| m.map(|m| m.metadata))
            }
            Labelled::Namespace(name) => {
                let api: Api<Namespace> = Api::all(self.client.clone());
                let meta = self.send(Op::Get, || api.get_metadata_opt(name)).await;
                meta.map(|m| m.map(|m| m.metadata))
            }
        };
        let found = found.map_err(|e| map_err::<IpPool>("", e))?;
        Ok(found.map(|m| m.labels.unwrap_or_default().into_iter().collect()))
    }

    async fn upgrade_node(&self, node: &str) -> Result<Option<usize>, StoreError> {
        self.label_calico_affinities(node).await.map(Some)
    }

    async fn node_snapshot(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        self.read_node_snapshot(node).await
    }

    fn op_counts(&self) -> OpCounts {
        self.counter.snapshot()
    }
}
