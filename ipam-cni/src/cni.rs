//! The CNI protocol front end: verbs, config, results and errors.
//!
//! The wire protocol (environment per verb, `cniVersion` negotiation, the result layouts of
//! 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0, the error object on stdout) comes from the
//! `rscni-plugin` crate. It was evaluated against the CNI 1.1.0 specification before being
//! chosen: it checks the spec's per-verb environment matrix (GC needs only `CNI_PATH`,
//! STATUS nothing), refuses GC and STATUS below a config version of 1.1.0 and CHECK below
//! 0.4.0, renders `ips[].version` for 0.3.x/0.4.0 and not for 1.x, writes the error JSON on
//! stdout with the well-known codes (and ours, 100+), and depends only on serde and ipnet.
//! Writing the same by hand would duplicate it for no gain; what it lacks (a `cniVersion` in
//! the error object that echoes the request's rather than the plugin's 1.1.0) the binary
//! supplies (`src/bin/ipam-cni.rs`).
//!
//! Everything this plugin decides is in the submodules, generic over the datastore:
//! [`config`] (Calico's keys), [`hostlocal`] (host-local's keys), [`node`] (node name, handles, `CNI_ARGS`), [`ops`] (ADD, DEL,
//! CHECK), [`gc`] (GC), [`status`] (STATUS), [`lock`] (the host lock), [`stats`] (the
//! plugin's metrics), [`log`], [`error`] (codes).
//! [`IpamPlugin`] ties them to the protocol: parse and check everything, then open the
//! datastore (so a rejected request writes nothing), then run the verb.

pub mod config;
pub mod error;
pub mod etcd_config;
pub mod gc;
pub mod hostlocal;
pub mod lock;
pub mod log;
pub mod node;
pub mod ops;
pub mod stats;
pub mod status;

use std::net::IpAddr;
use std::time::Instant;

use ipam_core::stats::{Outcome, Sample};
use ipam_core::{Datastore, Ipam};
use ipnet::IpNet;
use rscni_plugin::cni::Cni;
use rscni_plugin::error::Error as WireError;
use rscni_plugin::types::{Args, CNIResult, IpConfig};
use rscni_plugin::version::SpecVersion;

use self::config::PluginConfig;
use self::error::{CniError, Result};
use self::gc::ValidAttachment;
use self::log::Logger;
use self::ops::{Attachment, Context};
use ipam_datastore::{self as datastore, DatastoreSpec, StoreOp};

pub use self::config::PLUGIN_NAME;

/// The specification versions this plugin speaks, as VERSION lists them.
pub const SUPPORTED_VERSIONS: [SpecVersion; 5] = [
    SpecVersion::new(0, 3, 0),
    SpecVersion::new(0, 3, 1),
    SpecVersion::new(0, 4, 0),
    SpecVersion::new(1, 0, 0),
    SpecVersion::new(1, 1, 0),
];

/// The plugin, as the protocol layer calls it.
#[derive(Clone, Debug)]
pub struct IpamPlugin {
    own_name: String,
    null_valid_attachments: bool,
}

/// A verb with what it needs from the request.
#[derive(Debug)]
enum Verb {
    Add(Attachment),
    Del(Attachment),
    Check(Attachment, Vec<IpAddr>),
    Gc(Vec<ValidAttachment>),
    Status,
}

/// A verb bound to its context, run on whichever store the config chose.
struct Run<'a> {
    ctx: Context<'a>,
    verb: Verb,
}

impl IpamPlugin {
    /// The plugin, answering to `ipam.type` [`PLUGIN_NAME`] and to `own_name` (the file
    /// name it was started under, so it can be installed as `calico-ipam`).
    pub fn new(own_name: impl Into<String>) -> Self {
        IpamPlugin {
            own_name: own_name.into(),
            null_valid_attachments: false,
        }
    }

    /// Tells the plugin that the request's `cni.dev/valid-attachments` is an explicit
    /// `null` (how Go encodes an empty list): GC then treats no attachment as valid. The
    /// protocol crate decodes the key into an `Option`, which cannot tell `null` from a
    /// missing key, so the binary reads it from the raw request.
    pub fn with_null_valid_attachments(mut self, null: bool) -> Self {
        self.null_valid_attachments = null;
        self
    }

