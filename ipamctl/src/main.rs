//! `ipamctl`: parse the command line, open the datastore, run, map the outcome to an exit
//! status (0 success or clean check, 1 findings or a refused release, 2 errors).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ipam_core::Datastore;
use ipam_datastore::{DatastoreSpec, StoreOp, with_store};
use ipamctl::{self as ctl, Cli, EXIT_ERROR};

/// The parsed command, run on whichever store the spec opens.
struct Run<'a> {
    cli: &'a Cli,
    gc_state: Option<PathBuf>,
}

impl StoreOp for Run<'_> {
    type Output = ctl::Result<u8>;

    async fn run<D: Datastore + 'static>(self, store: D) -> Self::Output {
        let mut stdout = std::io::stdout().lock();
        ctl::run(self.cli, store, &mut stdout, self.gc_state).await
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The manifests need no datastore: print them without opening (or creating) one.
    if matches!(cli.command, ctl::Command::Crds) {
        return match ctl::crds::run(&mut std::io::stdout().lock()) {
            Ok(code) => ExitCode::from(code),
            Err(e) => fail(&e.to_string()),
        };
    }
    // The flag also reads IPAM_DATASTORE (clap's `env`), so resolve needs no second look.
    let spec = match DatastoreSpec::resolve_from(cli.datastore.as_deref(), None) {
        Ok(spec) => cli.with_etcd_flags(spec),
        Err(e) => return fail(&e.to_string()),
    };
    if let DatastoreSpec::Sqlite(path) = &spec {
        if cli.command.needs_existing_store() && !path.exists() {
            return fail(&format!(
                "no IPAM database at {}: nothing has been stored there yet (the plugin creates \
                 it on its first ADD, `ipamctl pool create` too); name another with --datastore",
                path.display()
            ));
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let op = Run {
        cli: &cli,
        gc_state: spec.sibling(".gc-state.json"),
    };
    match runtime.block_on(with_store(&spec, op)) {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(e)) => fail(&e.to_string()),
        Err(e) => fail(&format!("cannot open datastore {spec}: {e}")),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("ipamctl: error: {msg}");
    ExitCode::from(EXIT_ERROR)
}
