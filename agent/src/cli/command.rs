//! The `agent` program's command line: the daemon itself, the embedded
//! registry, and the tools for operators, farmers and tenants.

#![allow(
    clippy::print_stdout,
    reason = "the CLI subcommands print their answer"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Grove's node agent: boot parameters, supervision, operator API.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    daemon: grove_daemon::cli::DaemonArgs,
    /// The kernel command line to read boot parameters from.
    #[arg(long, value_name = "PATH", default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum SignAction {
    /// Make a new farmer key and print its account.
    NewKey {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Print the account of a farmer key.
    Account {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Print the headers of a request signed for one node, as curl
    /// arguments.
    Request {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The node's account, as `GET /v1/node` shows it: no other node
        /// accepts the request.
        #[arg(long, value_name = "ACCOUNT")]
        node: String,
        #[arg(long, default_value = "POST")]
        method: String,
        #[arg(long, value_name = "PATH")]
        path: String,
        #[arg(long, default_value = "")]
        body: String,
        /// The body is this file (an upgrade image): the headers then
        /// carry its sha256 too, so the node checks the signature before
        /// it reads the body.
        #[arg(long, value_name = "FILE", conflicts_with = "body")]
        body_file: Option<PathBuf>,
    },
    /// Answer a node that waits for its identity: print the headers and
    /// the body of its signed `POST /v1/identity/choice`, as curl
    /// arguments.
    Identity {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The waiting node, as `GET /v1/node` shows it under
        /// `waiting.target` (`machine:ID`).
        #[arg(long, value_name = "TARGET")]
        node: String,
        /// Adopt the identity of this account, found on a pool attached to
        /// the node.
        #[arg(
            long,
            value_name = "ACCOUNT",
            conflicts_with = "fresh",
            required_unless_present = "fresh"
        )]
        adopt: Option<String>,
        /// Start as a new node, on the node's blank disks only.
        #[arg(long)]
        fresh: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sign requests that change a node, as the farmer.
    Sign {
        #[command(subcommand)]
        action: SignAction,
    },
    /// Run the embedded registry: TFChain's data model on one machine, for
    /// a farm's first steps, the sandbox and tests.
    Registry {
        /// Address to serve on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8800")]
        listen: std::net::SocketAddr,
        /// The state file.
        #[arg(long, value_name = "PATH")]
        state: PathBuf,
        /// Create this farm, owned by --farmer, if it does not exist.
        /// Repeatable; farms get ids 1, 2, ... in order.
        #[arg(long = "farm", value_name = "NAME")]
        farms: Vec<String>,
        /// The SS58 account that owns the farms created with --farm, and
        /// may create more with a signed request. Repeatable; the first
        /// owns the --farm farms.
        #[arg(long = "farmer", value_name = "ACCOUNT")]
        farmers: Vec<String>,
    },
    /// Show a node's status as a table, from its operator API.
    Status {
        /// The node's operator API, like http://10.0.0.5:8080.
        #[arg(long, value_name = "URL")]
        node: String,
    },
    /// A tenant's deployments on a node, with a twin key.
    Tenant {
        /// The twin key (an ed25519 seed made by `agent sign new-key`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The registry: http://HOST:PORT (embedded) or ws(s)://HOST:PORT (TFChain).
        #[arg(long, value_name = "URL")]
        registry: String,
        /// The node's operator API, http://HOST:PORT.
        #[arg(long, value_name = "URL")]
        node: String,
        /// How long to follow a deployment, in seconds.
        #[arg(long, default_value_t = crate::cli::tenant::WAIT.as_secs())]
        wait_secs: u64,
        #[command(subcommand)]
        action: TenantAction,
    },
}

#[derive(Debug, Subcommand)]
enum TenantAction {
    /// Creates the contract, signs and sends the deployment in FILE, and
    /// follows it until every workload is ok or one fails.
    Deploy { file: PathBuf },
    /// Sends a new version of a deployment and follows it.
    Update {
        file: PathBuf,
        /// The contract, when the file does not name it.
        #[arg(long)]
        contract: Option<u64>,
    },
    /// One deployment, as the node holds it.
    Get { contract: u64 },
    /// The twin's deployments on the node.
    List,
    /// Cancels the contract and follows the node until it is removed.
    Cancel { contract: u64 },
}

