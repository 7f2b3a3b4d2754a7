//! The agent's chain task against a real TFChain, as a node runs it: what
//! the agent's TFChain suite and the TFChain benchmark both stand on.
//!
//! The dev account Alice is the farmer (she makes a farm, funds nodes and
//! signs contracts); storaged's `/v1/capacity` (with an SSD size the caller
//! changes) and netd's `/v1/interfaces` are served on local sockets; a TCP
//! [`Proxy`] to the chain can be cut and restored; [`start`] runs the chain
//! task in this process. Needs the `tfchain` feature and a chain under
//! chopsticks (`dev_timeTravel`). Limits: nodes share Alice, so callers run
//! one at a time; the stand-ins answer only what the chain task asks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent::boot::{BootParams, ChainBackend, ChainParams};
use agent::chain::{Chain, ChainConfig, ChainStatus, MeshConfig, Sources};
use agent::identity::keys::Seed;
use agent::registry::model::{Interface, NodeRegistration, Resources};
use agent::tfchain::calls::Location;
use agent::tfchain::client::Tfchain;
use subxt::dynamic::Value;
use subxt::{OnlineClient, SubstrateConfig};

/// One TFT in the chain's units.
pub const TFT: u128 = 10_000_000;
/// One GiB.
pub const GIB: u64 = 1 << 30;

/// Why a step against the chain or the stand-ins failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what}: {message}")]
    Chain { what: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: not within {deadline:?}: {status:#?}")]
    Timeout {
        what: String,
        deadline: Duration,
        status: Box<ChainStatus>,
    },
}

fn chain_error<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> HarnessError {
    let what = what.into();
    move |e| HarnessError::Chain {
        what,
        message: e.to_string(),
    }
}

fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> HarnessError {
    move |source| HarnessError::Io { what, source }
}

/// The wall clock, in unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A client on the agent's own backend, through a throwaway key.
pub async fn client(url: &str) -> Result<OnlineClient<SubstrateConfig>, HarnessError> {
    let chain = Tfchain::connect(url, ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
        .await
        .map_err(chain_error(format!("connect to {url}")))?;
    Ok(chain.client().clone())
}

/// `pallet.call(fields)` signed by Alice, once finalized.
pub async fn alice_submit(
    client: &OnlineClient<SubstrateConfig>,
    pallet: &str,
    call: &str,
    fields: Vec<(&str, Value)>,
) -> Result<(), HarnessError> {
    let alice = subxt_signer::sr25519::dev::alice();
    let payload = subxt::dynamic::tx(
        pallet,
        call,
        subxt::ext::scale_value::Composite::named(
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)),
        ),
    );
    let what = format!("{pallet}.{call}");
    let at = client
        .at_current_block()
        .await
        .map_err(chain_error(what.clone()))?;
    at.tx()
        .sign_and_submit_then_watch_default(&payload, &alice)
        .await
        .map_err(chain_error(what.clone()))?
        .wait_for_finalized_success()
        .await
        .map_err(chain_error(what))?;
    Ok(())
}

/// The id `TfgridModule.item(key)` holds, if any (0 is none).
pub async fn grid_id(
    client: &OnlineClient<SubstrateConfig>,
    item: &str,
    key: Value,
) -> Result<Option<u32>, HarnessError> {
    let what = format!("TfgridModule.{item}");
    let at = client
        .at_current_block()
        .await
        .map_err(chain_error(what.clone()))?;
    let address = subxt::dynamic::storage::<Vec<Value>, Value>("TfgridModule", item);
    let value = at
        .storage()
        .try_fetch(address, vec![key])
        .await
        .map_err(chain_error(what.clone()))?;
    value
        .map(|v| v.decode_as::<u32>())
        .transpose()
        .map(|id| id.filter(|id| *id != 0))
        .map_err(chain_error(what))
}

/// A new farm `name` of Alice's (who accepts the terms and gets a twin the
/// first time).
pub async fn alice_farm(
    client: &OnlineClient<SubstrateConfig>,
    name: &str,
) -> Result<u32, HarnessError> {
    let alice = subxt_signer::sr25519::dev::alice()
        .public_key()
        .to_account_id();
    if grid_id(client, "TwinIdByAccountID", Value::from_bytes(alice.0))
        .await?
        .is_none()
    {
        alice_submit(
            client,
            "TfgridModule",
            "user_accept_tc",
            vec![
                (
                    "document_link",
                    Value::from_bytes(agent::tfchain::client::TC_LINK),
                ),
                (
                    "document_hash",
                    Value::from_bytes(agent::tfchain::client::TC_HASH),
                ),
            ],
        )
        .await?;
        alice_submit(
            client,
            "TfgridModule",
            "create_twin",
            vec![
                ("relay", Value::unnamed_variant("None", [])),
                ("pk", Value::unnamed_variant("None", [])),
            ],
        )
        .await?;
    }
    alice_submit(
        client,
        "TfgridModule",
        "create_farm",
        vec![
            ("name", Value::from_bytes(name)),
            ("public_ips", Value::unnamed_composite([])),
        ],
    )
    .await?;
    grid_id(client, "FarmIdByName", Value::from_bytes(name))
        .await?
        .ok_or_else(|| HarnessError::Chain {
            what: format!("create_farm {name}"),
            message: "the farm is not there".to_owned(),
        })
}

