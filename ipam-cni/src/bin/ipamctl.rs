//! `ipamctl`: parse the command line, open the datastore, run, map the outcome to an exit
//! status (0 success or clean check, 1 findings or a refused release, 2 errors).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ipam_cni::ctl::{self, Cli, EXIT_ERROR};
use ipam_sqlite::SqliteStore;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let path = match sqlite_path(cli.datastore.as_deref()) {
        Ok(p) => p,
        Err(msg) => return fail(&msg),
    };
    let store = match SqliteStore::open(&path) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot open {}: {e}", path.display())),
    };
    let mut state = path.clone().into_os_string();
    state.push(".gc-state.json");
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(ctl::run(&cli, store, &mut stdout, Some(state.into()))) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e.to_string()),
    }
}

/// The SQLite file named by `--datastore sqlite:PATH` / `IPAM_DATASTORE`, or the plugin's
/// default. Interim: replaced by the shared `ipam_cni::datastore` selection once it lands.
fn sqlite_path(spec: Option<&str>) -> Result<PathBuf, String> {
    match spec {
        None | Some("") | Some("sqlite") => Ok(ipam_sqlite::default_path()),
        Some(s) => match s.strip_prefix("sqlite:") {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(format!(
                "unsupported datastore {s:?}: use sqlite:PATH (etcd and Kubernetes are not built in yet)"
            )),
        },
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("ipamctl: error: {msg}");
    ExitCode::from(EXIT_ERROR)
}