    /// The plugin named after the running executable.
    pub fn from_argv0() -> Self {
        let name = std::env::args_os()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| PLUGIN_NAME.to_owned());
        IpamPlugin::new(name)
    }

    /// Parses the request, opens the datastore and runs the verb.
    fn execute(
        &self,
        args: &Args,
        verb: impl FnOnce(&Args) -> Result<Verb>,
    ) -> Result<(PluginConfig, Vec<IpNet>)> {
        let started = Instant::now();
        check_config_size(args.config())?;
        let config = PluginConfig::from_netconf(args.config(), &self.own_name)?;
        let log = Logger::new(config.log_level, config.log_file.as_deref());
        let verb = verb(args)?;
        let node = node::node_name(&config)?;
        let spec = match &config.datastore {
            Some(spec) => spec.clone(),
            None => DatastoreSpec::resolve(None)?,
        };
        let is_status = matches!(verb, Verb::Status);
        let recorded = verb.recorded_as();
        let stats_path = spec.node_file(".stats");
        let lock_path = config
            .ipam_lock_file
            .clone()
            .unwrap_or_else(|| spec.node_file(".lock"));
        let ctx = Context {
            config: &config,
            node,
            log: &log,
            upgrade_marker: matches!(spec, DatastoreSpec::Kubernetes { .. })
                .then(|| self::lock::beside(&lock_path, ".upgraded")),
            lock_path: Some(lock_path),
            create_pools: spec.local_path().is_some(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CniError::Runtime)?;
        let outcome = runtime.block_on(datastore::with_store(&spec, Run { ctx, verb }));
        // A lock waiter abandoned at its time limit may still sit in flock: do not wait for it.
        runtime.shutdown_background();
        let (result, conflicts) = match outcome {
            Ok(ran) => (ran.result, ran.conflicts),
            Err(e) if is_status => (
                Err(CniError::NotAvailable {
                    reason: e.to_string(),
                }),
                0,
            ),
            Err(e) => (Err(e.into()), 0),
        };
        if let Some(operation) = recorded {
            let sample = Sample {
                operation,
                outcome: if result.is_ok() {
                    Outcome::Ok
                } else {
                    Outcome::Error
                },
                seconds: started.elapsed().as_secs_f64(),
                conflicts,
            };
            stats::record(&stats_path, sample, &log);
        }
        result
            .inspect_err(|e| log.warn(format_args!("{e}")))
            .map(|ips| (config, ips))
    }

    fn wire(
        &self,
        args: &Args,
        verb: impl FnOnce(&Args) -> Result<Verb>,
    ) -> Result<(PluginConfig, Vec<IpNet>), WireError> {
        self.execute(args, verb).map_err(|e| e.to_cni())
    }
}

/// What a verb answered, and the compare-and-swap conflicts it met on the way.
struct Ran {
    result: Result<Vec<IpNet>>,
    conflicts: u64,
}

impl Verb {
    /// The name the plugin's metrics record the verb under; only ADD and DEL are recorded.
    fn recorded_as(&self) -> Option<&'static str> {
        match self {
            Verb::Add(_) => Some("add"),
            Verb::Del(_) => Some("del"),
            Verb::Check(..) | Verb::Gc(_) | Verb::Status => None,
        }
    }
}

impl StoreOp for Run<'_> {
    type Output = Ran;

    async fn run<D: Datastore + 'static>(self, store: D) -> Ran {
        let ipam = Ipam::new(store, ipam_core::SystemClock);
        let result = self.verb_on(&ipam).await;
        Ran {
            result,
            conflicts: ipam.conflicts(),
        }
    }
}

impl Run<'_> {
    async fn verb_on<D: Datastore>(&self, ipam: &Ipam<D>) -> Result<Vec<IpNet>> {
        let ctx = &self.ctx;
        match &self.verb {
            Verb::Add(att) => ops::add(ipam, ctx, att).await,
            Verb::Del(att) => ops::del(ipam, ctx, att).await,
            Verb::Check(att, prev) => ops::check(ipam, ctx, att, prev).await.map(|()| Vec::new()),
            Verb::Gc(valid) => gc::gc(ipam, ctx, valid).await.map(|_| Vec::new()),
            Verb::Status => status::status(ipam, ctx).await.map(|()| Vec::new()),
        }
    }
}

impl Cni for IpamPlugin {
    fn add(&self, args: Args) -> Result<CNIResult, WireError> {
        let (config, ips) = self.wire(&args, |a| attachment(a).map(Verb::Add))?;
        Ok(add_result(&config, ips))
    }

    fn del(&self, args: Args) -> Result<(), WireError> {
        self.wire(&args, |a| attachment(a).map(Verb::Del)).map(drop)
    }

    fn check(&self, args: Args) -> Result<(), WireError> {
        self.wire(&args, |a| {
            let prev = a
                .config()
                .prev_result
                .as_ref()
                .map(|r| r.ips.iter().map(|ip| ip.address.addr()).collect())
                .unwrap_or_default();
            Ok(Verb::Check(attachment(a)?, prev))
        })
        .map(drop)
    }

    fn status(&self, args: Args) -> Result<(), WireError> {
        self.wire(&args, |_| Ok(Verb::Status)).map(drop)
    }

    fn gc(&self, args: Args) -> Result<(), WireError> {
        let null = self.null_valid_attachments;
        self.wire(&args, |a| valid_attachments(a.config(), null).map(Verb::Gc))
            .map(drop)
    }
}

