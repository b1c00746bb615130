//! `ipamctl install-cni`: puts the plugin on a node from a DaemonSet pod, as Calico's
//! `install-cni` does: the plugin binary into the host's CNI binary directory, then a
//! kubeconfig for the pod's ServiceAccount, then the network configuration list.
//!
//! Everything is read and checked before anything is written, so a pod with a bad
//! environment changes nothing on the node. Each file is written to a fresh temporary file in
//! its target directory, synced and renamed over the target, so a container runtime reading
//! the directory sees the old file or the new one, never half of one. The conflist goes last:
//! a runtime starts using the network as soon as it appears, and by then the binary and the
//! kubeconfig it names are in place.
//!
//! The installer lives in `ipamctl`, not in the plugin, so the plugin binary (started once per
//! pod) links none of it; the DaemonSet image carries both binaries anyway.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use clap::Args;
use serde_json::{Value, json};

use super::output::parse_duration;
use super::{CtlError, EXIT_OK, Result};

/// Mode of the installed plugin binary: the runtime executes it.
pub const BINARY_MODE: u32 = 0o755;
/// Mode of the conflist: runtimes and node agents read it.
pub const CONFLIST_MODE: u32 = 0o644;
/// Mode of the kubeconfig: it holds a bearer token, for root only.
pub const KUBECONFIG_MODE: u32 = 0o600;
/// Largest ServiceAccount token accepted (projected tokens are about 1 KiB).
const MAX_TOKEN: u64 = 64 * 1024;
/// Largest CA bundle or conflist accepted.
const MAX_TEXT: u64 = 1024 * 1024;
/// Largest plugin binary accepted.
const MAX_BINARY: u64 = 512 * 1024 * 1024;
/// The environment variables the kubelet sets in every pod for the API server.
const HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
const PORT_ENV: &str = "KUBERNETES_SERVICE_PORT";
/// The node's name, which the DaemonSet sets from `spec.nodeName` (as Calico's does).
const NODE_ENV: &str = "KUBERNETES_NODE_NAME";
/// Replaced in the conflist by the node's name, as Calico's `install-cni` replaces it: the
/// plugin then allocates for the Node object's name, which need not be the host name.
pub const NODE_PLACEHOLDER: &str = "__KUBERNETES_NODE_NAME__";

/// `install-cni` options. The defaults are the DaemonSet's paths (`deploy/daemonset.yaml`).
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The plugin binary to install.
    #[arg(long, value_name = "FILE", default_value = "/usr/local/bin/ipam-cni")]
    pub plugin: PathBuf,
    /// The network configuration list to install.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/ipam/10-ipam.conflist"
    )]
    pub conflist: PathBuf,
    /// The host's CNI binary directory, as mounted in the pod.
    #[arg(long, value_name = "DIR", default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The host's CNI configuration directory, as mounted in the pod.
    #[arg(long, value_name = "DIR", default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// File name of the kubeconfig written into --conf-dir (the conflist's
    /// `kubernetes.kubeconfig` names it as the host sees it).
    #[arg(long, value_name = "NAME", default_value = "ipam-kubeconfig")]
    pub kubeconfig_name: String,
    /// The ServiceAccount mount holding `token` and `ca.crt`.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    pub service_account_dir: PathBuf,
    /// Install again every DURATION until stopped, so the kubeconfig follows the projected
    /// token as the kubelet rotates it (unchanged files are left alone).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub refresh: Option<Duration>,
}

/// One file to put in place.
struct Placement {
    dir: PathBuf,
    name: String,
    content: Vec<u8>,
    mode: u32,
}

/// What happened to one target file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written (new or changed).
    Written,
    /// Already there with the same content and mode.
    Unchanged,
}

/// Runs `install-cni`, reading the API server's address from `env` (the process
/// environment in the binary); with `--refresh`, until SIGTERM.
pub async fn run(
    args: &InstallArgs,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
) -> Result<u8> {
    install_once(args, env, out)?;
    let Some(every) = args.refresh else {
        return Ok(EXIT_OK);
    };
    let mut term = terminate_signal()?;
    // Ends on a signal; each round is bounded by the interval. A failed round (a file
    // briefly held by another installer, a full disk) is reported and tried again at the
    // next one, rather than restarting the container.
    while tokio::time::timeout(every, term.recv()).await.is_err() {
        if let Err(e) = install_once(args, env, out) {
            eprintln!(
                "ipamctl: install-cni: {}; trying again in {every:?}",
                super::describe(&e)
            );
        }
    }
    Ok(EXIT_OK)
}

fn terminate_signal() -> Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::terminate()).map_err(|source| CtlError::Io {
        action: "listen for",
        path: "SIGTERM".into(),
        source,
    })
}

