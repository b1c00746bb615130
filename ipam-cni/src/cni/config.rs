//! The plugin's configuration, read from the network configuration it is given.
//!
//! An IPAM plugin receives the whole network configuration, so Calico's keys are read where
//! calico-ipam reads them: datastore and node keys at the top level, address keys under
//! `ipam`. Everything is checked here, before any datastore is opened, so a rejected request
//! writes nothing.
//!
//! | Key | Where | Meaning |
//! |---|---|---|
//! | `ipam.type` | `ipam` | this plugin's name (`ipam-cni`, or the name it is installed under) |
//! | `assign_ipv4`, `assign_ipv6` | `ipam` | booleans or Calico's `"true"`/`"false"`; default IPv4 only |
//! | `ipv4_pools`, `ipv6_pools` | `ipam` | pools by name or CIDR; empty means every usable pool |
//! | `datastore_path` | `ipam` | the SQLite file (embedded store) |
//! | `timeout_seconds` | `ipam` | the allocation's time budget, counted after the host lock (default 30) |
//! | `datastore_type` | top | `sqlite` (default), `etcdv3`, `kubernetes` |
//! | `etcd_endpoints` | top | comma-separated etcd URLs for `etcdv3` |
//! | `kubernetes.kubeconfig` | top | kubeconfig for `kubernetes` |
//! | `nodename`, `nodename_file`, `nodename_file_optional` | top | the node name (see [`super::node`]) |
//! | `ipam_lock_file` | top | the host lock's file (see [`super::lock`]); absolute path |
//! | `log_level`, `log_file_path` | top | logging (stderr by default; never stdout) |
//!
//! A pool named by CIDR that does not exist on the embedded store is created on first use
//! (see [`super::ops`]).
//!
//! host-local's keys (`ranges`, `subnet`, `rangeStart`, `rangeEnd`, `gateway`, `routes`,
//! `resolvConf`, `dataDir`) select host-local mode; they are read by [`super::hostlocal`].
//! `dataDir` is the directory of the embedded database (`ipam-cni.db` in it) unless
//! `datastore_path` or `datastore_type` names another store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use rscni_plugin::types::NetConf;
use serde::Deserialize;
use serde_json::Value;

use super::error::CniError;
use super::hostlocal::{self, HostLocal};
use ipam_datastore::DatastoreSpec;

/// The plugin's name, the `ipam.type` it answers to besides the name it runs under.
pub const PLUGIN_NAME: &str = "ipam-cni";

/// The default time budget of one allocation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the plugin takes from a network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConfig {
    /// The network name (`name`), the first half of every handle.
    pub network: String,
    /// Whether to assign an IPv4 address.
    pub assign_ipv4: bool,
    /// Whether to assign an IPv6 address.
    pub assign_ipv6: bool,
    /// IPv4 pools to use, by name or CIDR.
    pub ipv4_pools: Vec<PoolRef>,
    /// IPv6 pools to use, by name or CIDR.
    pub ipv6_pools: Vec<PoolRef>,
    /// Where the addresses are kept; `None` when the config names no datastore (the
    /// environment or the embedded default then decides).
    pub datastore: Option<DatastoreSpec>,
    /// The node name, if the config gives one.
    pub nodename: Option<String>,
    /// A file holding the node name, if the config names one.
    pub nodename_file: Option<PathBuf>,
    /// Whether a missing `nodename_file` is acceptable.
    pub nodename_file_optional: bool,
    /// The host lock's file, if the config names one (else one beside the store).
    pub ipam_lock_file: Option<PathBuf>,
    /// The allocation's time budget.
    pub timeout: Duration,
    /// The lowest level logged.
    pub log_level: super::log::Level,
    /// A file to log to instead of stderr.
    pub log_file: Option<PathBuf>,
    /// host-local mode: the config has host-local's `ranges` or `subnet` (see
    /// [`super::hostlocal`]); `None` is calico-ipam mode.
    pub host_local: Option<HostLocal>,
}

/// A pool as the config names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolRef {
    /// By `IPPool` name.
    Name(String),
    /// By CIDR (created on the embedded store when missing).
    Cidr(IpNet),
}

