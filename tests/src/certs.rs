//! Throwaway certificates for TLS tests, made with the openssl CLI (Debian's `openssl`,
//! which `scripts/install-deps` installs): a CA, a server certificate for 127.0.0.1 and
//! localhost, and client certificates, all EC P-256, valid two days.

// A failed openssl run is a failed test, which is what these helpers are for.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA, its key and a server certificate signed by it, in one directory.
#[derive(Clone, Debug)]
pub struct Certificates {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The CA's private key (PEM).
    pub ca_key: PathBuf,
    /// The server certificate, for `IP:127.0.0.1` and `DNS:localhost` (PEM).
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
}

impl Certificates {
    /// Makes a CA and a server certificate in `dir`.
    pub fn new(dir: &Path) -> Certificates {
        let ca = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        // A self-signed request is the CA certificate itself.
        new_key_and_request(&ca_key, &ca, "ipam test CA", &["-x509", "-days", "2"]);
        let certs = Certificates {
            ca,
            ca_key,
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        let ext = dir.join("server.ext");
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            .expect("write the extension file");
        certs.sign(
            dir,
            "localhost",
            &ext,
            &certs.server_cert,
            &certs.server_key,
        );
        certs
    }

    /// A client certificate for `common_name` signed by the CA: (certificate, key) in `dir`.
    pub fn client(&self, dir: &Path, common_name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{common_name}.pem"));
        let key = dir.join(format!("{common_name}.key"));
        let ext = dir.join(format!("{common_name}.ext"));
        std::fs::write(&ext, "extendedKeyUsage=clientAuth\n").expect("write the extension file");
        self.sign(dir, common_name, &ext, &cert, &key);
        (cert, key)
    }

    /// A new key at `key` and a certificate at `cert` for `common_name` with the
    /// extensions in `ext`, signed by the CA.
    fn sign(&self, dir: &Path, common_name: &str, ext: &Path, cert: &Path, key: &Path) {
        let csr = dir.join(format!("{common_name}.csr"));
        new_key_and_request(key, &csr, common_name, &[]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &text(&csr),
            "-CA",
            &text(&self.ca),
            "-CAkey",
            &text(&self.ca_key),
            "-CAcreateserial",
            "-out",
            &text(cert),
            "-days",
            "2",
            "-extfile",
            &text(ext),
        ]);
    }
}

/// A new P-256 key at `key` and a request (or, with `-x509` in `extra`, a self-signed
/// certificate) for `common_name` at `out`.
fn new_key_and_request(key: &Path, out: &Path, common_name: &str, extra: &[&str]) {
    let (key, out, subject) = (text(key), text(out), format!("/CN={common_name}"));
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ];
    args.extend(["-nodes", "-keyout", &key, "-out", &out, "-subj", &subject]);
    args.extend_from_slice(extra);
    openssl(&args);
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): install Debian's openssl (scripts/install-deps does)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
