//! What the controller tests do to a real kube-apiserver: Pods and Nodes through its API,
//! allocations through the real plugin (in this process, on the Kubernetes datastore, with
//! the handle and attributes it writes), a controller started in this process, and a plain
//! HTTP GET of `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipam_cni::cni::IpamPlugin;
use ipam_controller::{Controller, LeaseSettings, Settings, Status};
use std::collections::BTreeMap;

use ipam_core::model::ATTR_NODE;
use ipam_core::{AutoAssignArgs, Datastore, HandleId, Ipam, NodeName};
use ipam_k8s::KubeStore;
use ipam_metrics::Metrics;
use ipam_tests::apiserver::{ADMIN, KubeApiServer};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use rscni_plugin::cni::Cni;
use rscni_plugin::test_util::ArgsBuilder;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long anything the controller should do may take before the test fails (far more
/// than grace plus an interval: the machine is shared; this bounds, it does not time).
pub const WITHIN: Duration = Duration::from_secs(90);
/// The short grace period and interval the tests run with.
pub const GRACE: Duration = Duration::from_secs(2);
pub const INTERVAL: Duration = Duration::from_secs(1);
/// The network name, so handles are `k8s-pod-network.<container id>` as Calico's are.
pub const NETWORK: &str = "k8s-pod-network";

/// Settings with the short grace and interval, a 3 s lease named `lease`.
pub fn settings(lease: &str, identity: &str, grace: Duration) -> Settings {
    Settings {
        grace,
        interval: INTERVAL,
        lease: LeaseSettings {
            namespace: "kube-system".into(),
            name: lease.into(),
            identity: identity.into(),
            duration: Duration::from_secs(3),
        },
    }
}

/// A controller over the admin's store and client.
pub async fn start(server: &KubeApiServer, s: Settings, metrics: Arc<Metrics>) -> Controller {
    let store = server.store(ADMIN).await;
    Controller::start(store, server.client(ADMIN).await, s, metrics)
        .await
        .unwrap()
}

/// The admin's allocator.
pub async fn admin(server: &KubeApiServer) -> Ipam<KubeStore> {
    Ipam::new(server.store(ADMIN).await, ipam_core::SystemClock)
}

/// A leak planted in the store: an address of pod `apps/<pod>`, which does not exist,
/// allocated by the library with the plugin's handle and attributes.
pub async fn plant_leak<D: Datastore>(ipam: &Ipam<D>, pool: &str, node: &str, pod: &str) -> IpAddr {
    let handle = HandleId::new(format!("{NETWORK}.{}", container_id(pod))).unwrap();
    let mut args = AutoAssignArgs::new(NodeName::new(node).unwrap(), 1, 0).with_handle(handle);
    args.pools4 = vec![pool.to_owned()];
    args.attrs = BTreeMap::from([
        ("namespace".to_owned(), "apps".to_owned()),
        ("pod".to_owned(), pod.to_owned()),
        (ATTR_NODE.to_owned(), node.to_owned()),
    ]);
    ipam.auto_assign(&args).await.unwrap().ipv4[0].addr()
}

/// A namespace with the `default` ServiceAccount that pod admission requires (no
/// controller-manager runs to make it).
pub async fn namespace(server: &KubeApiServer, name: &str) {
    let client = server.client(ADMIN).await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await;
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    let _ = Api::<ServiceAccount>::namespaced(client, name)
        .create(&PostParams::default(), &sa)
        .await;
}

pub async fn create_node(server: &KubeApiServer, name: &str) {
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Node>::all(server.client(ADMIN).await)
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

pub async fn delete_node(server: &KubeApiServer, name: &str) {
    Api::<Node>::all(server.client(ADMIN).await)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

/// A pod bound to `node` (no scheduler or kubelet runs: it stays Pending, which is all
/// the controller looks at).
pub async fn create_pod(server: &KubeApiServer, ns: &str, name: &str, node: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "example.invalid/none"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(server.client(ADMIN).await, ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

/// Deletes a pod at once (nothing would finish a graceful delete) and waits until it is gone.
pub async fn delete_pod(server: &KubeApiServer, ns: &str, name: &str) {
    let api = Api::<Pod>::namespaced(server.client(ADMIN).await, ns);
    api.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    until("the pod is gone", || async {
        api.get_opt(name).await.unwrap().is_none()
    })
    .await;
}

/// CNI ADD by the real plugin for pod `ns/pod` on `node`, as a runtime calls it; the
/// address it answered.
pub async fn plugin_add(
    server: &KubeApiServer,
    pool: &str,
    node: &str,
    ns: &str,
    pod: &str,
) -> IpAddr {
    let datastore = json!({
        "datastore_type": "kubernetes",
        "kubernetes": {"kubeconfig": server.kubeconfig(ADMIN)},
    });
    plugin_add_on(datastore, pool, node, ns, pod).await
}

/// [`plugin_add`] on the datastore the config keys in `datastore` name.
pub async fn plugin_add_on(
    datastore: Value,
    pool: &str,
    node: &str,
    ns: &str,
    pod: &str,
) -> IpAddr {
    let mut conf = json!({
        "cniVersion": "1.0.0", "name": NETWORK, "type": "bridge",
        "nodename": node,
        "ipam": {"type": "ipam-cni", "ipv4_pools": [pool]},
    });
    for (k, v) in datastore.as_object().unwrap() {
        conf[k] = v.clone();
    }
    let args = ArgsBuilder::new()
        .container_id(&container_id(pod))
        .unwrap()
        .netns(&format!("/var/run/netns/{pod}"))
        .ifname("eth0")
        .unwrap()
        .args(&format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"
        ))
        .path("/usr/lib/cni")
        .config(&conf.to_string())
        .unwrap()
        .build()
        .unwrap();
    // The plugin runs its own runtime on its own thread, as the binary does on its main
    // thread: with the 8 MiB of stack a process gets, not a blocking-pool thread's 2 (a
    // debug build's deep polls through KubeStore come near 2).
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(IpamPlugin::new("ipam-cni").add(args));
        })
        .unwrap();
    let result = rx
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("CNI ADD for {ns}/{pod}: {e:?}"));
    let result: Value = serde_json::to_value(&result).unwrap();
    let addr = result["ips"][0]["address"].as_str().unwrap();
    addr.parse::<ipnet::IpNet>().unwrap().addr()
}

/// The container ID the tests give `pod`'s sandbox.
pub fn container_id(pod: &str) -> String {
    format!("{pod}0123456789abcdef")
}

/// Who holds `ip` now: (handle, namespace/pod), or `None` if it is free.
pub async fn holder<D: Datastore>(ipam: &Ipam<D>, ip: IpAddr) -> Option<(Option<String>, String)> {
    let a = ipam.get_assignment_attributes(ip).await.unwrap()?;
    let pod = format!(
        "{}/{}",
        a.attrs.get("namespace").cloned().unwrap_or_default(),
        a.attrs.get("pod").cloned().unwrap_or_default()
    );
    Some((a.handle, pod))
}

/// Polls `check` until it holds, at most [`WITHIN`]; panics naming `what` otherwise.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WITHIN;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {WITHIN:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the controller's status satisfies `check`; returns that status.
pub async fn until_status(c: &Controller, what: &str, check: impl Fn(&Status) -> bool) -> Status {
    let mut rx = c.status();
    let waited = tokio::time::timeout(WITHIN, async {
        rx.wait_for(|s| check(s)).await.map(|s| s.clone())
    })
    .await;
    match waited {
        Ok(Ok(s)) => s,
        _ => panic!(
            "not within {WITHIN:?}: {what}; status {:?}",
            *c.status().borrow()
        ),
    }
}

/// `GET /metrics` over a plain TCP connection (HTTP/1.1, `Connection: close`), with a
/// bearer token if given: (status code, body).
pub async fn get_metrics(addr: SocketAddr, token: Option<&str>) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(WITHIN, conn.read_to_string(&mut raw))
        .await
        .expect("a /metrics answer")
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, dechunk(head, body))
}

/// The body of a `Transfer-Encoding: chunked` answer, or `body` as it is.
fn dechunk(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

/// A 0600 token file holding `token` in `dir`.
pub fn token_file(dir: &Path, token: &str) -> std::path::PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("metrics-token");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, token.as_bytes()).unwrap();
    path
}