/// Reads and checks every input, then writes the binary, the kubeconfig and the conflist.
pub fn install_once(
    args: &InstallArgs,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
) -> Result<()> {
    let placements = plan(args, env)?;
    for p in &placements {
        let outcome = place(p)?;
        let verb = match outcome {
            Outcome::Written => "installed",
            Outcome::Unchanged => "unchanged",
        };
        let path = p.dir.join(&p.name);
        writeln!(out, "{verb} {} ({:04o})", path.display(), p.mode).map_err(CtlError::Output)?;
    }
    Ok(())
}

/// The three files, in the order they must appear on the node.
fn plan(args: &InstallArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Placement>> {
    let server = api_server(env)?;
    let sa = &args.service_account_dir;
    let token = token(
        &read_bounded(&sa.join("token"), MAX_TOKEN)?,
        &sa.join("token"),
    )?;
    let ca = certificate(
        &read_bounded(&sa.join("ca.crt"), MAX_TEXT)?,
        &sa.join("ca.crt"),
    )?;
    let binary = read_bounded(&args.plugin, MAX_BINARY)?;
    let conflist = with_node_name(read_bounded(&args.conflist, MAX_TEXT)?, env)?;
    check_conflist(&conflist, &args.conflist)?;
    let name_of = |path: &Path| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| CtlError::InvalidArgument {
                arg: "--plugin/--conflist",
                reason: format!("{} names no file", path.display()),
            })
    };
    check_file_name(&args.kubeconfig_name)?;
    Ok(vec![
        Placement {
            dir: args.bin_dir.clone(),
            name: name_of(&args.plugin)?,
            content: binary,
            mode: BINARY_MODE,
        },
        Placement {
            dir: args.conf_dir.clone(),
            name: args.kubeconfig_name.clone(),
            content: kubeconfig(&server, &ca, &token)?.into_bytes(),
            mode: KUBECONFIG_MODE,
        },
        Placement {
            dir: args.conf_dir.clone(),
            name: name_of(&args.conflist)?,
            content: conflist,
            mode: CONFLIST_MODE,
        },
    ])
}

/// The conflist with [`NODE_PLACEHOLDER`] replaced by `KUBERNETES_NODE_NAME`, which must
/// then be set and be a node name (so it needs no escaping inside a JSON string).
fn with_node_name(conflist: Vec<u8>, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<u8>> {
    let text = String::from_utf8_lossy(&conflist);
    if !text.contains(NODE_PLACEHOLDER) {
        return Ok(conflist);
    }
    let name = env(NODE_ENV)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or(CtlError::MissingEnv { name: NODE_ENV })?;
    let node = ipam_core::NodeName::new(name.as_str()).map_err(|e| CtlError::InvalidEnv {
        name: NODE_ENV,
        reason: e.to_string(),
    })?;
    Ok(text.replace(NODE_PLACEHOLDER, node.as_str()).into_bytes())
}

/// `https://HOST:PORT` from the variables the kubelet sets.
fn api_server(env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let get = |name: &'static str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or(CtlError::MissingEnv { name })
    };
    let host = get(HOST_ENV)?;
    let port = get(PORT_ENV)?;
    let bad = |reason: String| CtlError::InvalidEnv {
        name: HOST_ENV,
        reason,
    };
    if host.len() > 253 || host.contains(|c: char| c.is_whitespace() || "/@?#[]".contains(c)) {
        return Err(bad(format!("{host:?} is not a host name or address")));
    }
    let port: u16 = port.parse().map_err(|_| CtlError::InvalidEnv {
        name: PORT_ENV,
        reason: format!("{port:?} is not a port number"),
    })?;
    // An IPv6 address goes in brackets in a URL.
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(format!("https://{host}:{port}"))
}

/// The token file's content: one line of printable ASCII.
fn token(bytes: &[u8], path: &Path) -> Result<String> {
    let text = String::from_utf8_lossy(bytes).trim().to_owned();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CtlError::Parse {
            path: path.to_owned(),
            what: "ServiceAccount token",
            reason: "empty, or not one line of printable characters".into(),
        });
    }
    Ok(text)
}

/// The CA bundle, which must hold at least one PEM certificate.
fn certificate(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    if !String::from_utf8_lossy(bytes).contains("-----BEGIN CERTIFICATE-----") {
        return Err(CtlError::Parse {
            path: path.to_owned(),
            what: "PEM CA bundle",
            reason: "no certificate in it".into(),
        });
    }
    Ok(bytes.to_vec())
}

/// A conflist is a JSON object with a name and a list of plugins.
fn check_conflist(bytes: &[u8], path: &Path) -> Result<()> {
    let reason = match serde_json::from_slice::<Value>(bytes) {
        Err(e) => e.to_string(),
        Ok(v) if !v["name"].is_string() => "no \"name\"".into(),
        Ok(v) if !v["plugins"].is_array() => "no \"plugins\" list".into(),
        Ok(_) => return Ok(()),
    };
    Err(CtlError::Parse {
        path: path.to_owned(),
        what: "CNI network configuration list",
        reason,
    })
}

fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CtlError::InvalidArgument {
            arg: "--kubeconfig-name",
            reason: format!("{name:?} is not a file name"),
        });
    }
    Ok(())
}

