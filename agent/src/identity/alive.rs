//! What the identity reads from the registry without a key of its own:
//! whether another identity's node is alive, and the farm's owner.
//!
//! Read-only. On the embedded registry, its public GET endpoints (the
//! farm's nodes, each node's twin, its uptime reports); on TFChain, the
//! block bodies of the last hour ([`crate::tfchain::uptime`]: the runtime
//! keeps no last uptime). A node is alive when it reported uptime within
//! [`ALIVE_WINDOW`]. Limits: on the embedded registry only the node's own
//! farm is searched; a registry that cannot be read means "cannot tell",
//! and the caller refuses to adopt.

use std::time::Duration;

use crate::boot::{BootParams, ChainBackend};
use crate::registry::client::RegistryReader;

/// A node that reported uptime this recently is alive.
pub const ALIVE_WINDOW: Duration = Duration::from_secs(3600);

/// Why the registry could not tell.
#[derive(Debug, thiserror::Error)]
pub enum AliveError {
    #[error("no registry to ask: the boot parameters name no farm or no registry URL")]
    NoRegistry,
    #[error(transparent)]
    Tfchain(#[from] crate::tfchain::client::TfchainError),
    #[error("the registry has no farm {0}")]
    NoFarm(u32),
    #[error("the registry URL {0} is not http://host:port")]
    BadUrl(String),
    #[error("cannot ask the registry: {0}")]
    Registry(#[from] grove_daemon::client::ClientError),
}

/// The registry's URL and the node's farm, from the boot parameters.
fn registry(params: &BootParams) -> Result<(String, u32), AliveError> {
    let url = params
        .chain
        .url
        .clone()
        .or_else(|| params.chain.run_mode.map(|m| m.chain_url().to_owned()));
    match (url, params.farm_id) {
        (Some(url), Some(farm)) => Ok((url, farm)),
        _ => Err(AliveError::NoRegistry),
    }
}

/// The account that owns the node's farm, read from the registry: for a
/// node that has no identity yet (its chain task has not started), to
/// check the farmer's signature on its identity choice.
pub async fn farm_owner(params: &BootParams) -> Result<String, AliveError> {
    let (url, farm) = registry(params)?;
    if params.chain.backend == ChainBackend::Tfchain {
        return crate::tfchain::uptime::farm_owner(&url, farm)
            .await?
            .ok_or(AliveError::NoFarm(farm));
    }
    let client = RegistryReader::new(&url).ok_or_else(|| AliveError::BadUrl(url.clone()))?;
    let farm_record = client.farm(farm).await?.ok_or(AliveError::NoFarm(farm))?;
    Ok(client.twin(farm_record.twin_id).await?.account)
}

/// The unix second of the last uptime report of the node whose account is
/// `account`, in this node's farm; `None` if it never reported (or is not
/// registered there).
pub async fn last_uptime(params: &BootParams, account: &str) -> Result<Option<u64>, AliveError> {
    let (url, farm) = registry(params)?;
    if params.chain.backend == ChainBackend::Tfchain {
        return Ok(crate::tfchain::uptime::last_uptime(&url, account, ALIVE_WINDOW).await?);
    }
    let client = RegistryReader::new(&url).ok_or_else(|| AliveError::BadUrl(url.clone()))?;
    for node in client.nodes(farm).await? {
        let twin = client.twin(node.registration.twin_id).await?;
        if twin.account == account {
            let reports = client.uptime(node.id).await?;
            return Ok(reports.iter().map(|r| r.timestamp).max());
        }
    }
    Ok(None)
}

/// Whether a last report at `last` (unix seconds) is within the window of
/// `now`.
pub fn alive(last: Option<u64>, now: u64) -> bool {
    last.is_some_and(|t| now.saturating_sub(t) < ALIVE_WINDOW.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_only_within_the_hour() {
        let now = 1_000_000;
        assert!(!alive(None, now));
        assert!(alive(Some(now - 10), now));
        assert!(alive(Some(now - 3599), now));
        assert!(!alive(Some(now - 3600), now));
        assert!(alive(Some(now + 5), now), "a clock a little ahead");
    }
}
