//! Who the request is for: the node name, the container's handle, and the Kubernetes
//! pod named in `CNI_ARGS`.

use std::path::{Path, PathBuf};

use ipam_core::{HandleId, NodeName};

use super::config::PluginConfig;
use super::error::CniError;

/// Where calico-node writes the node name, read when the config names none.
pub const CALICO_NODENAME_FILE: &str = "/var/lib/calico/nodename";

/// Where Linux keeps the host name (read directly: no shell, no libc call).
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// The Kubernetes pod a request is for, from `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
}

impl PodRef {
    /// Parses `CNI_ARGS` (`K=V;K=V`). Unknown keys are ignored, as every runtime passes
    /// some (`IgnoreUnknown`, `K8S_POD_INFRA_CONTAINER_ID`, ...); a pair without `=` is an
    /// invalid environment.
    pub fn from_cni_args(args: Option<&str>) -> Result<PodRef, CniError> {
        let mut pod = PodRef::default();
        for pair in args
            .unwrap_or_default()
            .split(';')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').ok_or_else(|| CniError::Env {
                reason: format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            })?;
            if key.is_empty() {
                return Err(CniError::Env {
                    reason: format!("CNI_ARGS: {pair:?} has an empty key"),
                });
            }
            let value = Some(value.to_owned()).filter(|v| !v.is_empty());
            match key {
                "K8S_POD_NAMESPACE" => pod.namespace = value,
                "K8S_POD_NAME" => pod.name = value,
                _ => {}
            }
        }
        Ok(pod)
    }

    /// Calico's older workload handle, `<namespace>.<pod>`, which DEL also releases.
    pub fn workload_handle(&self) -> Option<HandleId> {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => HandleId::new(format!("{ns}.{name}")).ok(),
            _ => None,
        }
    }
}

/// The handle of a container's addresses on a network: `<network>.<container id>`.
pub fn handle_for(network: &str, container_id: &str) -> Result<HandleId, CniError> {
    HandleId::new(format!("{network}.{container_id}")).map_err(|e| CniError::Env {
        reason: format!("cannot make a handle of CNI_CONTAINERID {container_id:?}: {e}"),
    })
}

/// The node name: the config's `nodename`, else the first line of `nodename_file` (by
/// default calico-node's `/var/lib/calico/nodename`, used when present), else the host name.
pub fn node_name(config: &PluginConfig) -> Result<NodeName, CniError> {
    resolve(
        config,
        Path::new(CALICO_NODENAME_FILE),
        Path::new(HOSTNAME_FILE),
    )
}

fn resolve(
    config: &PluginConfig,
    calico_file: &Path,
    hostname: &Path,
) -> Result<NodeName, CniError> {
    let name = if let Some(name) = &config.nodename {
        name.clone()
    } else if let Some(name) = from_file(config, calico_file)? {
        name
    } else {
        first_line(hostname)
            .map_err(|e| {
                CniError::config(format!("no nodename given and {}: {e}", hostname.display()))
            })?
            .to_lowercase()
    };
    NodeName::new(name).map_err(|e| CniError::config(e.to_string()))
}

/// The node name from the configured file, or calico-node's if it exists.
fn from_file(config: &PluginConfig, calico_file: &Path) -> Result<Option<String>, CniError> {
    let (path, optional): (PathBuf, bool) = match &config.nodename_file {
        Some(p) => (p.clone(), config.nodename_file_optional),
        None => (calico_file.to_owned(), true),
    };
    match first_line(&path) {
        Ok(name) => Ok(Some(name)),
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::config(format!(
            "nodename_file {}: {e}",
            path.display()
        ))),
    }
}

fn first_line(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "empty",
        ));
    }
    Ok(line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nodename: Option<&str>, file: Option<PathBuf>, optional: bool) -> PluginConfig {
        let conf: rscni_plugin::types::NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{"type":"ipam-cni"}}"#,
        )
        .unwrap();
        let mut c = PluginConfig::from_netconf(&conf, "ipam-cni").unwrap();
        c.nodename = nodename.map(str::to_owned);
        c.nodename_file = file;
        c.nodename_file_optional = optional;
        c
    }

    #[test]
    fn cni_args_name_the_pod() {
        let p = PodRef::from_cni_args(Some(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc",
        ))
        .unwrap();
        assert_eq!(p.namespace.as_deref(), Some("default"));
        assert_eq!(p.workload_handle().unwrap().as_str(), "default.web-0");
        assert_eq!(PodRef::from_cni_args(None).unwrap(), PodRef::default());
        assert!(PodRef::from_cni_args(Some("K8S_POD_NAME")).is_err());
    }

    #[test]
    fn node_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let calico = dir.path().join("nodename");
        let host = dir.path().join("hostname");
        std::fs::write(&host, "Host-A\n").unwrap();
        let r = |c: &PluginConfig| resolve(c, &calico, &host).map(|n| n.to_string());
        assert_eq!(r(&config(None, None, false)).unwrap(), "host-a");
        std::fs::write(&calico, "node-from-calico\n").unwrap();
        assert_eq!(r(&config(None, None, false)).unwrap(), "node-from-calico");
        assert_eq!(r(&config(Some("n9"), None, false)).unwrap(), "n9");
        let missing = dir.path().join("absent");
        assert!(r(&config(None, Some(missing.clone()), false)).is_err());
        assert_eq!(r(&config(None, Some(missing), true)).unwrap(), "host-a");
    }

    #[test]
    fn handles_join_network_and_container() {
        assert_eq!(handle_for("net", "abc").unwrap().as_str(), "net.abc");
    }
}