/// The `ipam` section, as Calico spells it.
#[derive(Debug, Default, Deserialize)]
struct IpamSection {
    #[serde(default)]
    assign_ipv4: Option<Value>,
    #[serde(default)]
    assign_ipv6: Option<Value>,
    #[serde(default)]
    ipv4_pools: Vec<String>,
    #[serde(default)]
    ipv6_pools: Vec<String>,
    #[serde(default)]
    datastore_path: Option<PathBuf>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

/// The top-level keys calico-ipam reads besides the spec's own.
#[derive(Debug, Default, Deserialize)]
struct TopLevel {
    #[serde(default)]
    datastore_type: Option<String>,
    #[serde(default)]
    etcd_endpoints: Option<String>,
    #[serde(default)]
    kubernetes: Option<KubernetesSection>,
    #[serde(default)]
    nodename: Option<String>,
    #[serde(default)]
    nodename_file: Option<PathBuf>,
    #[serde(default)]
    nodename_file_optional: bool,
    #[serde(default)]
    ipam_lock_file: Option<PathBuf>,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    log_file_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct KubernetesSection {
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
}

impl PluginConfig {
    /// Reads and checks the plugin's keys. `own_name` is the name the binary runs under,
    /// accepted as `ipam.type` besides [`PLUGIN_NAME`] (installed as `calico-ipam`, say).
    pub fn from_netconf(conf: &NetConf, own_name: &str) -> Result<Self, CniError> {
        let ipam = conf
            .ipam
            .as_ref()
            .ok_or_else(|| CniError::config("the network config has no \"ipam\" section"))?;
        if ipam.r#type != PLUGIN_NAME && ipam.r#type != own_name {
            return Err(CniError::config(format!(
                "ipam.type is {:?}, but this plugin is {PLUGIN_NAME:?}",
                ipam.r#type
            )));
        }
        let section: IpamSection = decode("ipam", &ipam.custom)?;
        let host_local = HostLocal::from_ipam(&ipam.custom.clone().into_iter().collect())?;
        if host_local.is_some() && !(section.ipv4_pools.is_empty() && section.ipv6_pools.is_empty())
        {
            return Err(CniError::config(
                "ipam has host-local's ranges/subnet and calico-ipam's ipv4_pools/ipv6_pools: \
                 use one mode (see docs/host-local.md)",
            ));
        }
        // host-local's state directory holds the embedded database unless a path is named.
        let db_path = section.datastore_path.clone().or_else(|| {
            host_local
                .as_ref()
                .and_then(|h| h.data_dir.as_ref())
                .map(|d| d.join(hostlocal::DATA_DIR_DB))
        });
        let top: TopLevel = decode("network config", &conf.custom)?;
        let assign_ipv4 = calico_bool("ipam.assign_ipv4", section.assign_ipv4.as_ref(), true)?;
        let assign_ipv6 = calico_bool("ipam.assign_ipv6", section.assign_ipv6.as_ref(), false)?;
        if !assign_ipv4 && !assign_ipv6 {
            return Err(CniError::config(
                "assign_ipv4 and assign_ipv6 are both false: nothing to assign",
            ));
        }
        let timeout = match section.timeout_seconds {
            None => DEFAULT_TIMEOUT,
            Some(0) => return Err(CniError::config("ipam.timeout_seconds must be above 0")),
            Some(s) => Duration::from_secs(s),
        };
        Ok(PluginConfig {
            network: conf.name.clone(),
            assign_ipv4,
            assign_ipv6,
            ipv4_pools: pool_refs("ipam.ipv4_pools", &section.ipv4_pools, false)?,
            ipv6_pools: pool_refs("ipam.ipv6_pools", &section.ipv6_pools, true)?,
            datastore: super::etcd_config::apply(datastore(&top, db_path)?, &conf.custom)?,
            nodename: top.nodename.filter(|n| !n.is_empty()),
            nodename_file: top.nodename_file,
            nodename_file_optional: top.nodename_file_optional,
            ipam_lock_file: lock_file(top.ipam_lock_file)?,
            timeout,
            log_level: super::log::Level::parse(top.log_level.as_deref())?,
            log_file: top.log_file_path,
            host_local,
        })
    }