/// Alice sends the node of `seed` 10 TFT.
pub async fn fund(client: &OnlineClient<SubstrateConfig>, seed: &Seed) -> Result<(), HarnessError> {
    fund_account(client, seed.keys().verifying().to_bytes()).await
}

/// Alice sends the account of public key `public` 10 TFT.
pub async fn fund_account(
    client: &OnlineClient<SubstrateConfig>,
    public: [u8; 32],
) -> Result<(), HarnessError> {
    alice_submit(
        client,
        "Balances",
        "transfer_keep_alive",
        vec![
            (
                "dest",
                Value::unnamed_variant("Id", [Value::from_bytes(public)]),
            ),
            ("value", Value::u128(10 * TFT)),
        ],
    )
    .await
}

/// A node's registration in `farm_id` as twin `twin_id`: 1 TiB HDD, 512
/// GiB SSD, 8 cores, 16 GiB memory, one interface with `mac` and `ip`.
pub fn registration(
    farm_id: u32,
    twin_id: u32,
    serial_number: String,
    mac: &str,
    ip: &str,
) -> NodeRegistration {
    NodeRegistration {
        farm_id,
        twin_id,
        resources: Resources {
            hru: 1024 * GIB,
            sru: 512 * GIB,
            cru: 8,
            mru: 16 * GIB,
        },
        interfaces: vec![Interface {
            name: "br-grove".into(),
            mac: mac.into(),
            ips: vec![ip.into()],
        }],
        serial_number,
        virtualized: true,
        secure_boot: false,
    }
}

/// Where test nodes stand.
pub fn location() -> Location {
    Location {
        city: "Ghent".into(),
        country: "Belgium".into(),
        latitude: "51.0543".into(),
        longitude: "3.7174".into(),
    }
}

/// The node of `key`, funded by Alice, with a twin and registered as
/// `registration(farm_id, twin, ..)` says: its client and node id.
pub async fn registered_node(
    client: &OnlineClient<SubstrateConfig>,
    url: &str,
    key: ed25519_dalek::SigningKey,
    registration: impl FnOnce(u32) -> NodeRegistration,
) -> Result<(Tfchain, u32), HarnessError> {
    fund_account(client, key.verifying_key().to_bytes()).await?;
    let node = Tfchain::connect(url, key)
        .await
        .map_err(chain_error(format!("connect to {url} as the node")))?;
    let twin = node
        .ensure_twin(None)
        .await
        .map_err(chain_error("the node's twin"))?;
    let node_id = node
        .register(twin, &registration(twin), &location())
        .await
        .map_err(chain_error("createNode"))?;
    Ok((node, node_id))
}

/// Chain time, moved to `secs` (unix) for the next block.
pub async fn time_travel(url: &str, secs: u64) -> Result<(), HarnessError> {
    let what = format!("dev_timeTravel on {url}");
    let rpc = subxt::rpcs::RpcClient::from_insecure_url(url)
        .await
        .map_err(chain_error(what.clone()))?;
    let _: serde_json::Value = rpc
        .request("dev_timeTravel", subxt::rpcs::rpc_params![secs * 1000])
        .await
        .map_err(chain_error(what))?;
    Ok(())
}

/// storaged's `/v1/capacity` (and `/ready`) on one socket, with an SSD size
/// the caller changes: the chain task's source of SRU; and netd's
/// `/v1/interfaces` (none) on another.
#[derive(Debug)]
pub struct StandIns {
    pub ssd: Arc<AtomicU64>,
    pub storaged: PathBuf,
    pub netd: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for StandIns {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl StandIns {
    /// Serves both sockets in `dir`, with `ssd_bytes` of SSD.
    pub fn start(dir: &Path, ssd_bytes: u64) -> Result<StandIns, HarnessError> {
        let ssd = Arc::new(AtomicU64::new(ssd_bytes));
        let storaged = dir.join("storaged.sock");
        let netd = dir.join("netd.sock");
        let served = ssd.clone();
        let capacity = axum::Router::new()
            .route(
                "/ready",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"ready": true})) }),
            )
            .route(
                "/v1/capacity",
                axum::routing::get(move || {
                    let ssd = served.load(Ordering::SeqCst);
                    async move {
                        axum::Json(serde_json::json!({
                            "ssd": {"total_bytes": ssd, "reserved_bytes": 0, "used_bytes": 0, "free_bytes": ssd},
                            "hdd": {"total_bytes": 0, "reserved_bytes": 0, "used_bytes": 0, "free_bytes": 0},
                            "cache": {"mount_point": grove_daemon::CACHE_DIR, "pool": "grove-a", "kind": "ssd", "degraded": null},
                            "broken_pools": []
                        }))
                    }
                }),
            );
        let interfaces = axum::Router::new().route(
            "/v1/interfaces",
            axum::routing::get(|| async { axum::Json(serde_json::json!([])) }),
        );
        let mut tasks = Vec::new();
        for (path, app) in [(&storaged, capacity), (&netd, interfaces)] {
            let listener =
                tokio::net::UnixListener::bind(path).map_err(io_error("bind a stand-in socket"))?;
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        Ok(StandIns {
            ssd,
            storaged,
            netd,
            tasks,
        })
    }
}

