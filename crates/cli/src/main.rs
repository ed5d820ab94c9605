//! `raftkv`: the one binary (docs/REFERENCE.md §1). Parses the command line, runs the
//! command, and turns its outcome into an exit code and a one-line error:
//! 0 success, 1 key not found, 2 usage error, 3 any other error.

/// `println!` that returns a [`failure::Failure`] instead of panicking when
/// standard output is closed (`raftkv status | head -1`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::output::stdout_failed)
    }};
}

/// `eprintln!` that ignores a closed standard error instead of panicking
/// (`raftkv bench 2>&1 | head`): progress and notes are not worth a failure.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod admin_cmd;
mod args;
mod auth_cmd;
mod bench;
mod etcd_cmd;
mod failure;
mod kv_cmd;
mod output;
mod server_cmd;
mod snapshot_cmd;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use raftkv_client::{Client, ClientOptions};
use std::process::ExitCode;

use crate::args::{Cli, ClientArgs, Command, TopClientArgs};
use crate::failure::Failure;

/// Where a client command goes when no endpoint is given.
const DEFAULT_ENDPOINT: &str = "127.0.0.1:7379";
/// A client command's deadline when no `--timeout` is given.
const DEFAULT_TIMEOUT: &str = "5s";

/// The client options of one command, resolved: given after the command,
/// else before it, else `RAFTKV_ENDPOINTS`, else the defaults.
pub struct ClientFlags {
    pub endpoints: Vec<String>,
    pub timeout: Duration,
    pub json: bool,
    /// TLS to the endpoints (--cacert given).
    pub tls: Option<std::sync::Arc<raftkv_net::tls::ClientTls>>,
    /// The user to log in as (--user).
    pub credentials: Option<raftkv_client::Credentials>,
}

