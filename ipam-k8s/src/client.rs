//! Connecting a [`KubeStore`] (a kubeconfig, the environment, the in-cluster account, or a
//! plain URL) and sending one request, resent while the server answers 429.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use ipam_core::Resource;
use ipam_core::store::{Op, OpCounter};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::KubeStore;
use crate::resource::{API_VERSION, GROUP, VERSION};

/// Sends of one request while the server answers 429, and the pauses between them (doubling).
const THROTTLED_ATTEMPTS: u32 = 8;
const THROTTLED_FIRST_PAUSE: Duration = Duration::from_millis(100);
const THROTTLED_MAX_PAUSE: Duration = Duration::from_secs(1);

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

    pub(crate) fn api<R: Resource>(&self) -> Api<DynamicObject> {
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
    pub(crate) async fn send<T, F, Fut>(&self, op: Op, mut call: F) -> Result<T, kube::Error>
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipam_core::{Datastore, IpPool, Revision, StoreError};
    use serde_json::{Value, json};
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
