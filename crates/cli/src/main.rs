//! `raftkv`: the one binary (CONTRACT §1). Parses the command line, runs the
//! command, and turns its outcome into an exit code and a one-line error:
//! 0 success, 1 key not found, 2 usage error, 3 any other error.

mod admin_cmd;
mod args;
mod bench;
mod failure;
mod kv_cmd;
mod output;
mod server_cmd;

use clap::Parser as _;
use raftkv_client::{Client, ClientOptions};
use std::process::ExitCode;

use crate::args::{Cli, Command, GlobalArgs};
use crate::failure::Failure;

/// Client options from the global flags (`--timeout`).
pub fn client_options(global: &GlobalArgs) -> Result<ClientOptions, Failure> {
    let timeout = raftkv_server::units::parse_duration(&global.timeout)
        .map_err(|e| Failure::Usage(format!("--timeout: {e}")))?;
    Ok(ClientOptions {
        timeout,
        ..Default::default()
    })
}

/// A client for `endpoints` with the global flags' options.
pub fn client_for(global: &GlobalArgs, endpoints: &[String]) -> Result<Client, Failure> {
    Ok(Client::with_options(endpoints, client_options(global)?)?)
}

fn client(global: &GlobalArgs) -> Result<Client, Failure> {
    client_for(global, &global.endpoints)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let global = cli.global;
    match cli.command {
        Command::Server(args) => server_cmd::server(*args).await,
        Command::Playground(args) => server_cmd::playground(args).await,
        Command::Put(args) => kv_cmd::put(&client(&global)?, args).await,
        Command::Get(args) => kv_cmd::get(&client(&global)?, args, global.json).await,
        Command::Delete(args) => kv_cmd::delete(&client(&global)?, args).await,
        Command::Scan(args) => kv_cmd::scan(&client(&global)?, args, global.json).await,
        Command::Status(args) => admin_cmd::status(&global, args).await,
        Command::Cluster(command) => {
            admin_cmd::cluster(&client(&global)?, command, global.json).await
        }
        Command::Debug(command) => admin_cmd::debug(&global, command).await,
        Command::Bench(args) => bench::run(&global, args).await,
    }
}

/// glibc gives every thread that allocates its own 64 MiB malloc arena and
/// seldom returns freed memory in them to the system; with short-lived
/// threads (snapshot writers, blocking tasks) a server's RSS grew to ~1 GB
/// of mostly free memory in a one-hour soak. Two arenas keep that bounded.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}