    /// The pools to ask for, as `auto_assign` takes them (names and CIDR texts).
    pub fn pool_names(refs: &[PoolRef]) -> Vec<String> {
        refs.iter().map(PoolRef::to_string).collect()
    }
}

impl std::fmt::Display for PoolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolRef::Name(n) => f.write_str(n),
            PoolRef::Cidr(c) => c.fmt(f),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    map: &HashMap<String, Value>,
) -> Result<T, CniError> {
    let object: serde_json::Map<String, Value> =
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    serde_json::from_value(Value::Object(object))
        .map_err(|source| CniError::Decode { what, source })
}

/// The lock file must be absolute: a runtime starts the plugin in a directory of its choosing.
fn lock_file(path: Option<PathBuf>) -> Result<Option<PathBuf>, CniError> {
    match path {
        Some(p) if p.as_os_str().is_empty() => Ok(None),
        Some(p) if !p.is_absolute() => Err(CniError::config(format!(
            "ipam_lock_file {} is not an absolute path",
            p.display()
        ))),
        other => Ok(other),
    }
}

/// Calico accepts `true`, `"true"`, `false` and `"false"`.
fn calico_bool(key: &str, value: Option<&Value>, default: bool) -> Result<bool, CniError> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(CniError::config(format!(
            "{key} must be true or false, not {other}"
        ))),
    }
}

/// Pool entries: a text with `/` must be a CIDR of the right family with no host bits,
/// anything else is a pool name.
fn pool_refs(key: &str, texts: &[String], v6: bool) -> Result<Vec<PoolRef>, CniError> {
    let mut out = Vec::with_capacity(texts.len());
    for text in texts {
        let text = text.trim();
        if !text.contains('/') {
            if text.is_empty() || text.contains(char::is_whitespace) {
                return Err(CniError::config(format!(
                    "{key}: {text:?} is not a pool name"
                )));
            }
            out.push(PoolRef::Name(text.to_owned()));
            continue;
        }
        let net: IpNet = text
            .parse()
            .map_err(|_| CniError::config(format!("{key}: {text:?} is not a valid CIDR")))?;
        if net.trunc() != net {
            return Err(CniError::config(format!(
                "{key}: {text} has host bits set (did you mean {}?)",
                net.trunc()
            )));
        }
        if matches!(net, IpNet::V6(_)) != v6 {
            return Err(CniError::config(format!(
                "{key}: {text} is not an {} CIDR",
                if v6 { "IPv6" } else { "IPv4" }
            )));
        }
        out.push(PoolRef::Cidr(net));
    }
    Ok(out)
}

