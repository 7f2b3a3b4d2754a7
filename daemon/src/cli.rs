//! The shape every daemon binary shares: flags, config, runtime, exit code.
//!
//! A daemon's `main` parses its flags, then hands its library's `run` to
//! [`run`], which sets up logging, arranges to die with its supervisor
//! ([`crate::parent`]), loads the strict config, builds the tokio
//! runtime, trips shutdown on SIGTERM, bounds the drain by [`GRACE`] and maps
//! the outcome to an exit code: 64 for a refused config, 1 for any failure.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::de::DeserializeOwned;

use crate::EXIT_BAD_CONFIG;
use crate::shutdown::{GRACE, Shutdown};

/// Flags every daemon takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonArgs {
    /// TOML config file; unknown keys are refused.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log filter (tracing `EnvFilter` syntax), overriding `GROVE_LOG`.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

/// A daemon's whole command line: the flags every daemon takes, then its
/// own `F`.
#[derive(Debug, clap::Parser)]
pub struct Cli<F: clap::Args> {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub flags: F,
}

impl<F: clap::Args> Cli<F> {
    /// The command line of daemon `name`, described by `about` in `--help`.
    pub fn command(name: &'static str, about: &'static str) -> clap::Command {
        <Self as clap::CommandFactory>::command()
            .name(name)
            .about(about)
            .version(env!("CARGO_PKG_VERSION"))
    }

    /// Parses `args` (without the program name) as daemon `name`'s command
    /// line: how a test checks what a built command line says. See
    /// [`Cli::flags_of`] for the daemon's own flags alone.
    pub fn try_parse_args<I>(name: &'static str, args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator,
        I::Item: Into<std::ffi::OsString> + Clone,
    {
        let argv =
            std::iter::once(std::ffi::OsString::from(name)).chain(args.into_iter().map(Into::into));
        let matches = Self::command(name, "").try_get_matches_from(argv)?;
        <Self as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// The daemon's own flags that `args` give daemon `name`.
    pub fn flags_of<I>(name: &'static str, args: I) -> Result<F, clap::Error>
    where
        I: IntoIterator,
        I::Item: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_args(name, args).map(|cli| cli.flags)
    }
}

/// A daemon binary's whole `main`: parses its command line, then runs
/// `body` with its own flags through [`run`].
pub fn main<F, C, E, B, Fut>(name: &'static str, about: &'static str, body: B) -> ExitCode
where
    F: clap::Args,
    C: DeserializeOwned + Default,
    E: Failure,
    B: FnOnce(F, C, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let matches = Cli::<F>::command(name, about).get_matches();
    let cli = match <Cli<F> as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let flags = cli.flags;
    run(name, &cli.daemon, move |config, shutdown| {
        body(flags, config, shutdown)
    })
}

/// An error a daemon's `run` can end with.
pub trait Failure: std::error::Error {
    /// True when the error is the operator's configuration, not the host.
    fn is_config(&self) -> bool {
        false
    }
}

/// Runs a daemon body to completion and maps its outcome to an exit code;
/// once shutdown trips, the body has [`GRACE`] to drain.
pub fn run<C, E, F, Fut>(name: &str, args: &DaemonArgs, body: F) -> ExitCode
where
    C: DeserializeOwned + Default,
    E: Failure,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    run_with_grace(name, args, GRACE, body)
}

/// [`run`], for a body whose drain takes longer than [`GRACE`] by design
/// (the agent stops the other daemons, one after another, each within its
/// own grace): it has `grace` to drain.
pub fn run_with_grace<C, E, F, Fut>(
    name: &str,
    args: &DaemonArgs,
    grace: std::time::Duration,
    body: F,
) -> ExitCode
where
    C: DeserializeOwned + Default,
    E: Failure,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    crate::log::init(args.log.as_deref());
    if let Err(e) = crate::parent::die_with_supervisor() {
        tracing::error!(daemon = name, error = %e, "not starting");
        return ExitCode::FAILURE;
    }
    let config: C = match crate::config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(daemon = name, error = %e, "refusing configuration");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name(name)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(daemon = name, error = %e, "cannot build the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = Shutdown::new();
        if let Err(e) = shutdown.on_signals() {
            tracing::error!(daemon = name, error = %e, "cannot listen for signals");
            return Err(None);
        }
        let body = body(config, shutdown.clone());
        tokio::pin!(body);
        tokio::select! {
            result = &mut body => result.map_err(Some),
            () = async { shutdown.wait().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(daemon = name, ?grace, "did not drain in time, exiting");
                Ok(())
            }
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match outcome {
        Ok(()) => {
            tracing::info!(daemon = name, "stopped");
            ExitCode::SUCCESS
        }
        Err(Some(e)) if e.is_config() => {
            tracing::error!(daemon = name, error = %e, "refusing configuration");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(Some(e)) => {
            tracing::error!(daemon = name, error = %e, "failed");
            ExitCode::FAILURE
        }
        Err(None) => ExitCode::FAILURE,
    }
}
