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

/// An error a daemon's `run` can end with.
pub trait Failure: std::error::Error {
    /// True when the error is the operator's configuration, not the host.
    fn is_config(&self) -> bool {
        false
    }
}

/// Runs a daemon body to completion and maps its outcome to an exit code.
pub fn run<C, E, F, Fut>(name: &str, args: &DaemonArgs, body: F) -> ExitCode
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
            () = async { shutdown.wait().await; tokio::time::sleep(GRACE).await } => {
                tracing::warn!(daemon = name, grace = ?GRACE, "did not drain in time, exiting");
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
