//! Reads about other nodes that need no key: the farm's owner, and whether
//! an account's node reported uptime lately.
//!
//! TFChain keeps no last uptime: `reportUptimeV2` checks its timestamp hint
//! and only emits `NodeUptimeReported(node, now, uptime)`. Events are state
//! (`System.Events`), which a non-archive node prunes after 256 blocks (under
//! half an hour), so [`last_uptime`] reads block bodies instead, which every
//! node keeps: it walks back from the finalized head, takes each block's
//! time from its `timestamp.set` inherent, and looks for a
//! `tfgridModule.reportUptime`/`reportUptimeV2` signed by the account.
//! Limits: an included report counts even if the runtime refused it (its
//! key is in use all the same); an hour is about 600 blocks on a live
//! chain, read [`BATCH`] at a time.

use std::time::Duration;

use subxt::config::{Header as _, RpcConfigFor};
use subxt::ext::codec::{Compact, Decode as _};
use subxt::rpcs::methods::legacy::{LegacyRpcMethods, NumberOrHex};
use subxt::{OnlineClient, SubstrateConfig};

use super::client::{Tfchain, TfchainError};

/// Blocks read at once.
pub const BATCH: u64 = 16;
/// How long the connection may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);
/// How long the whole walk may take.
const WALK_DEADLINE: Duration = Duration::from_secs(120);

type Methods = LegacyRpcMethods<RpcConfigFor<SubstrateConfig>>;

fn read_error(item: &'static str) -> impl Fn(String) -> TfchainError {
    move |message| TfchainError::Read { item, message }
}

/// The account that owns farm `farm`, or `None` without such a farm.
pub async fn farm_owner(url: &str, farm: u32) -> Result<Option<String>, TfchainError> {
    // A read signs nothing: any key will do, and none is kept.
    let key = ed25519_dalek::SigningKey::from_bytes(&[0; 32]);
    let chain = Tfchain::connect_within(url, key, CONNECT_DEADLINE).await?;
    chain.farm_owner(farm).await
}

/// The chain time (unix seconds) of the newest block, within `window` of
/// the finalized head, that holds an uptime report signed by `account`;
/// `None` if there is none (or `account` is not an account).
pub async fn last_uptime(
    url: &str,
    account: &str,
    window: Duration,
) -> Result<Option<u64>, TfchainError> {
    let Some(key) = crate::auth::account_key(account) else {
        return Ok(None);
    };
    let key = key.to_bytes();
    let (methods, client) = tokio::time::timeout(CONNECT_DEADLINE, connect(url))
        .await
        .unwrap_or_else(|_| {
            Err(TfchainError::Connect {
                url: url.to_owned(),
                message: format!("no answer within {} s", CONNECT_DEADLINE.as_secs()),
            })
        })?;
    tokio::time::timeout(WALK_DEADLINE, walk(&methods, &client, &key, window))
        .await
        .unwrap_or_else(|_| {
            Err(TfchainError::Disconnected(format!(
                "the blocks of the last {} s were not read within {} s",
                window.as_secs(),
                WALK_DEADLINE.as_secs()
            )))
        })
}

async fn connect(url: &str) -> Result<(Methods, OnlineClient<SubstrateConfig>), TfchainError> {
    let (rpc, client) = super::client::connect_legacy(url).await?;
    Ok((Methods::new(rpc), client))
}

/// What one block says: its time, and whether it holds the account's
/// uptime report.
struct BlockFacts {
    number: u64,
    time: u64,
    reported: bool,
}

