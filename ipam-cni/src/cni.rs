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
//! the error object that echoes the request's rather than the plugin's 1.1.0) is harmless,
//! since runtimes read `code`, `msg` and `details`.
//!
//! Everything this plugin decides is in the submodules, generic over the datastore:
//! [`config`] (Calico's keys), [`node`] (node name, handles, `CNI_ARGS`), [`ops`] (ADD, DEL,
//! CHECK), [`gc`] (GC), [`status`] (STATUS), [`lock`] (the host lock), [`log`], [`error`] (codes).
//! [`IpamPlugin`] ties them to the protocol: parse and check everything, then open the
//! datastore (so a rejected request writes nothing), then run the verb.

pub mod config;
pub mod error;
pub mod etcd_config;
pub mod gc;
pub mod lock;
pub mod log;
pub mod node;
pub mod ops;
pub mod status;

use std::net::IpAddr;

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
        }
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
    fn execute(&self, args: &Args, verb: impl FnOnce(&Args) -> Result<Verb>) -> Result<Vec<IpNet>> {
        let config = PluginConfig::from_netconf(args.config(), &self.own_name)?;
        let log = Logger::new(config.log_level, config.log_file.as_deref());
        let verb = verb(args)?;
        let node = node::node_name(&config)?;
        let spec = match &config.datastore {
            Some(spec) => spec.clone(),
            None => DatastoreSpec::resolve(None)?,
        };
        let is_status = matches!(verb, Verb::Status);
        let ctx = Context {
            config: &config,
            node,
            log: &log,
            // Beside the database for the embedded store; a host path for the others.
            lock_path: Some(spec.sibling(".lock").unwrap_or_else(lock::host_lock_path)),
            create_pools: spec.local_path().is_some(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CniError::Runtime)?;
        let outcome = runtime.block_on(datastore::with_store(&spec, Run { ctx, verb }));
        // A lock waiter abandoned at its time limit may still sit in flock: do not wait for it.
        runtime.shutdown_background();
        match outcome {
            Ok(result) => result,
            Err(e) if is_status => Err(CniError::NotAvailable {
                reason: e.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
        .inspect_err(|e| log.warn(format_args!("{e}")))
    }

    fn wire(
        &self,
        args: &Args,
        verb: impl FnOnce(&Args) -> Result<Verb>,
    ) -> Result<Vec<IpNet>, WireError> {
        self.execute(args, verb).map_err(|e| e.to_cni())
    }
}

impl StoreOp for Run<'_> {
    type Output = Result<Vec<IpNet>>;

    async fn run<D: Datastore + 'static>(self, store: D) -> Result<Vec<IpNet>> {
        let ipam = Ipam::new(store, ipam_core::SystemClock);
        let ctx = &self.ctx;
        match &self.verb {
            Verb::Add(att) => ops::add(&ipam, ctx, att).await,
            Verb::Del(att) => ops::del(&ipam, ctx, att).await,
            Verb::Check(att, prev) => ops::check(&ipam, ctx, att, prev).await.map(|()| Vec::new()),
            Verb::Gc(valid) => gc::gc(&ipam, ctx, valid).await.map(|_| Vec::new()),
            Verb::Status => status::status(&ipam, ctx).await.map(|()| Vec::new()),
        }
    }
}

impl Cni for IpamPlugin {
    fn add(&self, args: Args) -> Result<CNIResult, WireError> {
        let ips = self.wire(&args, |a| attachment(a).map(Verb::Add))?;
        Ok(CNIResult {
            ips: ips
                .into_iter()
                .map(|address| IpConfig {
                    interface: None,
                    address,
                    gateway: None,
                })
                .collect(),
            ..CNIResult::default()
        })
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
        self.wire(&args, |a| {
            let valid = a
                .config()
                .valid_attachments
                .iter()
                .flatten()
                .map(|v| ValidAttachment {
                    container_id: v.container_id.clone(),
                    ifname: v.ifname.clone(),
                })
                .collect();
            Ok(Verb::Gc(valid))
        })
        .map(drop)
    }
}

impl From<CniError> for WireError {
    fn from(e: CniError) -> Self {
        e.to_cni()
    }
}

/// The attachment named by the environment (the protocol layer has checked that
/// `CNI_CONTAINERID` and `CNI_IFNAME` are present for ADD, DEL and CHECK).
fn attachment(args: &Args) -> Result<Attachment> {
    let missing = |var: &str| CniError::Env {
        reason: format!("{var} is not set"),
    };
    Ok(Attachment {
        container_id: args
            .container_id()
            .ok_or_else(|| missing("CNI_CONTAINERID"))?
            .to_string(),
        ifname: args
            .ifname()
            .ok_or_else(|| missing("CNI_IFNAME"))?
            .to_string(),
        pod: node::PodRef::from_cni_args(args.args())?,
    })
}
