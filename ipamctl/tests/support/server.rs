//! A real `ipamctl serve` process on a test's SQLite store, and `curl` as its client.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Fixture;

/// How long a server may take to print its banner, or to refuse to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `ipamctl serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// `http://ADDR` or `https://ADDR`, as the banner printed it.
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_command(fx: &Fixture, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipamctl"));
    cmd.arg("--datastore")
        .arg(format!("sqlite:{}", fx.db.display()))
        .arg("serve")
        .args(args)
        .env_remove("IPAM_DATASTORE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

impl Server {
    /// Starts `ipamctl serve ARGS` and waits for its banner.
    pub fn start(fx: &Fixture, args: &[&str]) -> Server {
        let mut child = serve_command(fx, args).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = Server {
            child,
            url: String::new(),
        };
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"));
        let Some(url) = url else {
            let _ = server.child.kill();
            let out = server.child.wait_with_output_ref();
            panic!("ipamctl serve {args:?} did not start: {line:?}\n{out}");
        };
        server.url = url.to_owned();
        server
    }
}

trait StderrOf {
    fn wait_with_output_ref(&mut self) -> String;
}

impl StderrOf for Child {
    fn wait_with_output_ref(&mut self) -> String {
        let _ = self.wait();
        let mut text = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        text
    }
}

/// Runs `ipamctl serve ARGS`, which must refuse to start; returns its exit code and stderr.
pub fn refused_at_start(fx: &Fixture, args: &[&str]) -> (Option<i32>, String) {
    let mut child = serve_command(fx, args).spawn().unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ipamctl serve {args:?} started; it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What curl got: the HTTP code (0 when no response) and the body.
pub struct Reply {
    pub code: u16,
    pub body: String,
    pub curl_exit: Option<i32>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `curl ARGS URL` with a bounded time; the code comes from `-w`.
pub fn curl(args: &[&str], url: &str) -> Reply {
    curl_as(None, args, url)
}

/// Like [`curl`], run as `uid` (and its own group, no others) through `setpriv`.
pub fn curl_as(uid: Option<u32>, args: &[&str], url: &str) -> Reply {
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new(tool("setpriv"));
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(tool("curl"));
            c
        }
        None => Command::new(tool("curl")),
    };
    let out: Output = cmd
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Reply {
        code: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        curl_exit: out.status.code(),
    }
}

/// A tool the tests need, from PATH, or a failure naming the package.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH: install it (scripts/install-deps)"))
}

/// Writes `text` to `path` with `mode`.
pub fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A CA and a server certificate for 127.0.0.1 and localhost: (ca.pem, server.pem,
/// server.key).
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let certs = ipam_tests::certs::Certificates::new(dir);
    (certs.ca, certs.server_cert, certs.server_key)
}
