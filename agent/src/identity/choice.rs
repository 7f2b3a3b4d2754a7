//! The farmer's answer to a node that waits for its identity.
//!
//! A node with no pool of its own, whose attached pools do not all agree on
//! one identity (or whose only candidate is alive on the registry), takes
//! none: it waits, and says which accounts it found. The farmer answers
//! with a signed `POST /v1/identity/choice`: adopt one of those accounts
//! (its seed is read from that account's pool, and storaged makes those
//! pools this machine's), or start fresh (a new seed, kept on this
//! machine's blank pools only). The choice is recorded where it takes
//! effect, each write atomic: a fresh seed goes on the blank pools before
//! storaged is told, an adopted pool is marked this machine's before the
//! seed is copied, so a crash at any point leaves either a node that still
//! waits or one that boots as the chosen identity. Limits: a fresh start
//! needs a blank disk (a node whose every disk is another node's has
//! nowhere to keep a new identity); the alive check is the farmer's to
//! make, not the node's, once the farmer names an account.

use serde::{Deserialize, Serialize};
use storaged::client::StoragedClient;
use storaged::report::IdentityChoice;

use super::keys::{SS58_PREFIX, Seed, ss58};
use super::store::{self, Source};
use super::{Identity, Seen, StepError};

/// The path the farmer signs and posts to.
pub const PATH: &str = "/v1/identity/choice";

/// What the farmer chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Take the identity of this account (SS58), found on an attached pool.
    Adopt(String),
    /// Start as a new node.
    Fresh,
}

/// The body of `POST /v1/identity/choice`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh: Option<bool>,
}

impl ChoiceBody {
    /// The body of `choice`, as the farmer sends it.
    pub fn of(choice: &Choice) -> Self {
        match choice {
            Choice::Adopt(account) => Self {
                adopt: Some(account.clone()),
                fresh: None,
            },
            Choice::Fresh => Self {
                adopt: None,
                fresh: Some(true),
            },
        }
    }
}

/// The node's answer to a choice it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chosen {
    /// The node's account now.
    pub account: String,
    /// False when the node already was that account (the same choice
    /// again).
    pub changed: bool,
    pub source: Option<Source>,
}

/// Why a node waits, and how the farmer answers (`/v1/node` `waiting`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingReport {
    /// Why the node takes no identity by itself.
    pub reasons: Vec<String>,
    /// The accounts the farmer may adopt: those whose seed an attached
    /// pool of another node holds.
    pub accounts: Vec<String>,
    /// What the farmer's signature names as the node (`--node`) while the
    /// node has no account; `None` without a machine id.
    pub target: Option<String>,
    /// How to answer, in words.
    pub answer: String,
}

