//! Which datastore the plugin and `ipamctl` use, and opening it.
//!
//! A datastore is named by a spec string:
//!
//! | Spec | Store |
//! |---|---|
//! | `sqlite:PATH` | the embedded SQLite store in `PATH` |
//! | `sqlite` or nothing | the embedded store at [`ipam_sqlite::default_path`] |
//! | `etcdv3:URL[,URL...]` | etcd v3 at those endpoints ([`ipam_etcd::EtcdStore`]) |
//! | `kubernetes[:KUBECONFIG]` | Kubernetes CRDs ([`ipam_k8s::KubeStore`]); without a path: the in-cluster account, then `$KUBECONFIG`, then `~/.kube/config` |
//!
//! The spec comes from a command-line flag, else the environment variable
//! [`DATASTORE_ENV`], else the embedded default ([`DatastoreSpec::resolve`]).
//!
//! Front ends run their work on whichever store was chosen through [`with_store`] and a
//! [`StoreOp`]: the operation is generic over [`Datastore`], and the one `match` that turns a
//! spec into a concrete store lives here, so a new backend is one more arm.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipam_core::Datastore;
use ipam_sqlite::SqliteStore;

/// The environment variable naming the datastore when no flag or config does.
pub const DATASTORE_ENV: &str = "IPAM_DATASTORE";

/// What choosing or opening a datastore can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec string is not one of the known forms.
    #[error(
        "invalid datastore {spec:?}: {reason} (use sqlite:PATH, etcdv3:URL[,URL], or kubernetes[:KUBECONFIG])"
    )]
    InvalidSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The etcd password file could not be read (its content is never shown).
    #[error("cannot read the etcd password file {path:?}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// An etcd user name was given without a password file, or a password file without one.
    #[error("an etcd user name and a password file must be given together")]
    IncompleteCredentials,
    /// The embedded store could not be opened.
    #[error(transparent)]
    Sqlite(#[from] ipam_sqlite::Error),
    /// etcd could not be reached or its settings are wrong.
    #[error("etcd: {0}")]
    Etcd(#[from] ipam_etcd::Error),
    /// The Kubernetes API could not be reached or the kubeconfig is wrong.
    #[error("kubernetes: {0}")]
    Kubernetes(#[from] ipam_k8s::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A parsed datastore choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatastoreSpec {
    /// The embedded SQLite store in this file.
    Sqlite(PathBuf),
    /// etcd v3 at these endpoints (`http://host:2379`).
    Etcd {
        /// Client URLs, at least one.
        endpoints: Vec<String>,
        /// TLS files and credentials (none by default).
        security: EtcdSecurity,
    },
    /// Kubernetes CRDs, through this kubeconfig (or the in-cluster / default one).
    Kubernetes {
        /// The kubeconfig file, if named.
        kubeconfig: Option<PathBuf>,
    },
}

/// How to authenticate to etcd: Calico's `etcd_ca_cert_file`, `etcd_cert_file`,
/// `etcd_key_file`, plus a user name and a file holding the password (a password is never
/// taken inline, so it stays out of configs, command lines and `Debug` output).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// PEM file of the CA that signed etcd's server certificates.
    pub ca_cert_file: Option<PathBuf>,
    /// PEM file of this client's certificate (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM file of this client's private key (with `cert_file`).
    pub key_file: Option<PathBuf>,
    /// etcd user name (with `password_file`).
    pub username: Option<String>,
    /// File whose content (one trailing newline dropped) is the user's password.
    pub password_file: Option<PathBuf>,
}

impl EtcdSecurity {
    /// The connection settings for `endpoints` with these files, reading the password file.
    pub fn config(&self, endpoints: &[String]) -> Result<ipam_etcd::EtcdConfig> {
        let mut config = ipam_etcd::EtcdConfig::new(endpoints.iter().cloned());
        config.ca_cert_file = self.ca_cert_file.clone();
        config.cert_file = self.cert_file.clone();
        config.key_file = self.key_file.clone();
        match (&self.username, &self.password_file) {
            (None, None) => {}
            (Some(user), Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|source| Error::PasswordFile {
                    path: file.clone(),
                    source,
                })?;
                let password = text.strip_suffix('\n').unwrap_or(&text);
                let password = password.strip_suffix('\r').unwrap_or(password);
                config = config.with_credentials(user.clone(), password.to_owned());
            }
            _ => return Err(Error::IncompleteCredentials),
        }
        config.validate()?;
        Ok(config)
    }
}

