//! The CNI plugin as a runtime calls it: one process per call, the network config on stdin,
//! the pod named in `CNI_ARGS`; used by the benchmarks that run real plugin processes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::concurrent::BoxError;

/// Our plugin, built next to the running benchmark binary (`target/release/ipam-cni`).
pub fn ours() -> Result<PathBuf, BoxError> {
    let ours = std::env::current_exe()?.with_file_name("ipam-cni");
    if ours.is_file() {
        Ok(ours)
    } else {
        let hint = "cargo build --release -p ipam-cni --bins";
        Err(format!("no {}: {hint}", ours.display()).into())
    }
}

/// Runs `verb` for container `id` (pod `default/id`) with `conf`; the result the plugin
/// printed (`Null` when it printed none), or an error saying what it answered.
pub fn call(bin: &Path, verb: &str, id: &str, conf: &Value) -> Result<Value, BoxError> {
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}");
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/var/run/netns/{id}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{} {verb} {id}: {said}", bin.display()).into());
    }
    if said.trim().is_empty() {
        Ok(Value::Null)
    } else {
        Ok(serde_json::from_str(&said)?)
    }
}

/// The addresses (`ips[].address`) of an ADD's result.
pub fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str().map(str::to_owned))
        .collect()
}
