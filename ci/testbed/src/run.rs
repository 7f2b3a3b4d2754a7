//! A farm's identity: its short run id, the names derived from it, and its
//! run directory with the owner record.
//!
//! Every network namespace, host link and loop backing file of one farm
//! carries the same 6-hex-digit run id, so leftovers are recognised by name
//! alone; the run directory `/var/tmp/grove-testbed/<run>` is created first
//! (its creation is what reserves the id) and records the owning process by
//! pid and start time. Limits: ids are 24 bits, unique among live runs only
//! because creating an existing directory fails and a new id is drawn.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::ifname::{IfName, IfNameError};
use crate::proc::ProcId;

/// Where run directories live.
pub const BASE_DIR: &str = "/var/tmp/grove-testbed";

/// The owner record inside a run directory.
const OWNER_FILE: &str = "owner";

/// An empty run directory without an owner record younger than this is
/// taken to be a farm being born, not a leftover.
const NEWBORN: Duration = Duration::from_secs(60);

/// Creating or reading a run directory failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not create run directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not record the owner in {path}")]
    Owner {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("this process does not appear in /proc")]
    SelfUnknown,
    #[error("no free run id after {tries} tries in {base}")]
    NoFreeId { base: PathBuf, tries: u32 },
}

/// A farm's short unique id: 6 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(String);

impl RunId {
    /// A fresh id from the pid, the clock, a counter and a per-process seed.
    fn generate() -> RunId {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        if let Ok(now) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            h.write_u128(now.as_nanos());
        }
        RunId(format!("{:06x}", h.finish() & 0xff_ffff))
    }

    /// `text` as a run id, if it is one.
    pub fn parse(text: &str) -> Option<RunId> {
        let ok = text.len() == 6 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| RunId(text.to_owned()))
    }

    /// The run a testbed network namespace (`gtb-<run>-...`) belongs to.
    pub fn of_netns(name: &str) -> Option<RunId> {
        let rest = name.strip_prefix("gtb-")?;
        let (id, _) = rest.split_once('-')?;
        RunId::parse(id)
    }

    /// The run a testbed host link (`gtb<run>h<k>`) belongs to.
    pub fn of_link(name: &str) -> Option<RunId> {
        let rest = name.strip_prefix("gtb")?;
        let id = rest.get(..6)?;
        rest[6..].starts_with('h').then_some(())?;
        RunId::parse(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix of every network namespace of this run.
    pub fn netns_prefix(&self) -> String {
        format!("gtb-{}-", self.0)
    }

    /// The namespace holding the LAN bridges and dnsmasq.
    pub fn lan_netns(&self) -> String {
        format!("gtb-{}-lan", self.0)
    }

    /// The network namespace of node `index`.
    pub fn node_netns(&self, index: usize) -> String {
        format!("gtb-{}-n{index}", self.0)
    }

    /// The namespace of the NAT router in front of LAN `lan`.
    pub fn nat_netns(&self, lan: usize) -> String {
        format!("gtb-{}-nat{lan}", self.0)
    }

    /// The host end of the veth that reaches LAN `lan`.
    pub fn host_link(&self, lan: usize) -> Result<IfName, IfNameError> {
        IfName::new(format!("gtb{}h{lan}", self.0))
    }

    /// The directory of this run.
    pub fn dir(&self) -> PathBuf {
        Path::new(BASE_DIR).join(&self.0)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reserved run directory, owned by this process.
#[derive(Debug)]
pub struct RunDir {
    id: RunId,
    path: PathBuf,
}

impl RunDir {
    /// Reserves a fresh run id by creating its directory and records this
    /// process as the owner.
    pub fn create() -> Result<RunDir, RunError> {
        let base = Path::new(BASE_DIR);
        std::fs::create_dir_all(base).map_err(|source| RunError::Create {
            path: base.to_owned(),
            source,
        })?;
        let me = ProcId::of(std::process::id()).ok_or(RunError::SelfUnknown)?;
        const TRIES: u32 = 64;
        for _ in 0..TRIES {
            let id = RunId::generate();
            let path = id.dir();
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let owner = path.join(OWNER_FILE);
                    std::fs::write(&owner, format!("{} {}\n", me.pid, me.start)).map_err(
                        |source| RunError::Owner {
                            path: owner,
                            source,
                        },
                    )?;
                    return Ok(RunDir { id, path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(RunError::Create { path, source }),
            }
        }
        Err(RunError::NoFreeId {
            base: base.to_owned(),
            tries: TRIES,
        })
    }

    pub fn id(&self) -> &RunId {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether the farm of run directory `dir` still has a living owner.
pub fn owner_alive(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join(OWNER_FILE)) {
        Ok(text) => parse_owner(&text).is_some_and(|owner| owner.is_alive()),
        // Only an empty, young directory is a farm being born; anything
        // else without an owner is a teardown that stopped halfway.
        Err(_) => {
            let empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
            let young = std::fs::metadata(dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < NEWBORN);
            empty && young
        }
    }
}

fn parse_owner(text: &str) -> Option<ProcId> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let start = words.next()?.parse().ok()?;
    Some(ProcId { pid, start })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_six_hex_digits_and_vary() {
        let a = RunId::generate();
        let b = RunId::generate();
        assert!(RunId::parse(a.as_str()).is_some(), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn names_round_trip_to_their_run() {
        let id = RunId::parse("0a1b2c").expect("valid");
        assert_eq!(RunId::of_netns(&id.lan_netns()), Some(id.clone()));
        assert_eq!(RunId::of_netns(&id.node_netns(12)), Some(id.clone()));
        let link = id.host_link(3).expect("short enough");
        assert_eq!(RunId::of_link(link.as_str()), Some(id.clone()));
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in [
            "eth0",
            "gtb-",
            "gtb-0a1b2c",
            "gtb-0A1B2C-lan",
            "gtb-0a1b2-lan",
            "ns1",
        ] {
            assert_eq!(RunId::of_netns(name), None, "{name}");
        }
        for name in ["gtb0a1b2c", "gtb0a1b2cx0", "gtbzzzzzzh0", "docker0", "gtb"] {
            assert_eq!(RunId::of_link(name), None, "{name}");
        }
    }

    #[test]
    fn ownerless_directories_are_dead_unless_newborn() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("abcdef");
        std::fs::create_dir(&dir).unwrap();
        assert!(owner_alive(&dir), "an empty young directory is being born");
        std::fs::create_dir(dir.join("n0")).unwrap();
        assert!(!owner_alive(&dir), "half torn down");
        std::fs::write(dir.join(OWNER_FILE), format!("{} 0\n", std::process::id())).expect("owner");
        assert!(!owner_alive(&dir), "start time does not match this process");
        let me = ProcId::of(std::process::id()).expect("self");
        std::fs::write(dir.join(OWNER_FILE), format!("{} {}\n", me.pid, me.start)).expect("owner");
        assert!(owner_alive(&dir));
        assert!(!owner_alive(&base.path().join("missing")));
    }

    #[test]
    fn owner_record_parses() {
        assert_eq!(
            parse_owner("12 345\n"),
            Some(ProcId {
                pid: 12,
                start: 345
            })
        );
        assert_eq!(parse_owner("12"), None);
        assert_eq!(parse_owner(""), None);
    }
}
