//! How to reach etcd: endpoints, key prefix, credentials, TLS files and timeouts.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::keys::DEFAULT_PREFIX;

/// Connection settings for an [`EtcdStore`](crate::EtcdStore).
/// Its `Debug` shows the user name but never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs (`http://10.0.0.1:2379`); `https://` ones need the TLS files below or
    /// use the system's defaults.
    pub endpoints: Vec<String>,
    /// Every key this store writes starts with this prefix.
    pub prefix: String,
    /// User name and password for etcd's authentication, if it is enabled. Give them here,
    /// never in an endpoint URL (`http://user:pass@host` is refused).
    pub credentials: Option<(String, String)>,
    /// PEM file of the CA that signed the servers' certificates.
    pub ca_cert_file: Option<PathBuf>,
    /// PEM file of this client's certificate (needs `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM file of this client's private key (needs `cert_file`).
    pub key_file: Option<PathBuf>,
    /// How long to wait for a connection to an endpoint.
    pub connect_timeout: Duration,
    /// How long one round trip may take before the operation fails as unavailable.
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// Default time to wait for a connection.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default time one request may take.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

    /// Settings for `endpoints` with the default prefix and timeouts, no credentials, no TLS.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            credentials: None,
            ca_cert_file: None,
            cert_file: None,
            key_file: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Settings from a comma-separated endpoint list, as Calico's `etcd_endpoints` and
    /// `ipamctl --datastore etcdv3:URL[,URL]` spell it.
    ///
    /// ```
    /// use ipam_etcd::EtcdConfig;
    /// let c = EtcdConfig::from_endpoint_list("http://10.0.0.1:2379, http://10.0.0.2:2379").unwrap();
    /// assert_eq!(c.endpoints.len(), 2);
    /// assert!(EtcdConfig::from_endpoint_list(" , ").is_err());
    /// assert!(EtcdConfig::from_endpoint_list("ftp://10.0.0.1").is_err());
    /// ```
    pub fn from_endpoint_list(list: &str) -> Result<Self> {
        let endpoints: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let config = EtcdConfig::new(endpoints);
        config.validate()?;
        Ok(config)
    }

    /// `endpoint` with any `user:password@` before the host replaced, so it can be shown.
    pub fn redact_endpoint(endpoint: &str) -> String {
        redact_userinfo(endpoint)
    }

    /// Sets the key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the user name and password.
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Sets both timeouts.
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// Refuses settings that can never work: no endpoint, an endpoint that is not an http(s)
    /// URL, a certificate without its key, an empty prefix or a zero timeout.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        for e in &self.endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            let authority = rest.map(|r| r.split('/').next().unwrap_or_default());
            if authority.is_some_and(|a| a.contains('@')) {
                // Credentials in a URL end up in logs and error messages: refuse, redacted.
                return Err(Error::CredentialsInEndpoint {
                    endpoint: redact_userinfo(e),
                });
            }
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return Err(Error::InvalidEndpoint {
                    endpoint: redact_userinfo(e),
                });
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::IncompleteIdentity);
        }
        if self.prefix.is_empty() || !self.prefix.starts_with('/') {
            return Err(Error::InvalidPrefix {
                prefix: self.prefix.clone(),
            });
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::ZeroTimeout);
        }
        Ok(())
    }

    /// Whether any TLS setting is given.
    pub fn uses_tls(&self) -> bool {
        self.ca_cert_file.is_some() || self.cert_file.is_some()
    }
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.credentials.as_ref().map(|(user, _)| user);
        f.debug_struct("EtcdConfig")
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(|e| redact_userinfo(e))
                    .collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .field("user", &user)
            .field("password", &self.credentials.as_ref().map(|_| "<redacted>"))
            .field("ca_cert_file", &self.ca_cert_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// `endpoint` with any `user:password@` before the host replaced by `<redacted>@`, so that
/// it can be shown.
pub(crate) fn redact_userinfo(endpoint: &str) -> String {
    let (scheme, rest) = match endpoint.find("://") {
        Some(i) => endpoint.split_at(i + 3),
        None => ("", endpoint),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}<redacted>{}", &rest[at..]),
        None => endpoint.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = EtcdConfig::from_endpoint_list("http://127.0.0.1:2379").unwrap();
        assert_eq!(ok.prefix, DEFAULT_PREFIX);
        assert!(matches!(
            EtcdConfig::from_endpoint_list(""),
            Err(Error::NoEndpoints)
        ));
        assert!(matches!(
            EtcdConfig::from_endpoint_list("http://"),
            Err(Error::InvalidEndpoint { .. })
        ));
        let mut half = ok.clone();
        half.cert_file = Some("c.pem".into());
        assert!(matches!(half.validate(), Err(Error::IncompleteIdentity)));
        assert!(matches!(
            ok.clone().with_prefix("rel/").validate(),
            Err(Error::InvalidPrefix { .. })
        ));
        assert!(matches!(
            ok.with_timeouts(Duration::ZERO, Duration::from_secs(1))
                .validate(),
            Err(Error::ZeroTimeout)
        ));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let c = EtcdConfig::new(["https://10.0.0.1:2379"]).with_credentials("root", "s3cr3t-pw");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cr3t-pw") && shown.contains("root"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
        for url in [
            "http://root:s3cr3t-pw@10.0.0.1:2379",
            "etcd://root:s3cr3t-pw@x",
            "http://root:s3cr3t-pw@",
        ] {
            let err = EtcdConfig::from_endpoint_list(url).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("s3cr3t-pw"), "{text}");
        }
        assert!(matches!(
            EtcdConfig::from_endpoint_list("http://u:p@10.0.0.1:2379"),
            Err(Error::CredentialsInEndpoint { .. })
        ));
        assert_eq!(
            redact_userinfo("http://u:p@h:1/x@y"),
            "http://<redacted>@h:1/x@y"
        );
        assert_eq!(redact_userinfo("http://h:1"), "http://h:1");
    }
}