/// The datastore the config names, if any.
fn datastore(top: &TopLevel, path: Option<PathBuf>) -> Result<Option<DatastoreSpec>, CniError> {
    let kind = top.datastore_type.as_deref().filter(|k| !k.is_empty());
    match kind {
        None | Some("sqlite") => Ok(path
            .filter(|p| !p.as_os_str().is_empty())
            .map(DatastoreSpec::Sqlite)
            .or_else(|| kind.map(|_| DatastoreSpec::embedded_default()))),
        Some("etcdv3") => {
            let urls = top.etcd_endpoints.as_deref().unwrap_or_default();
            let spec = format!("etcdv3:{urls}");
            spec.parse().map(Some).map_err(CniError::Datastore)
        }
        Some("kubernetes") => Ok(Some(DatastoreSpec::Kubernetes {
            kubeconfig: top.kubernetes.as_ref().and_then(|k| k.kubeconfig.clone()),
        })),
        Some(other) => Err(CniError::config(format!(
            "datastore_type {other:?} is not one of sqlite, etcdv3, kubernetes"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PluginConfig, CniError> {
        let conf: NetConf = serde_json::from_str(json).unwrap();
        PluginConfig::from_netconf(&conf, "calico-ipam")
    }

    fn code(e: &CniError) -> u32 {
        u32::from(&e.to_cni())
    }

    #[test]
    fn reads_calico_keys() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"calico",
            "datastore_type":"sqlite","nodename":"n1","log_level":"debug",
            "ipam_lock_file":"/var/run/calico/ipam.lock",
            "ipam":{"type":"calico-ipam","assign_ipv4":"true","assign_ipv6":"true",
            "ipv4_pools":["default-ipv4-ippool","10.99.0.0/24"],"ipv6_pools":["fd00:99::/120"],
            "datastore_path":"/tmp/x.db","timeout_seconds":5}}"#,
        )
        .unwrap();
        assert_eq!(c.network, "k8s-pod-network");
        assert!(c.assign_ipv4 && c.assign_ipv6);
        assert_eq!(
            c.ipv4_pools,
            vec![
                PoolRef::Name("default-ipv4-ippool".into()),
                PoolRef::Cidr("10.99.0.0/24".parse().unwrap())
            ]
        );
        assert_eq!(
            PluginConfig::pool_names(&c.ipv6_pools),
            vec!["fd00:99::/120".to_string()]
        );
        assert_eq!(c.datastore, Some(DatastoreSpec::Sqlite("/tmp/x.db".into())));
        assert_eq!(c.nodename.as_deref(), Some("n1"));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(
            c.ipam_lock_file.as_deref(),
            Some(std::path::Path::new("/var/run/calico/ipam.lock"))
        );
    }

    #[test]
    fn defaults_are_ipv4_only_and_no_datastore() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"net","type":"bridge","ipam":{"type":"ipam-cni"}}"#,
        )
        .unwrap();
        assert!(c.assign_ipv4 && !c.assign_ipv6);
        assert!(c.ipv4_pools.is_empty() && c.datastore.is_none());
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn refuses_what_cannot_be_served() {
        let cases = [
            (r#"{"type":"host-local"}"#, 7),
            (r#"{"type":"ipam-cni","ipv4_pools":["10.0.0.300/24"]}"#, 7),
            (r#"{"type":"ipam-cni","ipv4_pools":["10.0.0.1/24"]}"#, 7),
            (r#"{"type":"ipam-cni","ipv4_pools":["fd00::/64"]}"#, 7),
            (r#"{"type":"ipam-cni","assign_ipv4":"yes"}"#, 7),
            (r#"{"type":"ipam-cni","assign_ipv4":false}"#, 7),
            (r#"{"type":"ipam-cni","ipv4_pools":"10.0.0.0/24"}"#, 6),
            (r#"{"type":"ipam-cni","timeout_seconds":0}"#, 7),
        ];
        for (ipam, want) in cases {
            let json =
                format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{ipam}}}"#);
            let err = parse(&json).unwrap_err();
            assert_eq!(code(&err), want, "{ipam}: {err}");
        }
        let relative_lock = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam_lock_file":"ipam.lock",
            "ipam":{"type":"ipam-cni"}}"#,
        )
        .unwrap_err();
        assert_eq!(code(&relative_lock), 7, "{relative_lock}");
        let no_ipam = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#).unwrap_err();
        assert_eq!(code(&no_ipam), 7);
    }

    #[test]
    fn other_datastores_parse_but_are_named() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"calico","datastore_type":"etcdv3",
            "etcd_endpoints":"http://10.0.0.1:2379,http://10.0.0.2:2379","ipam":{"type":"ipam-cni"}}"#,
        )
        .unwrap();
        assert_eq!(c.datastore.unwrap().kind(), "etcdv3");
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"calico","datastore_type":"kubernetes",
            "kubernetes":{"kubeconfig":"/etc/cni/net.d/calico-kubeconfig"},"ipam":{"type":"ipam-cni"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.datastore,
            Some(DatastoreSpec::Kubernetes {
                kubeconfig: Some("/etc/cni/net.d/calico-kubeconfig".into())
            })
        );
        let bad = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"calico","datastore_type":"etcdv3","ipam":{"type":"ipam-cni"}}"#,
        )
        .unwrap_err();
        assert_eq!(code(&bad), 7);
    }
}