/// Why a choice was refused; [`ChoiceError::status`] maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    #[error("bad choice: {0}")]
    Body(String),
    #[error("the node is not waiting for the farmer's choice: {0}")]
    NotWaiting(String),
    #[error(
        "no attached pool holds the identity of account {account}; the accounts found are: {found}"
    )]
    NotFound { account: String, found: String },
    #[error(
        "no blank disk to keep a new identity on: every pool attached is another node's; attach a blank disk, then ask again"
    )]
    NoBlankDisk,
    #[error("cannot draw a random seed: {0}")]
    Random(#[source] std::io::Error),
    #[error("storaged refused the choice: {message}")]
    Refused {
        status: axum::http::StatusCode,
        message: String,
    },
    #[error(transparent)]
    Step(#[from] StepError),
}

impl ChoiceError {
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            ChoiceError::Body(_) => StatusCode::BAD_REQUEST,
            ChoiceError::NotWaiting(_) | ChoiceError::NoBlankDisk => StatusCode::CONFLICT,
            ChoiceError::NotFound { .. } => StatusCode::NOT_FOUND,
            ChoiceError::Refused { status, .. } => *status,
            ChoiceError::Random(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ChoiceError::Step(StepError::Storaged(_)) => StatusCode::BAD_GATEWAY,
            ChoiceError::Step(
                StepError::Task(_) | StepError::Store(_) | StepError::Mismatch { .. },
            ) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<grove_daemon::client::ClientError> for ChoiceError {
    fn from(e: grove_daemon::client::ClientError) -> Self {
        match e {
            grove_daemon::client::ClientError::Status {
                status, message, ..
            } => ChoiceError::Refused { status, message },
            other => ChoiceError::Step(StepError::Storaged(other)),
        }
    }
}

/// An account as SS58 (prefix 42), from SS58 of any prefix or 32 bytes of
/// hex (`0x` optional); `None` for anything else.
pub fn parse_account(text: &str) -> Option<String> {
    let text = text.trim();
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        return Some(ss58(&bytes, SS58_PREFIX));
    }
    let key = crate::auth::account_key(text)?;
    Some(ss58(&key.to_bytes(), SS58_PREFIX))
}

/// Parses a choice's body: exactly one of `{"adopt": ACCOUNT}` and
/// `{"fresh": true}`.
pub fn parse(body: &[u8]) -> Result<Choice, ChoiceError> {
    let body: ChoiceBody = serde_json::from_slice(body).map_err(|e| {
        ChoiceError::Body(format!(
            "{e}; send {{\"adopt\": \"ACCOUNT\"}} or {{\"fresh\": true}}"
        ))
    })?;
    match (body.adopt, body.fresh) {
        (Some(account), None) => parse_account(&account).map(Choice::Adopt).ok_or_else(|| {
            ChoiceError::Body(format!(
                "{account:?} is not an account (SS58, or 32 bytes of hex)"
            ))
        }),
        (None, Some(true)) => Ok(Choice::Fresh),
        (None, Some(false)) => Err(ChoiceError::Body(
            "\"fresh\": false chooses nothing; send {\"fresh\": true}".to_owned(),
        )),
        (Some(_), Some(_)) => Err(ChoiceError::Body(
            "choose one: adopt an account, or start fresh, not both".to_owned(),
        )),
        (None, None) => Err(ChoiceError::Body(
            "send {\"adopt\": \"ACCOUNT\"} or {\"fresh\": true}".to_owned(),
        )),
    }
}

/// The target a farmer signs for while the node has no account.
pub fn machine_target(machine: &str) -> String {
    format!("machine:{machine}")
}

/// The accounts another node's pool in `seen` holds a seed of, in order,
/// each once.
fn candidates(seen: &Seen) -> Vec<(String, Seed, String)> {
    let mut out: Vec<(String, Seed, String)> = Vec::new();
    for (dir, seed) in seen.iter().filter(|(d, _)| !d.this_machine) {
        if let Some(seed) = seed {
            let account = seed.keys().public().account;
            if !out.iter().any(|(a, _, _)| a == &account) {
                out.push((account, seed.clone(), dir.label.clone()));
            }
        }
    }
    out
}

/// What `/v1/node` shows while the node waits.
pub fn waiting_report(seen: &Seen, machine: Option<&str>, reasons: &[String]) -> WaitingReport {
    let accounts: Vec<String> = candidates(seen).into_iter().map(|(a, _, _)| a).collect();
    let target = machine.map(machine_target);
    let node = target.as_deref().unwrap_or("TARGET");
    let adopt = match accounts.first() {
        Some(first) => format!(
            "adopt one of {} (`agent sign identity --key FARMER.key --node {node} --adopt {first}`), or ",
            accounts.join(", ")
        ),
        None => String::new(),
    };
    let answer = format!(
        "waiting for the farmer's signed choice: POST {PATH} to {adopt}start fresh on a blank disk (`agent sign identity --key FARMER.key --node {node} --fresh`)"
    );
    WaitingReport {
        reasons: reasons.to_vec(),
        accounts,
        target,
        answer,
    }
}

impl Identity {
    /// What the farmer signs for as the node: its account, or while it
    /// waits with no account, its machine.
    pub fn signing_target(&self) -> Option<String> {
        match self.keys() {
            Some(keys) => Some(keys.public().account),
            None => self.waiting().and_then(|w| w.target),
        }
    }

    /// Takes the farmer's choice (already checked to be signed by the
    /// farmer for this node): refused, with nothing changed, unless the
    /// node waits and the choice fits the pools attached now.
    pub async fn choose(
        &self,
        storaged: &StoragedClient,
        choice: Choice,
    ) -> Result<Chosen, ChoiceError> {
        let mut known_pools = self.turn.lock().await;
        let state = storaged.identity().await?;
        match (&choice, state.settled, &state.account) {
            (Choice::Adopt(wanted), true, Some(account)) if wanted == account => {
                return Ok(Chosen {
                    account: account.clone(),
                    changed: false,
                    source: self.report().map(|r| r.source),
                });
            }
            (_, true, Some(account)) => {
                return Err(ChoiceError::NotWaiting(format!(
                    "its identity is account {account}"
                )));
            }
            (_, false, _) => {
                return Err(ChoiceError::NotWaiting(
                    "its identity is not settled yet".to_owned(),
                ));
            }
            (_, true, None) => {}
        }
        let cache_dir = self.cache_dir.get().cloned().ok_or_else(|| {
            ChoiceError::NotWaiting("the identity task has not started".to_owned())
        })?;
        let (mut seen, labels, pools) = Identity::look(storaged).await?;
        let (seed, from_pool) = match &choice {
            Choice::Adopt(account) => {
                let found = candidates(&seen);
                let Some((_, seed, pool)) = found.iter().find(|(a, _, _)| a == account).cloned()
                else {
                    let names: Vec<String> = found.into_iter().map(|(a, _, _)| a).collect();
                    return Err(ChoiceError::NotFound {
                        account: account.clone(),
                        found: grove_daemon::text::list_or_none(&names),
                    });
                };
                storaged
                    .choose(&IdentityChoice::Adopt(account.clone()))
                    .await?;
                for (dir, on_pool) in seen.iter_mut() {
                    if on_pool.as_ref() == Some(&seed) {
                        dir.this_machine = true;
                    }
                }
                (seed, Some(pool))
            }
            Choice::Fresh => {
                let blank: Vec<store::PoolDir> = seen
                    .iter()
                    .filter(|(dir, seed)| {
                        dir.this_machine
                            && seed.is_none()
                            && pools
                                .iter()
                                .any(|p| p.label.as_str() == dir.label && p.account.is_none())
                    })
                    .map(|(dir, _)| dir.clone())
                    .collect();
                if blank.is_empty() {
                    return Err(ChoiceError::NoBlankDisk);
                }
                let seed = Seed::generate().map_err(ChoiceError::Random)?;
                let account = seed.keys().public().account;
                // The new seed first: after a crash from here on, the node
                // boots as this identity from its own pools.
                let kept = seed.clone();
                let labels_kept: Vec<String> = blank.iter().map(|d| d.label.clone()).collect();
                tokio::task::spawn_blocking(move || store::keep_on(&blank, &kept))
                    .await
                    .map_err(StepError::from)?
                    .map_err(StepError::from)?;
                for (dir, on_pool) in seen.iter_mut() {
                    if labels_kept.contains(&dir.label) {
                        *on_pool = Some(seed.clone());
                    }
                }
                storaged.choose(&IdentityChoice::Fresh(account)).await?;
                (seed, None)
            }
        };
        let report = self
            .finish(storaged, &cache_dir, seen, seed, from_pool)
            .await?;
        *known_pools = Some(labels);
        tracing::warn!(account = %report.public.account, choice = ?choice, "identity chosen by the farmer");
        Ok(Chosen {
            account: report.public.account,
            changed: true,
            source: Some(report.source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_or_say_what_is_wrong() {
        let seed = Seed::from_bytes([7; 32]);
        let account = seed.keys().public().account;
        let hex: String = seed
            .keys()
            .verifying()
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let adopt = |a: &str| format!("{{\"adopt\":{a:?}}}");
        assert_eq!(
            parse(adopt(&account).as_bytes()).expect("ss58"),
            Choice::Adopt(account.clone())
        );
        assert_eq!(
            parse(adopt(&hex).as_bytes()).expect("hex"),
            Choice::Adopt(account.clone())
        );
        assert_eq!(
            parse(adopt(&format!("0x{hex}")).as_bytes()).expect("0x hex"),
            Choice::Adopt(account.clone())
        );
        assert_eq!(parse(b"{\"fresh\":true}").expect("fresh"), Choice::Fresh);
        for (bad, says) in [
            (&b""[..], "adopt"),
            (b"{}", "adopt"),
            (b"{\"fresh\":false}", "chooses nothing"),
            (b"{\"adopt\":\"5abc\"}", "not an account"),
            (b"{\"adopt\":\"zz\",\"fresh\":true}", "not both"),
            (b"{\"adopt\":\"x\",\"extra\":1}", "unknown field"),
            (b"{\"fresh\":\"yes\"}", "invalid type"),
        ] {
            match parse(bad) {
                Err(e @ ChoiceError::Body(_)) => {
                    assert!(e.to_string().contains(says), "{bad:?}: {e}");
                    assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert_eq!(
            serde_json::to_string(&ChoiceBody::of(&Choice::Fresh)).expect("json"),
            "{\"fresh\":true}"
        );
    }

    #[test]
    fn the_waiting_report_lists_the_accounts_and_how_to_answer() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (Seed::from_bytes([1; 32]), Seed::from_bytes([2; 32]));
        let dir = |label: &str, this_machine| store::PoolDir {
            label: label.to_owned(),
            mount_point: root.path().join(label),
            this_machine,
        };
        let seen: Seen = vec![
            (dir("grove-a", false), Some(a.clone())),
            (dir("grove-a2", false), Some(a.clone())),
            (dir("grove-b", false), Some(b.clone())),
            (dir("grove-own", true), None),
            (dir("grove-c", false), None),
        ];
        let report = waiting_report(&seen, Some("m-1"), &["two identities".to_owned()]);
        let (ka, kb) = (a.keys().public().account, b.keys().public().account);
        assert_eq!(report.accounts, [ka.clone(), kb.clone()]);
        assert_eq!(report.target.as_deref(), Some("machine:m-1"));
        assert!(report.answer.contains(PATH), "{}", report.answer);
        assert!(
            report
                .answer
                .contains(&format!("--node machine:m-1 --adopt {ka}")),
            "{}",
            report.answer
        );
        assert!(report.answer.contains("--fresh"), "{}", report.answer);
    }
}