/// An operation to run on whichever datastore was chosen (see [`with_store`]).
///
/// It is a trait rather than a closure because the operation must be generic over the store
/// type, and closures cannot be.
pub trait StoreOp {
    /// What the operation returns.
    type Output;

    /// Runs the operation on an opened store.
    fn run<D: Datastore + 'static>(self, store: D) -> impl Future<Output = Self::Output>;
}

impl DatastoreSpec {
    /// The embedded store at its default path ([`ipam_sqlite::default_path`]).
    pub fn embedded_default() -> Self {
        DatastoreSpec::Sqlite(ipam_sqlite::default_path())
    }

    /// The spec from a flag value if given and not empty, else from [`DATASTORE_ENV`], else
    /// the embedded default.
    pub fn resolve(flag: Option<&str>) -> Result<Self> {
        let env = std::env::var(DATASTORE_ENV).ok();
        Self::resolve_from(flag, env.as_deref())
    }

    /// [`DatastoreSpec::resolve`] with the environment value passed in (for tests).
    pub fn resolve_from(flag: Option<&str>, env: Option<&str>) -> Result<Self> {
        match flag
            .filter(|s| !s.is_empty())
            .or(env.filter(|s| !s.is_empty()))
        {
            Some(spec) => spec.parse(),
            None => Ok(Self::embedded_default()),
        }
    }

    /// The datastore kind, as Calico's `datastore_type` spells it (`sqlite` for ours).
    pub fn kind(&self) -> &'static str {
        match self {
            DatastoreSpec::Sqlite(_) => "sqlite",
            DatastoreSpec::Etcd { .. } => "etcdv3",
            DatastoreSpec::Kubernetes { .. } => "kubernetes",
        }
    }

    /// The database file, for a store that lives in one on this host. Front ends keep their
    /// own files (a lock, `gc` state) beside it.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            DatastoreSpec::Sqlite(path) => Some(path),
            _ => None,
        }
    }

    /// A file beside the database: its path with `suffix` appended (`ipam.db` + `.lock`).
    pub fn sibling(&self, suffix: &str) -> Option<PathBuf> {
        self.local_path().map(|p| {
            let mut name = p.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        })
    }

    /// A node-local file of the CNI plugin for this store (its host lock `.lock`, its
    /// metrics `.stats`): beside the database for the embedded store; for etcd and
    /// Kubernetes `ipam-cni` + `suffix` in `/run` as root (gone at reboot, as a lock should
    /// be), otherwise in the temporary directory.
    pub fn node_file(&self, suffix: &str) -> PathBuf {
        self.sibling(suffix).unwrap_or_else(|| {
            let name = format!("ipam-cni{suffix}");
            if rustix::process::geteuid().is_root() {
                Path::new("/run").join(name)
            } else {
                std::env::temp_dir().join(name)
            }
        })
    }
}

