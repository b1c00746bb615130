//! The network config's etcd security keys, as Calico names them at the top level:
//! `etcd_ca_cert_file`, `etcd_cert_file`, `etcd_key_file`, plus `etcd_username` and
//! `etcd_password_file` (the password is read from that file; an inline `etcd_password`
//! is refused, since network configs are world-readable on most hosts).

use std::collections::HashMap;
use std::path::PathBuf;

use ipam_datastore::{DatastoreSpec, EtcdSecurity};
use serde::Deserialize;
use serde_json::Value;

use super::error::CniError;

/// The top-level etcd security keys.
#[derive(Debug, Default, Deserialize)]
struct EtcdKeys {
    #[serde(default)]
    etcd_ca_cert_file: Option<PathBuf>,
    #[serde(default)]
    etcd_cert_file: Option<PathBuf>,
    #[serde(default)]
    etcd_key_file: Option<PathBuf>,
    #[serde(default)]
    etcd_username: Option<String>,
    #[serde(default)]
    etcd_password_file: Option<PathBuf>,
}

/// `spec` with the etcd security keys of the network config's top level applied when it
/// names etcd; other datastores pass through unchanged.
pub fn apply(
    spec: Option<DatastoreSpec>,
    top: &HashMap<String, Value>,
) -> Result<Option<DatastoreSpec>, CniError> {
    if top.contains_key("etcd_password") {
        return Err(CniError::config(
            "etcd_password is not accepted inline; put the password in a file (mode 0600) and \
             name it in etcd_password_file",
        ));
    }
    let Some(DatastoreSpec::Etcd { endpoints, .. }) = spec else {
        return Ok(spec);
    };
    let object: serde_json::Map<String, Value> = top
        .iter()
        .filter(|(k, _)| k.starts_with("etcd_") && *k != "etcd_endpoints")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let keys: EtcdKeys =
        serde_json::from_value(Value::Object(object)).map_err(|source| CniError::Decode {
            what: "etcd keys",
            source,
        })?;
    let nonempty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
    let security = EtcdSecurity {
        ca_cert_file: nonempty(keys.etcd_ca_cert_file),
        cert_file: nonempty(keys.etcd_cert_file),
        key_file: nonempty(keys.etcd_key_file),
        username: keys.etcd_username.filter(|u| !u.is_empty()),
        password_file: nonempty(keys.etcd_password_file),
    };
    Ok(Some(DatastoreSpec::Etcd {
        endpoints,
        security,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(json: &str) -> HashMap<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_calico_keys_for_etcd_only() {
        let spec: DatastoreSpec = "etcdv3:https://127.0.0.1:2379".parse().unwrap();
        let keys = top(
            r#"{"etcd_ca_cert_file":"/c/ca.pem","etcd_cert_file":"/c/crt.pem",
            "etcd_key_file":"/c/key.pem","etcd_username":"u","etcd_password_file":"/c/pw"}"#,
        );
        let Some(DatastoreSpec::Etcd { security, .. }) = apply(Some(spec), &keys).unwrap() else {
            panic!("etcd expected");
        };
        assert_eq!(security.ca_cert_file, Some("/c/ca.pem".into()));
        assert_eq!(security.key_file, Some("/c/key.pem".into()));
        assert_eq!(security.username.as_deref(), Some("u"));
        let sqlite = Some(DatastoreSpec::Sqlite("/x.db".into()));
        assert_eq!(apply(sqlite.clone(), &keys).unwrap(), sqlite);
    }

    #[test]
    fn an_inline_password_is_refused_without_echoing_it() {
        let err = apply(None, &top(r#"{"etcd_password":"hunter2"}"#)).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        assert!(err.to_string().contains("etcd_password_file"));
    }
}
