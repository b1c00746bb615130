//! `ipamctl pool create|list|get|delete`.

use std::io::Write;

use clap::{Args, Subcommand, ValueEnum};
use ipam_core::{AssignmentMode, Datastore, IntendedUse, IpPool, Ipam, Stored};
use ipnet::IpNet;
use serde::Serialize;

use super::output::{Format, emit, or_dash, table};
use super::{EXIT_OK, Result};

/// Pool commands.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool.
    Create(CreateArgs),
    /// List every pool.
    List,
    /// Show one pool, by name or CIDR.
    Get {
        /// The pool's name or CIDR.
        name: String,
    },
    /// Delete a pool; refused while it holds allocations unless `--release` is given.
    Delete {
        /// The pool's name or CIDR.
        name: String,
        /// Release the pool's addresses, blocks and affinities first.
        #[arg(long)]
        release: bool,
    },
}

/// `pool create` options.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The pool's name.
    pub name: String,
    /// The pool's network.
    #[arg(long)]
    pub cidr: IpNet,
    /// Prefix length of each block (default 26 for IPv4, 122 for IPv6).
    #[arg(long)]
    pub block_size: Option<u8>,
    /// Calico selector over node labels (default `all()`).
    #[arg(long, default_value = "")]
    pub node_selector: String,
    /// What addresses may be used for (default Workload,Tunnel).
    #[arg(long, value_enum, value_delimiter = ',', ignore_case = true)]
    pub allowed_uses: Vec<Use>,
    /// Create the pool disabled: it hands out nothing new.
    #[arg(long)]
    pub disabled: bool,
    /// `manual` pools are used only when a request names them.
    #[arg(long, value_enum, default_value_t = Mode::Automatic, ignore_case = true)]
    pub assignment_mode: Mode,
    /// Masquerade traffic leaving the pool (stored for the dataplane).
    #[arg(long)]
    pub nat_outgoing: bool,
    /// Allow a CIDR that covers loopback, multicast, link-local, unspecified or broadcast
    /// addresses, or the whole address space.
    #[arg(long)]
    pub allow_special_range: bool,
}

/// `--allowed-uses` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Use {
    /// Pod and container interfaces.
    #[value(name = "Workload")]
    Workload,
    /// Tunnel endpoints.
    #[value(name = "Tunnel")]
    Tunnel,
    /// Service load balancer addresses.
    #[value(name = "LoadBalancer", alias = "load-balancer")]
    LoadBalancer,
}

/// `--assignment-mode` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    /// Used by every automatic assignment.
    #[value(name = "Automatic")]
    Automatic,
    /// Used only when named.
    #[value(name = "Manual")]
    Manual,
}

/// A pool as printed in JSON and YAML: the Kubernetes object, so that the output of
/// `pool list -o yaml` can be given to `kubectl apply -f -`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PoolObject<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    spec: &'a IpPool,
}

#[derive(Debug, Serialize)]
struct Metadata<'a> {
    name: &'a str,
}

/// Several objects, as `kubectl get -o yaml` prints them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectList<T> {
    api_version: &'static str,
    kind: &'static str,
    items: Vec<T>,
}

impl<'a> PoolObject<'a> {
    fn new(pool: &'a Stored<IpPool>) -> Self {
        PoolObject {
            api_version: ipam_k8s::resource::API_VERSION,
            kind: ipam_k8s::ResourceDef::of(ipam_core::Kind::IpPool).kind_name(),
            metadata: Metadata { name: &pool.name },
            spec: &pool.value,
        }
    }
}

/// Runs a pool command.
pub async fn run<D: Datastore>(
    ipam: &Ipam<D>,
    command: &PoolCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<u8> {
    match command {
        PoolCommand::Create(args) => {
            let opts = ipam_core::PoolCreate {
                allow_special_ranges: args.allow_special_range,
            };
            ipam.create_pool_with(&args.name, args.to_pool(), opts)
                .await?;
            let created = ipam.get_pool(&args.name).await?;
            print(out, format, &[created], true)?;
        }
        PoolCommand::List => print(out, format, &ipam.list_pools().await?, false)?,
        PoolCommand::Get { name } => print(out, format, &[ipam.get_pool(name).await?], true)?,
        PoolCommand::Delete { name, release } => {
            let pool = ipam.get_pool(name).await?;
            ipam.delete_pool(&pool.name, *release).await?;
            let gone = serde_json::json!({ "deleted": pool.name });
            emit(out, format, &gone, |w| {
                writeln!(w, "pool {:?} ({}) deleted", pool.name, pool.value.cidr)
            })?;
        }
    }
    Ok(EXIT_OK)
}

impl CreateArgs {
    fn to_pool(&self) -> IpPool {
        let mut pool = IpPool::new(self.cidr);
        pool.block_size = self.block_size.unwrap_or(0);
        pool.node_selector = self.node_selector.clone();
        pool.disabled = self.disabled;
        pool.nat_outgoing = self.nat_outgoing;
        pool.allowed_uses = self
            .allowed_uses
            .iter()
            .map(|u| match u {
                Use::Workload => IntendedUse::Workload,
                Use::Tunnel => IntendedUse::Tunnel,
                Use::LoadBalancer => IntendedUse::LoadBalancer,
            })
            .collect();
        pool.assignment_mode = match self.assignment_mode {
            Mode::Automatic => None,
            Mode::Manual => Some(AssignmentMode::Manual),
        };
        pool
    }
}

/// Prints pools; `single` prints one object rather than a `List` in JSON and YAML.
fn print(
    out: &mut dyn Write,
    format: Format,
    pools: &[Stored<IpPool>],
    single: bool,
) -> Result<()> {
    let objects: Vec<PoolObject<'_>> = pools.iter().map(PoolObject::new).collect();
    match (single, objects.first()) {
        (true, Some(o)) => emit(out, format, o, |w| print_table(w, pools)),
        _ => {
            let list = ObjectList {
                api_version: "v1",
                kind: "List",
                items: objects,
            };
            emit(out, format, &list, |w| print_table(w, pools))
        }
    }
}

/// The human table of pools.
fn print_table(w: &mut dyn Write, pools: &[Stored<IpPool>]) -> std::io::Result<()> {
    let rows = pools.iter().map(|p| {
        let v = &p.value;
        let uses: Vec<String> = if v.allowed_uses.is_empty() {
            vec!["Workload".into(), "Tunnel".into()]
        } else {
            v.allowed_uses.iter().map(|u| format!("{u:?}")).collect()
        };
        [
            p.name.clone(),
            v.cidr.to_string(),
            v.effective_block_size().to_string(),
            if v.node_selector.is_empty() {
                "all()".into()
            } else {
                v.node_selector.clone()
            },
            uses.join(","),
            if v.is_manual() { "Manual" } else { "Automatic" }.into(),
            v.disabled.to_string(),
            or_dash(v.ipip_mode.as_deref().or(v.vxlan_mode.as_deref())),
        ]
    });
    let header = [
        "NAME",
        "CIDR",
        "BLOCK SIZE",
        "SELECTOR",
        "ALLOWED USES",
        "ASSIGNMENT",
        "DISABLED",
        "ENCAP",
    ];
    w.write_all(table(&header, rows).as_bytes())
}