/// The `agent` program: the daemon, or one of its subcommands.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Status { node }) => status(&node),
        Some(Command::Tenant {
            key,
            registry,
            node,
            wait_secs,
            action,
        }) => tenant(&key, &registry, &node, wait_secs, action),
        Some(Command::Sign { action }) => sign(action),
        Some(Command::Registry {
            listen,
            state,
            farms,
            farmers,
        }) => grove_daemon::cli::run(
            "registry",
            &cli.daemon,
            move |(): (), shutdown| async move {
                crate::registry::embedded::serve(&state, listen, &farms, &farmers, shutdown).await
            },
        ),
        None => {
            let options = crate::Options {
                cmdline: cli.cmdline,
                ..crate::Options::default()
            };
            grove_daemon::cli::run_with_grace(
                crate::NAME,
                &cli.daemon,
                crate::DRAIN,
                move |config, shutdown| crate::run(config, options, shutdown),
            )
        }
    }
}

fn status(node: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent status: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::cli::status::fetch(node)) {
        Ok(view) => {
            print!("{}", crate::cli::status::render(&view));
            ExitCode::SUCCESS
        }
        Err(e @ crate::cli::status::StatusError::BadUrl(_)) => {
            eprintln!("agent status: {e}");
            ExitCode::from(64)
        }
        Err(e) => {
            eprintln!("agent status: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sign(action: SignAction) -> ExitCode {
    use crate::cli::sign;
    let result = match action {
        SignAction::NewKey { key } => sign::new_key(&key).map(|account| println!("{account}")),
        SignAction::Account { key } => sign::account(&key).map(|account| println!("{account}")),
        SignAction::Request {
            key,
            node,
            method,
            path,
            body,
            body_file,
        } => sign::headers(
            &key,
            &node,
            &method,
            &path,
            match &body_file {
                Some(file) => sign::Body::File(file),
                None => sign::Body::Bytes(body.as_bytes()),
            },
        )
        .map(|headers| {
            for (name, value) in headers {
                println!("-H '{name}: {value}'");
            }
        }),
        SignAction::Identity {
            key,
            node,
            adopt,
            fresh: _,
        } => sign::identity_choice(&key, &node, adopt.as_deref()).map(|(headers, body)| {
            for (name, value) in headers {
                println!("-H '{name}: {value}'");
            }
            println!("-H 'content-type: application/json'");
            println!("-d '{body}'");
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent sign: {e}");
            ExitCode::from(64)
        }
    }
}

fn tenant(
    key: &std::path::Path,
    registry: &str,
    node: &str,
    wait_secs: u64,
    action: TenantAction,
) -> ExitCode {
    use crate::cli::tenant::{Session, TenantCliError, progress};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent tenant: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let wait = std::time::Duration::from_secs(wait_secs);
    let result: Result<(), TenantCliError> = runtime.block_on(async {
        let make_twin = matches!(action, TenantAction::Deploy { .. });
        let session = Session::open(key, registry, node, make_twin).await?;
        match action {
            TenantAction::Deploy { file } => {
                let id = session.deploy(&file).await?;
                if let Err(e) = session.follow(id, wait).await {
                    if matches!(e, TenantCliError::Failed(_)) {
                        session.abandon(id).await;
                    }
                    return Err(e);
                }
                println!("contract {id}: every workload is ok");
            }
            TenantAction::Update { file, contract } => {
                let id = session.update(&file, contract).await?;
                session.follow(id, wait).await?;
                println!("contract {id}: every workload is ok");
            }
            TenantAction::Get { contract } => {
                let view = session.node.deployment(contract).await?;
                let text = serde_json::to_string_pretty(&view).unwrap_or_default();
                println!("{text}");
            }
            TenantAction::List => {
                for view in session.node.deployments().await? {
                    println!("{}", progress(&view));
                }
            }
            TenantAction::Cancel { contract } => session.cancel(contract, wait).await?,
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            e @ (TenantCliError::Key(_) | TenantCliError::Read { .. } | TenantCliError::NodeUrl(_)),
        ) => {
            eprintln!("agent tenant: {e}");
            ExitCode::from(64)
        }
        Err(e) => {
            eprintln!("agent tenant: {e}");
            ExitCode::FAILURE
        }
    }
}