impl FromStr for DatastoreSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidSpec {
            spec: ipam_etcd::EtcdConfig::redact_endpoint(spec),
            reason: reason.to_owned(),
        };
        let (kind, rest) = match spec.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (spec, None),
        };
        match (kind, rest) {
            ("sqlite", None) => Ok(Self::embedded_default()),
            ("sqlite", Some("")) => Err(invalid("sqlite: needs a file path")),
            ("sqlite", Some(path)) => Ok(DatastoreSpec::Sqlite(PathBuf::from(path))),
            ("etcdv3" | "etcd", Some(urls)) => {
                let endpoints: Vec<String> = urls
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect();
                if endpoints.is_empty() {
                    return Err(invalid("etcdv3: needs at least one endpoint URL"));
                }
                // Checked here already so that the spec (which is shown) never holds a
                // password; the error names the endpoint with it redacted.
                ipam_etcd::EtcdConfig::new(endpoints.iter().cloned()).validate()?;
                Ok(DatastoreSpec::Etcd {
                    endpoints,
                    security: EtcdSecurity::default(),
                })
            }
            ("etcdv3" | "etcd", None) => Err(invalid("etcdv3 needs endpoint URLs")),
            ("kubernetes" | "k8s", rest) => Ok(DatastoreSpec::Kubernetes {
                kubeconfig: rest.filter(|r| !r.is_empty()).map(PathBuf::from),
            }),
            _ => Err(invalid("unknown datastore kind")),
        }
    }
}

impl fmt::Display for DatastoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatastoreSpec::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            DatastoreSpec::Etcd { endpoints, .. } => {
                write!(f, "etcdv3:{}", endpoints.join(","))
            }
            DatastoreSpec::Kubernetes { kubeconfig: None } => f.write_str("kubernetes"),
            DatastoreSpec::Kubernetes {
                kubeconfig: Some(path),
            } => write!(f, "kubernetes:{}", path.display()),
        }
    }
}

