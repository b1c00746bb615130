//! The project's CRDs and IPAM objects on a running [`KubeApiServer`]: installing the CRDs,
//! clearing the objects between checks, and the server's own request counts.

use super::*;

/// How long the CRDs may take to be `Established`.
const ESTABLISHED_WITHIN: Duration = Duration::from_secs(60);
/// How long a collection delete may take to empty a kind.
const EMPTY_WITHIN: Duration = Duration::from_secs(30);

impl KubeApiServer {
    /// Creates the CRDs of `deploy/crds.yaml` as the admin and waits until each is
    /// `Established`; panics with the server's answer if it refuses one.
    pub async fn install_crds(&self) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds.yaml");
        let text = std::fs::read_to_string(path).expect("read deploy/crds.yaml");
        let crds: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|doc| serde::Deserialize::deserialize(doc).expect("deploy/crds.yaml parses"))
            .filter(|v: &Value| !v.is_null())
            .collect();
        assert_eq!(
            crds.len(),
            PLURALS.len(),
            "deploy/crds.yaml: one CRD per kind"
        );
        let api = self.crd_api().await;
        for crd in &crds {
            let obj: DynamicObject = serde_json::from_value(crd.clone()).unwrap();
            let name = obj.metadata.name.clone().unwrap_or_default();
            if let Err(e) = api.create(&PostParams::default(), &obj).await {
                panic!("kube-apiserver refused the CRD {name}: {e}");
            }
        }
        let names: Vec<String> = crds
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        self.wait_established(&names).await;
        self.wait_servable().await;
    }

    async fn crd_api(&self) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: "apiextensions.k8s.io".to_owned(),
            version: "v1".to_owned(),
            api_version: "apiextensions.k8s.io/v1".to_owned(),
            kind: "CustomResourceDefinition".to_owned(),
            plural: "customresourcedefinitions".to_owned(),
        };
        Api::all_with(self.client(ADMIN).await, &ar)
    }

    /// Waits until every CRD in `names` has the condition `Established=True`; panics on a
    /// `NonStructuralSchema` condition or at the deadline, with the conditions seen.
    pub async fn wait_established(&self, names: &[String]) {
        let api = self.crd_api().await;
        let deadline = Instant::now() + ESTABLISHED_WITHIN;
        for name in names {
            loop {
                let crd = api.get(name).await.expect("read back a CRD");
                let conditions = crd.data["status"]["conditions"].clone();
                let has = |ty: &str| {
                    conditions
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == ty && c["status"] == "True")
                };
                assert!(
                    !has("NonStructuralSchema"),
                    "{name} is not structural: {conditions}"
                );
                if has("Established") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} not Established within {ESTABLISHED_WITHIN:?}: {conditions}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Waits until every IPAM kind can be listed: for a moment after its CRD is
    /// `Established` the server still answers 429 ("storage is (re)initializing").
    pub async fn wait_servable(&self) {
        let deadline = Instant::now() + ESTABLISHED_WITHIN;
        for plural in PLURALS {
            let api = self.ipam_api(ADMIN, plural).await;
            let one = ListParams::default().limit(1);
            let listed = unthrottled(deadline, || api.list(&one));
            listed
                .await
                .unwrap_or_else(|e| panic!("{plural} cannot be listed: {e}"));
        }
    }

    /// An `Api` on the custom resource `plural` (one of [`PLURALS`]) as `user`.
    pub async fn ipam_api(&self, user: &str, plural: &str) -> Api<DynamicObject> {
        let kind = ipam_k8s::ResourceDef::by_resource(plural)
            .unwrap_or_else(|| panic!("{plural} is not an IPAM kind"))
            .kind_name();
        let ar = ApiResource {
            group: ipam_k8s::GROUP.to_owned(),
            version: ipam_k8s::VERSION.to_owned(),
            api_version: format!("{}/{}", ipam_k8s::GROUP, ipam_k8s::VERSION),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
        };
        Api::all_with(self.client(user).await, &ar)
    }

    /// Deletes every IPAM object of every kind and waits until none is left: a clean slate
    /// for the next check on the same server.
    pub async fn delete_all_objects(&self) {
        for plural in PLURALS {
            let api = self.ipam_api(ADMIN, plural).await;
            let deadline = Instant::now() + EMPTY_WITHIN;
            let (dp, all) = (DeleteParams::default(), ListParams::default());
            unthrottled(deadline, || api.delete_collection(&dp, &all))
                .await
                .unwrap_or_else(|e| panic!("delete every {plural}: {e}"));
            loop {
                let listed = unthrottled(deadline, || api.list(&all)).await;
                let left = listed
                    .unwrap_or_else(|e| panic!("list {plural}: {e}"))
                    .items
                    .len();
                if left == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{left} {plural} still there {EMPTY_WITHIN:?} after a collection delete"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The server's own count of requests (`apiserver_request_total` on `/metrics`, read as
    /// the admin) for what the IPAM clients touch: the `crd.projectcalico.org` kinds, nodes
    /// and namespaces; by verb (`GET`, `LIST`, `POST`, `PUT`, `DELETE`, ...).
    pub async fn ipam_request_counts(&self) -> BTreeMap<String, u64> {
        let mut cmd = self.kubectl(ADMIN);
        cmd.args(["get", "--raw", "/metrics"]);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("the kubectl task")
            .expect("run kubectl");
        assert!(out.status.success(), "kubectl get --raw /metrics failed");
        let mut by_verb = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let ours = rest.contains("group=\"crd.projectcalico.org\"")
                || rest.contains("resource=\"nodes\"")
                || rest.contains("resource=\"namespaces\"");
            let verb = rest
                .split("verb=\"")
                .nth(1)
                .and_then(|v| v.split('"').next());
            let count = rest.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok());
            if let (true, Some(verb), Some(count)) = (ours, verb, count) {
                *by_verb.entry(verb.to_owned()).or_insert(0) += count as u64;
            }
        }
        by_verb
    }
}

/// `call` sent again while the server answers 429 ("storage is (re)initializing", which a
/// loaded machine shows for a moment now and then), until `deadline`; any other answer is
/// returned.
async fn unthrottled<T, F, Fut>(deadline: Instant, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    loop {
        match call().await {
            Err(kube::Error::Api(e)) if e.code == 429 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            done => return done,
        }
    }
}

/// Reads (GET, LIST, WATCH) and writes (everything else) between two of
/// [`KubeApiServer::ipam_request_counts`].
pub fn reads_and_writes(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> (u64, u64) {
    let mut reads = 0;
    let mut writes = 0;
    for (verb, n) in after {
        let d = n - before.get(verb).copied().unwrap_or(0);
        match verb.as_str() {
            "GET" | "LIST" | "WATCH" => reads += d,
            _ => writes += d,
        }
    }
    (reads, writes)
}
