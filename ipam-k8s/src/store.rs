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

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use ipam_core::retry::{RetryError, retry_conflicts};
use ipam_core::store::{Op, OpCounter};
use ipam_core::{
    Datastore, IpPool, Kind, Labelled, Labels, NodeSnapshot, OpCounts, Resource, Revision, Scope,
    StoreError, Stored,
};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, PostParams,
    Preconditions,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

use crate::resource::{
    API_VERSION, CALICO_HOSTNAME_HASH_LABEL, GROUP, NODE_LABEL, VERSION, calico_hostname_hash,
    labels_of, node_label_value,
};

/// Objects per list page.
const PAGE_SIZE: u32 = 500;
/// Pages one list reads at most (5 million objects): a bound, not an expected size.
const MAX_PAGES: usize = 10_000;
/// How often `create` re-tries replacing a soft-deleted object that keeps changing.
const CREATE_ATTEMPTS: u32 = 3;
/// Sends of one request while the server answers 429, and the pauses between them (doubling).
const THROTTLED_ATTEMPTS: u32 = 8;
const THROTTLED_FIRST_PAUSE: Duration = Duration::from_millis(100);
const THROTTLED_MAX_PAUSE: Duration = Duration::from_secs(1);

/// A [`Datastore`] backed by `crd.projectcalico.org/v1` custom resources.
pub struct KubeStore {
    client: Client,
    counter: OpCounter,
}

/// The parts of a [`Revision`].
struct Rev<'a> {
    resource_version: &'a str,
    uid: Option<&'a str>,
    deleted: bool,
}

impl KubeStore {
    /// A store using `client`.
    pub fn new(client: Client) -> Self {
        KubeStore {
            client,
            counter: OpCounter::default(),
        }
    }

    /// A store configured from `kubeconfig`, or, when `None`, from the environment: the
    /// in-cluster service account, else `$KUBECONFIG` or `~/.kube/config`.
    pub async fn connect(kubeconfig: Option<&Path>) -> crate::Result<Self> {
        let mut config = match kubeconfig {
            Some(path) => {
                let err = |source| crate::Error::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                };
                let kc = Kubeconfig::read_from(path).map_err(err)?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(err)?
            }
            None => Config::infer()
                .await
                .map_err(|e| crate::Error::Client(kube::Error::InferConfig(e)))?,
        };
        // Bounded waits: a plugin call must not hang on a dead API server.
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(Duration::from_secs(30));
        config.write_timeout = Some(Duration::from_secs(30));
        Client::try_from(config)
            .map(KubeStore::new)
            .map_err(crate::Error::Client)
    }

    /// A store talking plain HTTP, without credentials, to `url` (a local `ipamctl serve`).
    pub fn for_url(url: &str) -> crate::Result<Self> {
        let uri = url.parse().map_err(|source| crate::Error::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        let mut config = Config::new(uri);
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(Duration::from_secs(30));
        Client::try_from(config)
            .map(KubeStore::new)
            .map_err(crate::Error::Client)
    }

    /// A store using the in-cluster service account.
    pub async fn in_cluster() -> crate::Result<Self> {
        let config = Config::incluster().map_err(crate::Error::InCluster)?;
        Client::try_from(config)
            .map(KubeStore::new)
            .map_err(crate::Error::Client)
    }

    fn api<R: Resource>(&self) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: GROUP.to_owned(),
            version: VERSION.to_owned(),
            api_version: API_VERSION.to_owned(),
            kind: R::KIND.as_str().to_owned(),
            plural: R::KIND.plural().to_owned(),
        };
        Api::all_with(self.client.clone(), &ar)
    }

    /// Sends one request, counted as `op`, and sends it again after a pause while the server
    /// answers 429 Too Many Requests: the server refused it before acting on it (priority
    /// and fairness, or a kind whose storage is still initializing after its CRD was
    /// created), so a resend of any verb is safe, as client-go resends it.
    async fn send<T, F, Fut>(&self, op: Op, mut call: F) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut pause = THROTTLED_FIRST_PAUSE;
        for _ in 1..THROTTLED_ATTEMPTS {
            self.counter.count(op);
            match call().await {
                Err(kube::Error::Api(resp)) if resp.code == 429 => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(THROTTLED_MAX_PAUSE);
                }
                done => return done,
            }
        }
        self.counter.count(op);
        call().await
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use ipam_core::IpPool;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An HTTP server on loopback that answers each request with the next of `replies`
    /// (status, JSON body), one connection per request; returns its URL.
    async fn serve(replies: Vec<(u16, Value)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            for (status, body) in replies {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = body.to_string();
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            }
        });
        url
    }

    fn status(code: u16, reason: &str) -> (u16, Value) {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": reason, "reason": reason, "code": code});
        (code, body)
    }

    fn pool() -> (u16, Value) {
        let body = json!({"apiVersion": API_VERSION, "kind": "IPPool",
            "metadata": {"name": "p", "resourceVersion": "7", "uid": "u"},
            "spec": {"cidr": "10.1.0.0/24"}});
        (200, body)
    }

    #[tokio::test]
    async fn a_throttled_request_is_sent_again() {
        let replies = vec![
            status(429, "TooManyRequests"),
            status(429, "TooManyRequests"),
            pool(),
        ];
        let store = KubeStore::for_url(&serve(replies).await).expect("store");
        let got = store.get::<IpPool>("p").await.expect("the third answer");
        assert_eq!(got.revision, Revision("7/u".into()));
        assert_eq!(store.op_counts().gets, 3, "each send is counted");
    }

    #[tokio::test]
    async fn throttling_past_the_bound_is_unavailable_and_other_errors_are_not_resent() {
        let replies = vec![status(429, "TooManyRequests"); THROTTLED_ATTEMPTS as usize];
        let store = KubeStore::for_url(&serve(replies).await).expect("store");
        let err = store
            .get::<IpPool>("p")
            .await
            .expect_err("throttled throughout");
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert_eq!(store.op_counts().gets, u64::from(THROTTLED_ATTEMPTS));

        // A 500 may have been acted on: never sent twice.
        let replies = vec![status(500, "InternalError"), pool()];
        let store = KubeStore::for_url(&serve(replies).await).expect("store");
        let err = store.get::<IpPool>("p").await.expect_err("a 500");
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert_eq!(store.op_counts().gets, 1);
    }
}