/// Opens the store `spec` names and runs `op` on it.
///
/// Fails without running `op` when the store cannot be opened or is not built in.
pub async fn with_store<O: StoreOp>(spec: &DatastoreSpec, op: O) -> Result<O::Output> {
    match spec {
        DatastoreSpec::Sqlite(path) => Ok(op.run(SqliteStore::open(path)?).await),
        DatastoreSpec::Etcd {
            endpoints,
            security,
        } => {
            let store = ipam_etcd::EtcdStore::connect(security.config(endpoints)?);
            Ok(op.run(store.await?).await)
        }
        DatastoreSpec::Kubernetes { kubeconfig } => {
            let store = ipam_k8s::KubeStore::connect(kubeconfig.as_deref()).await?;
            Ok(op.run(store).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let p = |s: &str| s.parse::<DatastoreSpec>();
        assert_eq!(
            p("sqlite:/tmp/a.db").unwrap(),
            DatastoreSpec::Sqlite("/tmp/a.db".into())
        );
        assert_eq!(p("sqlite").unwrap(), DatastoreSpec::embedded_default());
        assert_eq!(
            p("etcdv3:http://a:2379, http://b:2379").unwrap(),
            DatastoreSpec::Etcd {
                endpoints: vec!["http://a:2379".into(), "http://b:2379".into()],
                security: EtcdSecurity::default(),
            }
        );
        assert_eq!(
            p("kubernetes").unwrap(),
            DatastoreSpec::Kubernetes { kubeconfig: None }
        );
        assert_eq!(
            p("kubernetes:/etc/kube.conf").unwrap(),
            DatastoreSpec::Kubernetes {
                kubeconfig: Some("/etc/kube.conf".into())
            }
        );
        for bad in ["sqlite:", "etcdv3", "etcdv3:", "etcdv3:,", "mysql:x", ""] {
            assert!(
                matches!(p(bad), Err(Error::InvalidSpec { .. })),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn etcd_secrets_stay_out_of_specs_and_errors() {
        let err = "etcdv3:http://root:pw-XYZ@10.0.0.1:2379".parse::<DatastoreSpec>();
        let text = format!("{err:?} {}", err.as_ref().unwrap_err());
        assert!(
            !text.contains("pw-XYZ") && text.contains("credentials"),
            "{text}"
        );
        let err = "mysql://root:pw-XYZ@h"
            .parse::<DatastoreSpec>()
            .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("pw-XYZ"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "pw-XYZ\n").unwrap();
        let security = EtcdSecurity {
            username: Some("root".into()),
            password_file: Some(file),
            ..EtcdSecurity::default()
        };
        let config = security.config(&["http://127.0.0.1:2379".into()]).unwrap();
        assert_eq!(config.credentials, Some(("root".into(), "pw-XYZ".into())));
        assert!(!format!("{config:?} {security:?}").contains("pw-XYZ"));
        let half = EtcdSecurity {
            username: Some("root".into()),
            ..EtcdSecurity::default()
        };
        let endpoints = ["http://127.0.0.1:2379".to_owned()];
        assert!(matches!(
            half.config(&endpoints),
            Err(Error::IncompleteCredentials)
        ));
        let missing = EtcdSecurity {
            password_file: Some(dir.path().join("absent")),
            ..security
        };
        assert!(matches!(
            missing.config(&endpoints),
            Err(Error::PasswordFile { .. })
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "sqlite:/x/y.db",
            "etcdv3:http://a:1,http://b:2",
            "kubernetes",
            "kubernetes:/k",
        ] {
            assert_eq!(s.parse::<DatastoreSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn flag_beats_environment_beats_default() {
        let r = DatastoreSpec::resolve_from;
        assert_eq!(
            r(Some("sqlite:/f"), Some("sqlite:/e")).unwrap(),
            DatastoreSpec::Sqlite("/f".into())
        );
        assert_eq!(
            r(None, Some("sqlite:/e")).unwrap(),
            DatastoreSpec::Sqlite("/e".into())
        );
        assert_eq!(
            r(Some(""), Some("sqlite:/e")).unwrap(),
            DatastoreSpec::Sqlite("/e".into())
        );
        assert_eq!(
            r(None, Some("")).unwrap(),
            DatastoreSpec::embedded_default()
        );
        assert_eq!(r(None, None).unwrap(), DatastoreSpec::embedded_default());
    }

    #[test]
    fn siblings_sit_beside_the_database() {
        let s = DatastoreSpec::Sqlite("/var/lib/ipam/ipam.db".into());
        assert_eq!(
            s.sibling(".lock").unwrap(),
            PathBuf::from("/var/lib/ipam/ipam.db.lock")
        );
        assert_eq!(
            s.node_file(".stats"),
            PathBuf::from("/var/lib/ipam/ipam.db.stats")
        );
        let k8s = DatastoreSpec::Kubernetes { kubeconfig: None };
        assert!(k8s.sibling(".lock").is_none());
        let host = k8s.node_file(".lock");
        assert_eq!(host.file_name().unwrap(), "ipam-cni.lock");
        if rustix::process::geteuid().is_root() {
            assert_eq!(host, PathBuf::from("/run/ipam-cni.lock"));
        }
    }

    struct CountPools;

    impl StoreOp for CountPools {
        type Output = ipam_core::Result<usize>;
        async fn run<D: Datastore + 'static>(self, store: D) -> Self::Output {
            let ipam = ipam_core::Ipam::new(store, ipam_core::SystemClock);
            ipam.list_pools().await.map(|p| p.len())
        }
    }

    #[test]
    fn runs_an_operation_on_the_chosen_store() {
        let dir = tempfile::tempdir().unwrap();
        let spec = DatastoreSpec::Sqlite(dir.path().join("ipam.db"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(
            rt.block_on(with_store(&spec, CountPools)).unwrap().unwrap(),
            0
        );
        assert!(dir.path().join("ipam.db").exists());
        // Nothing listens on port 1: the etcd arm is taken (it connects lazily) and the first
        // read fails as retryable, which the plugin reports as "try again later".
        let etcd = "etcdv3:http://127.0.0.1:1".parse().unwrap();
        let err = rt
            .block_on(with_store(&etcd, CountPools))
            .unwrap()
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }
}