/// The TLS of `--cacert`, `--cert`, `--key` (after the command, else
/// before it, else RAFTKV_CACERT/_CERT/_KEY); `None` for plaintext.
fn client_tls(
    top: &TopClientArgs,
    sub: &ClientArgs,
    https: bool,
) -> Result<Option<std::sync::Arc<raftkv_net::tls::ClientTls>>, Failure> {
    let pick = |sub: &Option<PathBuf>, top: &Option<PathBuf>, env: &str| {
        sub.clone().or_else(|| top.clone()).or_else(|| {
            std::env::var_os(env)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    };
    let cacert = pick(&sub.cacert, &top.cacert, "RAFTKV_CACERT");
    let cert = pick(&sub.cert, &top.cert, "RAFTKV_CERT");
    let key = pick(&sub.key_file, &top.key_file, "RAFTKV_KEY");
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some(raftkv_net::tls::CertFiles { cert, key }),
        (None, None) => None,
        _ => return Err(Failure::Usage("--cert and --key go together".into())),
    };
    let Some(trusted_ca) = cacert else {
        if identity.is_some() {
            return Err(Failure::Usage(
                "--cert/--key are for TLS: give --cacert (the CA that signed the servers' \
                 certificates) too"
                    .into(),
            ));
        }
        if https {
            return Err(Failure::Usage(
                "https:// endpoints need --cacert (the CA that signed the servers' certificates)"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let files = raftkv_net::tls::ClientTlsFiles {
        trusted_ca,
        identity,
        peer: false,
    };
    raftkv_net::tls::ClientTls::new(&files)
        .map(Some)
        .map_err(|e| Failure::Usage(e.to_string()))
}

/// The user to log in as: `--user` (else RAFTKV_USER), NAME or
/// NAME:PASSWORD; a password not given there comes from RAFTKV_PASSWORD, or
/// is asked for on the terminal.
fn credentials(user: Option<String>) -> Result<Option<raftkv_client::Credentials>, Failure> {
    let Some(given) = user.or_else(|| std::env::var("RAFTKV_USER").ok().filter(|u| !u.is_empty()))
    else {
        return Ok(None);
    };
    let (user, password) = match given.split_once(':') {
        Some((user, password)) => (user.to_string(), password.to_string()),
        None if given.is_empty() => {
            return Err(Failure::Usage("--user: the user name is empty".into()))
        }
        None => {
            let password = match std::env::var("RAFTKV_PASSWORD") {
                Ok(password) => password,
                Err(_) => {
                    rpassword::prompt_password(format!("Password for {given}: ")).map_err(|e| {
                        Failure::Usage(format!(
                            "--user {given}: no password given (NAME:PASSWORD, or \
                             RAFTKV_PASSWORD) and none could be asked for: {e}"
                        ))
                    })?
                }
            };
            (given, password)
        }
    };
    if user.is_empty() {
        return Err(Failure::Usage("--user: the user name is empty".into()));
    }
    Ok(Some(raftkv_client::Credentials { user, password }))
}

impl ClientFlags {
    fn resolve(top: &TopClientArgs, sub: &ClientArgs) -> Result<ClientFlags, Failure> {
        let given = sub.endpoints.clone().or_else(|| top.endpoints.clone());
        let endpoints = match given {
            Some(list) => list,
            None => match std::env::var("RAFTKV_ENDPOINTS") {
                Ok(list) if !list.trim().is_empty() => {
                    list.split(',').map(|e| e.trim().to_string()).collect()
                }
                _ => vec![DEFAULT_ENDPOINT.to_string()],
            },
        };
        let https = endpoints.iter().any(|e| e.trim().starts_with("https://"));
        let http = endpoints.iter().find(|e| e.trim().starts_with("http://"));
        // `a:1,` or a RAFTKV_ENDPOINTS ending in a comma: no empty endpoint.
        let endpoints = endpoints
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                raftkv_client::parse_endpoint(e).map_err(|error| match error {
                    raftkv_client::Error::InvalidArgument(m) => Failure::Usage(m),
                    other => Failure::Usage(other.to_string()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(Failure::Usage("--endpoints: no endpoint given".into()));
        }
        let timeout = sub
            .timeout
            .as_deref()
            .or(top.timeout.as_deref())
            .unwrap_or(DEFAULT_TIMEOUT);
        let timeout = raftkv_server::units::parse_duration(timeout)
            .map_err(|e| Failure::Usage(format!("--timeout: {e}")))?;
        if timeout.is_zero() {
            return Err(Failure::Usage("--timeout must be more than 0".into()));
        }
        let tls = client_tls(top, sub, https)?;
        if let (Some(http), Some(_)) = (http, &tls) {
            return Err(Failure::Usage(format!(
                "endpoint {http} is http:// (plaintext) but --cacert asks for TLS: use \
                 https:// (or HOST:PORT)"
            )));
        }
        let credentials = credentials(sub.user.clone().or_else(|| top.user.clone()))?;
        Ok(ClientFlags {
            endpoints,
            timeout,
            json: sub.json || top.json,
            tls,
            credentials,
        })
    }

    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            timeout: self.timeout,
            tls: self.tls.clone(),
            credentials: self.credentials.clone(),
            ..Default::default()
        }
    }

    /// What requests made outside a `Client` carry: the token of a login
    /// with --user (none without it).
    pub async fn token(&self) -> Result<raftkv_client::Token, Failure> {
        let client = self.client()?;
        client.ensure_login().await?;
        Ok(client.token())
    }

    /// A client for every endpoint given.
    pub fn client(&self) -> Result<Client, Failure> {
        self.client_for(&self.endpoints)
    }

    /// A client for `endpoints` with these options.
    pub fn client_for(&self, endpoints: &[String]) -> Result<Client, Failure> {
        Ok(Client::with_options(endpoints, self.options())?)
    }
}

async fn run(
    top: TopClientArgs,
    command: Command,
    flags: Option<ClientFlags>,
) -> Result<(), Failure> {
    let Some(flags) = flags else {
        if top.endpoints.is_some() || top.timeout.is_some() || top.json {
            return Err(Failure::Usage(
                "--endpoints, --timeout and --json are client options; `server` and \
                 `playground` do not take them"
                    .into(),
            ));
        }
        return match command {
            Command::Server(args) => server_cmd::server(*args).await,
            Command::Playground(args) => server_cmd::playground(args).await,
            _ => unreachable!("every client command has client options"),
        };
    };
    match command {
        Command::Server(_) | Command::Playground(_) => unreachable!("not client commands"),
        Command::Put(args) => kv_cmd::put(&flags, args).await,
        Command::Get(args) => kv_cmd::get(&flags, args).await,
        Command::Delete(args) => kv_cmd::delete(&flags, args).await,
        Command::Scan(args) => kv_cmd::scan(&flags, args).await,
        Command::Watch(args) => etcd_cmd::watch(&flags, args).await,
        Command::Compact(args) => etcd_cmd::compact(&flags, args).await,
        Command::Lease(args) => etcd_cmd::lease(&flags, args.command).await,
        Command::User(args) => auth_cmd::user(&flags, args.command).await,
        Command::Role(args) => auth_cmd::role(&flags, args.command).await,
        Command::Auth(args) => auth_cmd::auth(&flags, args.command).await,
        Command::Status(args) => admin_cmd::status(&flags, args).await,
        Command::Cluster(args) => admin_cmd::cluster(&flags, args.command).await,
        Command::Debug(args) => admin_cmd::debug(&flags, args.command).await,
        Command::Snapshot(args) => snapshot_cmd::snapshot(&flags, args.command).await,
        Command::Alarm(args) => etcd_cmd::alarm(&flags, args.command).await,
        Command::Bench(args) => bench::run(&flags, args).await,
    }
}

/// glibc gives every thread that allocates its own 64 MiB malloc arena and
/// seldom returns freed memory in them to the system; with short-lived
/// threads (snapshot writers, blocking tasks) a server's RSS grew to ~1 GB
/// of mostly free memory in a one-hour soak. Four arenas keep that bounded
/// while the node thread and the two request threads seldom share one (with
/// two, their arena locks cost about 10% more CPU per put once the history
/// window kept every overwritten value: BENCHMARKS.md), unless the operator
/// set glibc's own MALLOC_ARENA_MAX.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}

/// Parses the command line. A usage error under `--json` is one JSON object
/// on stderr like every other error; help and version print as usual.
fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            let wants_json = std::env::args_os().any(|a| a == "--json");
            // Asked for; a command without its subcommand is a usage error
            // (under --json, reported as one).
            let shown = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if !wants_json || shown {
                e.exit();
            }
            let text = e.render().to_string();
            // The error's own lines, without clap's usage and help hints.
            let message = text
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            let message = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                "a subcommand is missing (see --help)"
            } else {
                message.trim_start_matches("error: ")
            };
            Failure::Usage(message.to_string()).report(true);
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let flags = cli
        .command
        .client_args()
        .map(|sub| ClientFlags::resolve(&cli.client, sub))
        .transpose();
    let json = cli.client.json || cli.command.client_args().is_some_and(|c| c.json);
    let flags = match flags {
        Ok(flags) => flags,
        Err(failure) => {
            failure.report(json);
            return ExitCode::from(failure.exit_code());
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let failure = Failure::Other(format!("cannot start the async runtime: {e}"));
            failure.report(json);
            return ExitCode::from(failure.exit_code());
        }
    };
    match runtime.block_on(run(cli.client, cli.command, flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.report(json);
            ExitCode::from(failure.exit_code())
        }
    }
}