async fn walk(
    methods: &Methods,
    client: &OnlineClient<SubstrateConfig>,
    key: &[u8; 32],
    window: Duration,
) -> Result<Option<u64>, TfchainError> {
    let at = client
        .at_current_block()
        .await
        .map_err(|e| TfchainError::Disconnected(e.to_string()))?;
    let head = methods
        .chain_get_finalized_head()
        .await
        .map_err(|e| TfchainError::Disconnected(e.to_string()))?;
    let top = methods
        .chain_get_header(Some(head))
        .await
        .map_err(|e| TfchainError::Disconnected(e.to_string()))?
        .ok_or_else(|| read_error("header")("no header for the finalized head".to_owned()))?
        .number();
    let mut newest: Option<u64> = None;
    let mut high = top;
    loop {
        let low = high.saturating_sub(BATCH - 1).max(1);
        let reads = (low..=high)
            .rev()
            .map(|number| facts(methods, &at, number, key));
        for block in subxt::ext::futures::future::try_join_all(reads).await? {
            let now = *newest.get_or_insert(block.time);
            if now.saturating_sub(block.time) >= window.as_secs() {
                return Ok(None);
            }
            if block.reported {
                tracing::debug!(block = block.number, "an uptime report of the account");
                return Ok(Some(block.time));
            }
        }
        if low <= 1 {
            return Ok(None);
        }
        high = low - 1;
    }
}

/// Reads block `number`'s body and decodes it with the metadata of `at`.
async fn facts(
    methods: &Methods,
    at: &subxt::client::OnlineClientAtBlock<SubstrateConfig>,
    number: u64,
    key: &[u8; 32],
) -> Result<BlockFacts, TfchainError> {
    let disconnected = |e: subxt::rpcs::Error| TfchainError::Disconnected(e.to_string());
    let hash = methods
        .chain_get_block_hash(Some(NumberOrHex::Number(number)))
        .await
        .map_err(disconnected)?
        .ok_or_else(|| read_error("block")(format!("no block {number}")))?;
    let body = methods
        .chain_get_block(Some(hash))
        .await
        .map_err(disconnected)?
        .ok_or_else(|| read_error("block")(format!("no body for block {number}")))?;
    let bytes: Vec<Vec<u8>> = body.block.extrinsics.into_iter().map(|b| b.0).collect();
    let extrinsics = at.extrinsics().from_bytes(bytes).await;
    let mut time = None;
    let mut reported = false;
    for ext in extrinsics.iter() {
        let ext = ext.map_err(|e| read_error("extrinsic")(format!("block {number}: {e}")))?;
        let call = (
            plain(ext.pallet_name()).as_str(),
            plain(ext.call_name()).as_str(),
        ) == ("timestamp", "set");
        if call {
            let mut field = ext.call_data_field_bytes();
            let ms = Compact::<u64>::decode(&mut field)
                .map_err(|e| read_error("timestamp")(format!("block {number}: {e}")))?
                .0;
            time = Some(ms / 1000);
        } else if plain(ext.pallet_name()) == "tfgridmodule"
            && matches!(
                plain(ext.call_name()).as_str(),
                "reportuptime" | "reportuptimev2"
            )
            && ext.address_bytes().is_some_and(|a| signed_by(a, key))
        {
            reported = true;
        }
    }
    let time = time
        .ok_or_else(|| read_error("timestamp")(format!("block {number} has no timestamp.set")))?;
    Ok(BlockFacts {
        number,
        time,
        reported,
    })
}

/// A pallet or call name without case or underscores.
fn plain(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether an extrinsic's address (`MultiAddress::Id`, or a bare account)
/// is `key`.
fn signed_by(address: &[u8], key: &[u8; 32]) -> bool {
    match address {
        [0, rest @ ..] if rest.len() == 32 => rest == key,
        bare if bare.len() == 32 => bare == key,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_compared_plainly() {
        assert_eq!(plain("report_uptime_v2"), "reportuptimev2");
        assert_eq!(plain("TfgridModule"), "tfgridmodule");
        let key = [7u8; 32];
        let mut id = vec![0u8];
        id.extend_from_slice(&key);
        assert!(signed_by(&id, &key));
        assert!(signed_by(&key, &key));
        assert!(!signed_by(&id, &[8; 32]));
        id[0] = 1;
        assert!(!signed_by(&id, &key), "not MultiAddress::Id");
        assert!(!signed_by(&[], &key));
    }
}
