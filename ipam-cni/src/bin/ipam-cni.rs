//! `ipam-cni`: the CNI IPAM plugin. The runtime sets `CNI_COMMAND` and friends and writes
//! the network config on stdin; the result or the spec's error object goes to stdout, and
//! the exit status is 0 only on success. Everything else lives in `ipam_cni::cni`.

use std::process::ExitCode;

use ipam_cni::cni::{IpamPlugin, SUPPORTED_VERSIONS};
use rscni_plugin::cni::Plugin;
use rscni_plugin::version::SpecVersion;

fn main() -> ExitCode {
    let protocol = Plugin::new(SpecVersion::new(1, 1, 0), SUPPORTED_VERSIONS.to_vec());
    // `run` reads the environment and stdin, calls the plugin, and prints the result or
    // the error JSON; the error has been printed by the time it is returned here.
    match protocol.run(&IpamPlugin::from_argv0()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