/// The attachments a GC request says are still in use. A request that names none is
/// refused: releasing every allocation because a key is missing would hand live addresses
/// out again. `[]` or an explicit `null` (`null_listed`, read from the raw request) means
/// none is valid. `cni.dev/attachments` (an early 1.1 draft's name) is read too.
fn valid_attachments(
    conf: &rscni_plugin::types::NetConf,
    null_listed: bool,
) -> Result<Vec<ValidAttachment>> {
    let listed: Vec<(String, String)> = match (
        &conf.valid_attachments,
        conf.custom.get("cni.dev/attachments"),
    ) {
        (None, _) if null_listed => Vec::new(),
        (Some(list), _) => list
            .iter()
            .map(|v| (v.container_id.clone(), v.ifname.clone()))
            .collect(),
        (None, Some(raw)) => serde_json::from_value::<Option<Vec<gc::WireAttachment>>>(raw.clone())
            .map_err(|e| CniError::Decode {
                what: "cni.dev/attachments",
                source: e,
            })?
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.container_id, v.ifname))
            .collect(),
        (None, None) => {
            return Err(CniError::config(
                "GC needs \"cni.dev/valid-attachments\" (a list, [] when none is valid); \
                 nothing was released",
            ));
        }
    };
    Ok(listed
        .into_iter()
        .map(|(container_id, ifname)| ValidAttachment {
            container_id,
            ifname,
        })
        .collect())
}

impl From<CniError> for WireError {
    fn from(e: CniError) -> Self {
        e.to_cni()
    }
}

/// The ADD result. calico-ipam mode: the addresses with their block's prefix length and
/// nothing else, as calico-ipam answers. host-local mode: as host-local answers, one entry
/// per range set in config order with the range's prefix length and gateway, then the
/// configured routes and the `resolvConf` DNS.
fn add_result(config: &PluginConfig, ips: Vec<IpNet>) -> CNIResult {
    let Some(hl) = &config.host_local else {
        return CNIResult {
            ips: ips
                .into_iter()
                .map(|address| IpConfig {
                    interface: None,
                    address,
                    gateway: None,
                })
                .collect(),
            ..CNIResult::default()
        };
    };
    let mut ips = ips;
    // A repeated ADD reads the addresses back from the store: put them in range-set order.
    ips.sort_by_key(|ip| {
        hl.range_sets
            .iter()
            .position(|set| set.iter().any(|r| r.subnet.contains(&ip.addr())))
    });
    CNIResult {
        ips: ips.iter().map(|ip| hl.ip_config(ip)).collect(),
        routes: hl.routes.clone(),
        dns: hl.dns.clone(),
        ..CNIResult::default()
    }
}

/// The attachment named by the environment (the protocol layer has checked that
/// `CNI_CONTAINERID` and `CNI_IFNAME` are present for ADD, DEL and CHECK).
fn attachment(args: &Args) -> Result<Attachment> {
    let missing = |var: &str| CniError::Env {
        reason: format!("{var} is not set"),
    };
    let container_id = args
        .container_id()
        .ok_or_else(|| missing("CNI_CONTAINERID"))?
        .to_string();
    let ifname = args
        .ifname()
        .ok_or_else(|| missing("CNI_IFNAME"))?
        .to_string();
    check_container_id(&container_id)?;
    check_ifname(&ifname)?;
    Ok(Attachment {
        container_id,
        ifname,
        pod: node::PodRef::from_cni_args(args.args())?,
    })
}

/// The largest network config accepted, in bytes of its JSON.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Refuses a config over [`MAX_CONFIG_BYTES`] (code 7). `rscni-plugin` has read stdin by
/// now, so the bound is on the decoded config re-encoded (compact, hence never larger than
/// what was sent): it keeps oversized configs out of the store and the logs.
fn check_config_size(conf: &rscni_plugin::types::NetConf) -> Result<()> {
    let size = serde_json::to_vec(conf).map_or(usize::MAX, |v| v.len());
    if size > MAX_CONFIG_BYTES {
        return Err(CniError::config(format!(
            "the network config is {size} bytes; at most {MAX_CONFIG_BYTES} are accepted"
        )));
    }
    Ok(())
}

/// The spec's container ID: alphanumeric plus `_`, `.`, `-`, starting alphanumeric (code 4).
/// The length bound keeps the handle ID (`<network>.<container id>`) a valid object name.
fn check_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && id.len() <= 200;
    if ok {
        Ok(())
    } else {
        Err(CniError::Env {
            reason: format!(
                "CNI_CONTAINERID {id:?} must start with a letter or digit, hold only letters, \
                 digits, '_', '.', '-', and be at most 200 bytes"
            ),
        })
    }
}

/// The spec's interface name: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace
/// (code 4).
fn check_ifname(ifname: &str) -> Result<()> {
    let ok = !ifname.is_empty()
        && ifname.len() <= 15
        && ifname != "."
        && ifname != ".."
        && !ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::Env {
            reason: format!(
                "CNI_IFNAME {ifname:?} must be 1 to 15 bytes, not '.' or '..', \
                 without '/', ':' or whitespace"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_follow_the_spec() {
        for good in ["a", "0abc", "a_b.c-d", &"x".repeat(200)] {
            assert!(check_container_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "a\u{e9}", &"x".repeat(201)] {
            assert!(check_container_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ifnames_follow_the_spec() {
        for good in ["eth0", "a", "net1.100", &"x".repeat(15)] {
            assert!(check_ifname(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb", &"x".repeat(16)] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }
}
