//! `ipamctl`: parse the command line, open the datastore, run, map the outcome to an exit
//! status (0 success or clean check, 1 findings or a refused release, 2 errors).

use std::process::ExitCode;

use clap::Parser;
use ipam_core::Datastore;
use ipam_datastore::{DatastoreSpec, StoreOp, with_store};
use ipamctl::{self as ctl, Cli, EXIT_ERROR};

/// The parsed command, run on whichever store the spec opens.
struct Run<'a> {
    cli: &'a Cli,
    files: ctl::StoreFiles,
}

impl StoreOp for Run<'_> {
    type Output = ctl::Result<u8>;

    async fn run<D: Datastore + 'static>(self, store: D) -> Self::Output {
        let mut stdout = std::io::stdout().lock();
        ctl::run(self.cli, store, &mut stdout, self.files).await
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = run_without_store(&cli) {
        return code;
    }
    // The flag also reads IPAM_DATASTORE (clap's `env`), so resolve needs no second look.
    let spec = match DatastoreSpec::resolve_from(cli.datastore.as_deref(), None) {
        Ok(spec) => cli.with_etcd_flags(spec),
        Err(e) => return fail(&ctl::describe(&e)),
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
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let op = Run {
        cli: &cli,
        files: ctl::StoreFiles {
            gc_state: spec.sibling(".gc-state.json"),
            plugin_stats: Some(spec.node_file(".stats")),
        },
    };
    match runtime.block_on(with_store(&spec, op)) {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(e)) => fail(&ctl::describe(&e)),
        Err(e) => fail(&format!(
            "cannot open datastore {spec}: {}",
            ctl::describe(&e)
        )),
    }
}

/// The commands that need no datastore, run without opening (or creating) one.
fn run_without_store(cli: &Cli) -> Option<ExitCode> {
    let outcome = match &cli.command {
        ctl::Command::Crds => ctl::crds::run(&mut std::io::stdout().lock()),
        ctl::Command::InstallCni(args) => {
            let runtime = match runtime() {
                Ok(rt) => rt,
                Err(code) => return Some(code),
            };
            let env = |name: &str| std::env::var(name).ok();
            let mut stdout = std::io::stdout().lock();
            runtime.block_on(ctl::install::run(args, &env, &mut stdout))
        }
        _ => return None,
    };
    Some(match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&ctl::describe(&e)),
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&format!("cannot start the runtime: {e}")))
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("ipamctl: error: {msg}");
    ExitCode::from(EXIT_ERROR)
}