/// A TCP proxy to the chain that can be cut (every connection dropped, new
/// ones refused) and restored.
#[derive(Debug)]
pub struct Proxy {
    pub url: String,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy on the host's loopback to the `ws://` URL `upstream`.
    pub async fn to(upstream: &str) -> Result<Proxy, HarnessError> {
        Proxy::on(std::net::Ipv4Addr::LOCALHOST, upstream).await
    }

    /// A proxy listening on `address` (a testbed farm's host address, for
    /// nodes in their namespaces) to the `ws://` URL `upstream`.
    pub async fn on(address: std::net::Ipv4Addr, upstream: &str) -> Result<Proxy, HarnessError> {
        let target = upstream
            .strip_prefix("ws://")
            .ok_or_else(|| HarnessError::Chain {
                what: format!("proxy to {upstream}"),
                message: "not a ws:// URL".to_owned(),
            })?
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind((address, 0))
            .await
            .map_err(io_error("bind the proxy"))?;
        let url = format!(
            "ws://{}",
            listener
                .local_addr()
                .map_err(io_error("the proxy's address"))?
        );
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (c, g, target) = (c.clone(), g.clone(), target.clone());
                tokio::spawn(async move {
                    let born = g.load(Ordering::SeqCst);
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let pipe = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut_off = async {
                        while !c.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = pipe => {}
                        () = cut_off => {}
                    }
                });
            }
        });
        Ok(Proxy {
            url,
            cut,
            generation,
            task,
        })
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The agent's chain task for one node, stopped on drop.
#[derive(Debug)]
pub struct Node {
    pub chain: Arc<Chain>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the chain task of [`start`] reads its node from.
#[derive(Debug, Clone, Copy)]
pub struct Daemons<'a> {
    pub storaged: &'a Path,
    pub netd: &'a Path,
}

impl<'a> From<&'a StandIns> for Daemons<'a> {
    fn from(stand_ins: &'a StandIns) -> Self {
        Daemons {
            storaged: &stand_ins.storaged,
            netd: &stand_ins.netd,
        }
    }
}

/// The boot parameters of a node in farm `farm_id` on the TFChain at `url`.
pub fn boot_params(url: &str, farm_id: u32) -> BootParams {
    BootParams {
        farm_id: Some(farm_id),
        chain: ChainParams {
            backend: ChainBackend::Tfchain,
            url: Some(url.to_owned()),
            run_mode: None,
        },
        ..BootParams::default()
    }
}

/// Runs the chain task of the node of `seed` in farm `farm_id` against the
/// TFChain at `url`, its queue in `dir`, an uptime report every
/// `interval_secs`.
pub fn start(
    url: &str,
    farm_id: u32,
    seed: &Seed,
    dir: &Path,
    daemons: Daemons<'_>,
    interval_secs: u64,
) -> Node {
    let chain = Arc::new(Chain::default());
    let params = boot_params(url, farm_id);
    let config = ChainConfig {
        uptime_interval_secs: interval_secs,
        queue_dir: dir.join("reports"),
        ..ChainConfig::default()
    };
    let sources = Sources {
        identity: Arc::new(agent::identity::Identity::with_seed(seed)),
        storaged: storaged::client::StoragedClient::new(daemons.storaged),
        netd: netd::client::NetdClient::new(daemons.netd),
        proc_root: "/proc".into(),
        mesh: MeshConfig {
            enabled: false,
            ..MeshConfig::default()
        },
    };
    let task = tokio::spawn(chain.clone().run(
        params,
        config,
        sources,
        grove_daemon::shutdown::Shutdown::new(),
    ));
    Node { chain, task }
}

/// The chain task's status once `ok` holds, within `deadline`.
pub async fn wait_for(
    chain: &Chain,
    deadline: Duration,
    what: &str,
    ok: impl Fn(&ChainStatus) -> bool,
) -> Result<ChainStatus, HarnessError> {
    let start = Instant::now();
    loop {
        let status = chain.status();
        if ok(&status) {
            return Ok(status);
        }
        if start.elapsed() > deadline {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                deadline,
                status: Box::new(status),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
