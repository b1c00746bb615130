//! The cluster's Pods and Nodes, kept by watchers in reflectors (metadata only: names are
//! all the controller needs), and the one-object reads that confirm a pod or node is gone
//! before anything of it is released.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt, future};
use ipam_core::check::LiveOwners;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, metadata_watcher, watcher};
use kube::{Client, Resource};
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// A watch is ended by the server after this long and started again: under the client's
/// read timeout, so a quiet watch is never taken for a dead connection.
const WATCH_TIMEOUT_SECS: u32 = 25;

/// What is alive in the cluster now.
#[derive(Clone, Debug, Default)]
pub struct LiveView {
    /// Every pod, as owners of addresses.
    pub owners: LiveOwners,
    /// Every node's name.
    pub nodes: BTreeSet<String>,
}

/// Pods and Nodes, watched; the watches stop when this is dropped.
pub struct Cluster {
    client: Client,
    pods: Store<PartialObjectMeta<Pod>>,
    nodes: Store<PartialObjectMeta<Node>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Starts watching Pods (all namespaces) and Nodes.
    pub fn watch(client: Client) -> Self {
        let (pods, pods_task) = reflect(Api::<Pod>::all(client.clone()));
        let (nodes, nodes_task) = reflect(Api::<Node>::all(client.clone()));
        Cluster {
            client,
            pods,
            nodes,
            tasks: vec![pods_task, nodes_task],
        }
    }

    /// Waits until both watches have finished their first list, at most `within`.
    pub async fn synced(&self, within: Duration) -> Result<()> {
        let both = future::join(self.pods.wait_until_ready(), self.nodes.wait_until_ready());
        match tokio::time::timeout(within, both).await {
            Ok((Ok(()), Ok(()))) => Ok(()),
            _ => Err(Error::NotSynced(within)),
        }
    }

    /// The pods and nodes the reflectors hold now.
    pub fn live(&self) -> LiveView {
        let pods = self.pods.state().into_iter().filter_map(|p| {
            let m = &p.metadata;
            Some((m.namespace.clone()?, m.name.clone()?))
        });
        LiveView {
            owners: LiveOwners::from_pods(pods),
            nodes: self
                .nodes
                .state()
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect(),
        }
    }

    /// Whether the API server still has the pod: the last word before its address is
    /// released, whatever the reflector says (it may lag behind a reconnect).
    pub async fn pod_exists(&self, namespace: &str, name: &str) -> Result<bool> {
        let api = Api::<Pod>::namespaced(self.client.clone(), namespace);
        Ok(api.get_metadata_opt(name).await?.is_some())
    }

    /// Whether the API server still has the node.
    pub async fn node_exists(&self, name: &str) -> Result<bool> {
        let api = Api::<Node>::all(self.client.clone());
        Ok(api.get_metadata_opt(name).await?.is_some())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A reflector of `api`'s objects' metadata, fed by a task that watches with backoff.
fn reflect<K>(api: Api<K>) -> (Store<PartialObjectMeta<K>>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K: Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
    let stream = reflector::reflector(writer, metadata_watcher(api, config)).default_backoff();
    let task = tokio::spawn(stream.for_each(|event| {
        if let Err(e) = event {
            tracing::warn!(kind = K::kind(&()).as_ref(), "watch failed, retrying: {e}");
        }
        future::ready(())
    }));
    (reader, task)
}
