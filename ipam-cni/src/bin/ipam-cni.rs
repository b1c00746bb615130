//! `ipam-cni`: the CNI IPAM plugin. The runtime sets `CNI_COMMAND` and friends and writes
//! the network config on stdin; the result or the spec's error object goes to stdout, and
//! the exit status is 0 only on success. Everything else lives in `ipam_cni::cni`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::str::FromStr;

use ipam_cni::cni::{IpamPlugin, SUPPORTED_VERSIONS};
use rscni_plugin::cni::Plugin;
use rscni_plugin::version::SpecVersion;

/// More than any network config; a longer stdin is cut here and then fails to decode.
const MAX_REQUEST: u64 = 16 << 20;

fn main() -> ExitCode {
    let own = SpecVersion::new(1, 1, 0);
    let request = read_request();
    let version = request.as_ref().and_then(request_version).unwrap_or(own);
    let null_valid = request.as_ref().is_some_and(|r| {
        r.get("cni.dev/valid-attachments")
            .is_some_and(serde_json::Value::is_null)
    });
    let protocol = Plugin::new(version, SUPPORTED_VERSIONS.to_vec());
    let plugin = IpamPlugin::from_argv0().with_null_valid_attachments(null_valid);
    // `run` reads the environment and stdin, calls the plugin, and prints the result or
    // the error JSON; the error has been printed by the time it is returned here.
    match protocol.run(&plugin) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// The request as JSON, for what the protocol crate's decoding loses: the request's
/// `cniVersion`, which an error object must echo (the crate writes the plugin's own), and
/// whether GC's `cni.dev/valid-attachments` is `null` or missing.
///
/// The protocol layer reads stdin itself, so the request is read here and put back as an
/// in-memory file on fd 0. VERSION is not read (its answer describes the plugin). Any
/// failure leaves stdin untouched (when nothing was read yet) or restores what was read.
fn read_request() -> Option<serde_json::Value> {
    if std::env::var("CNI_COMMAND").map_or(true, |c| c == "VERSION") {
        return None;
    }
    let memfd = rustix::fs::memfd_create("cni-request", rustix::fs::MemfdFlags::CLOEXEC).ok()?;
    let mut request = Vec::new();
    let _ = std::io::stdin()
        .lock()
        .take(MAX_REQUEST)
        .read_to_end(&mut request);
    let mut file = std::fs::File::from(memfd);
    file.write_all(&request).ok()?;
    file.seek(SeekFrom::Start(0)).ok()?;
    rustix::stdio::dup2_stdin(&file).ok()?;
    serde_json::from_slice(&request).ok()
}

/// The request's `cniVersion` if this plugin speaks it.
fn request_version(request: &serde_json::Value) -> Option<SpecVersion> {
    let version = SpecVersion::from_str(request.get("cniVersion")?.as_str()?).ok()?;
    SUPPORTED_VERSIONS.contains(&version).then_some(version)
}
