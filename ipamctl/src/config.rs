//! `ipamctl config get|set`: the cluster's IPAMConfig, validated by the library.

use std::io::Write;

use clap::{Args, Subcommand};
use ipam_core::{Datastore, Ipam, IpamConfig};

use super::output::{Format, emit, table};
use super::{EXIT_OK, Result};

/// Config commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the config in force (defaults when none is stored).
    Get,
    /// Change the fields given; the others keep their current values.
    Set(SetArgs),
}

/// `config set` options.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Never borrow addresses from another node's block.
    #[arg(long, value_name = "BOOL")]
    pub strict_affinity: Option<bool>,
    /// Claim new blocks when a node's blocks are full.
    #[arg(long, value_name = "BOOL")]
    pub auto_allocate_blocks: Option<bool>,
    /// Blocks one node may hold (0 = 20; needs strict affinity).
    #[arg(long, value_name = "N")]
    pub max_blocks_per_host: Option<u32>,
    /// Seconds a released address rests before reuse (0..=1200).
    #[arg(long, value_name = "SECONDS")]
    pub ip_cooldown_seconds: Option<u32>,
}

/// Runs a config command.
pub async fn run<D: Datastore>(
    ipam: &Ipam<D>,
    command: &ConfigCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<u8> {
    let config = match command {
        ConfigCommand::Get => ipam.get_config().await?,
        ConfigCommand::Set(args) => {
            let mut c = ipam.get_config().await?;
            let SetArgs {
                strict_affinity,
                auto_allocate_blocks,
                max_blocks_per_host,
                ip_cooldown_seconds,
            } = args;
            c.strict_affinity = strict_affinity.unwrap_or(c.strict_affinity);
            c.auto_allocate_blocks = auto_allocate_blocks.unwrap_or(c.auto_allocate_blocks);
            c.max_blocks_per_host = max_blocks_per_host.unwrap_or(c.max_blocks_per_host);
            c.ip_cooldown_seconds = ip_cooldown_seconds.unwrap_or(c.ip_cooldown_seconds);
            ipam.set_config(c).await?;
            ipam.get_config().await?
        }
    };
    print(out, format, &config)?;
    Ok(EXIT_OK)
}

fn print(out: &mut dyn Write, format: Format, c: &IpamConfig) -> Result<()> {
    emit(out, format, c, |w| {
        let max = match c.max_blocks_per_host {
            0 => format!("0 ({} by default)", IpamConfig::DEFAULT_MAX_BLOCKS_PER_HOST),
            n => n.to_string(),
        };
        let rows = [
            ["strictAffinity".to_owned(), c.strict_affinity.to_string()],
            [
                "autoAllocateBlocks".to_owned(),
                c.auto_allocate_blocks.to_string(),
            ],
            ["maxBlocksPerHost".to_owned(), max],
            [
                "ipCooldownSeconds".to_owned(),
                c.ip_cooldown_seconds.to_string(),
            ],
        ];
        w.write_all(table(&["SETTING", "VALUE"], rows).as_bytes())
    })
}