/// The plugin's kubeconfig: the API server, its CA inline, the ServiceAccount's token.
fn kubeconfig(server: &str, ca: &[u8], token: &str) -> Result<String> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {
            "server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "ipam-cni", "user": {"token": token}}],
        "contexts": [{"name": "ipam-cni", "context": {"cluster": "cluster", "user": "ipam-cni"}}],
        "current-context": "ipam-cni",
    });
    let text = serde_yaml::to_string(&config).map_err(|e| CtlError::Serialize(e.to_string()))?;
    Ok(format!(
        "# Written by `ipamctl install-cni` for the ipam-cni ServiceAccount; rewritten as the \
         token rotates.\n{text}"
    ))
}

/// Reads at most `limit` bytes of a regular file; more is an error.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let io = |source| CtlError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(CtlError::Parse {
            path: path.to_owned(),
            what: "input file",
            reason: format!("larger than {limit} bytes"),
        });
    }
    Ok(bytes)
}

/// Puts one file in place through a temporary file and a rename; leaves an identical file
/// alone; refuses to replace a symbolic link or anything but a regular file.
fn place(p: &Placement) -> Result<Outcome> {
    let target = p.dir.join(&p.name);
    let io = |action, source| CtlError::Io {
        action,
        path: target.clone(),
        source,
    };
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.file_type().is_symlink() => return Err(CtlError::Symlink { path: target }),
        Ok(m) if !m.is_file() => return Err(CtlError::NotAFile { path: target }),
        Ok(m) if m.permissions().mode() & 0o7777 == p.mode && same_content(&target, p)? => {
            return Ok(Outcome::Unchanged);
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", e)),
    }
    // A new name opened with O_EXCL and mode 0600: a link planted under it is not followed,
    // and the content is never readable by others before the mode is set.
    let mut tmp = tempfile::Builder::new()
        .prefix(".ipam-install-")
        .tempfile_in(&p.dir)
        .map_err(|e| io("create a temporary file beside", e))?;
    let file = tmp.as_file_mut();
    file.set_permissions(std::fs::Permissions::from_mode(p.mode))
        .map_err(|e| io("set the mode of", e))?;
    file.write_all(&p.content).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    tmp.persist(&target)
        .map_err(|e| io("rename onto", e.error))?;
    sync_dir(&p.dir)?;
    Ok(Outcome::Written)
}

fn same_content(target: &Path, p: &Placement) -> Result<bool> {
    let bytes = read_bounded(target, p.content.len() as u64 + 1)?;
    Ok(bytes == p.content)
}

/// Syncs a directory, so the rename survives a crash of the node.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CtlError::Io {
            action: "sync",
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_server_comes_from_the_kubelet_variables() {
        let v4 = env(&[(HOST_ENV, "10.0.0.1"), (PORT_ENV, "443")]);
        assert_eq!(api_server(&v4).unwrap(), "https://10.0.0.1:443");
        let v6 = env(&[(HOST_ENV, "fd00::1"), (PORT_ENV, "6443")]);
        assert_eq!(api_server(&v6).unwrap(), "https://[fd00::1]:6443");
        let missing = env(&[(PORT_ENV, "443")]);
        assert!(matches!(
            api_server(&missing),
            Err(CtlError::MissingEnv { name: HOST_ENV })
        ));
        let bad_port = env(&[(HOST_ENV, "10.0.0.1"), (PORT_ENV, "https")]);
        assert!(matches!(
            api_server(&bad_port),
            Err(CtlError::InvalidEnv { name: PORT_ENV, .. })
        ));
        let bad_host = env(&[(HOST_ENV, "evil.example/x"), (PORT_ENV, "443")]);
        assert!(api_server(&bad_host).is_err());
    }

    #[test]
    fn the_kubeconfig_embeds_the_ca_and_the_token() {
        let text = kubeconfig("https://10.0.0.1:443", b"PEM", "tok.en").unwrap();
        let v: Value = serde_yaml::from_str(&text).unwrap();
        let cluster = &v["clusters"][0]["cluster"];
        assert_eq!(cluster["server"], "https://10.0.0.1:443");
        assert_eq!(cluster["certificate-authority-data"], "UEVN");
        assert_eq!(v["users"][0]["user"]["token"], "tok.en");
        assert_eq!(v["current-context"], "ipam-cni");
    }

    #[test]
    fn tokens_and_conflists_are_checked() {
        let p = Path::new("x");
        assert_eq!(token(b"abc\n", p).unwrap(), "abc");
        assert!(token(b"", p).is_err());
        assert!(token(b"a b", p).is_err());
        assert!(check_conflist(br#"{"name":"n","plugins":[]}"#, p).is_ok());
        assert!(check_conflist(br#"{"name":"n"}"#, p).is_err());
        assert!(check_conflist(b"not json", p).is_err());
        assert!(check_file_name("../x").is_err());
    }
}
