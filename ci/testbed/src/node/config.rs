//! A node's `/etc/grove`: the host directory `<run>/n<i>/etc` that the
//! node's mount namespace sees at `/etc/grove`.
//!
//! The testbed writes `agent.toml` (its `[api]` section plus the spec's
//! extra text), `storaged.toml` (led by `disks = [...]`, the node's own
//! loop devices, so storaged never touches another node's or the host's
//! disks), `cmdline` and any other daemon configs; every write goes to a
//! temporary file that is synced and renamed into place, so a daemon reading
//! concurrently sees the old or the new text, never half. Limits: the
//! agent's extra text must not repeat the `[api]` table, and storaged text
//! that sets `disks` itself replaces the testbed's list.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::spec::{Daemon, NodeSpec};

/// Where a node's daemons find their configuration.
pub const MOUNT_POINT: &str = "/etc/grove";
/// The kernel command line file inside [`MOUNT_POINT`].
pub const CMDLINE_FILE: &str = "cmdline";
/// The operator API address every node's agent gets.
pub const API_LISTEN: &str = "0.0.0.0:8080";

/// Writing a node's configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A node's configuration directory on the host.
#[derive(Debug)]
pub struct ConfigDir {
    dir: PathBuf,
    /// The node's disks, listed in every `storaged.toml`.
    disks: Vec<PathBuf>,
    /// Whether the node's netd brings up the uplink; not when the testbed
    /// addressed the node itself.
    manage_uplink: bool,
}

impl ConfigDir {
    /// Creates `dir` and writes everything `spec` asks for; `disks` are the
    /// node's block devices.
    pub fn create(
        dir: PathBuf,
        spec: &NodeSpec,
        disks: Vec<PathBuf>,
    ) -> Result<ConfigDir, ConfigError> {
        std::fs::create_dir_all(&dir).map_err(|source| ConfigError::Write {
            path: dir.clone(),
            source,
        })?;
        let config = ConfigDir {
            dir,
            disks,
            manage_uplink: spec.addressing == crate::spec::Addressing::None,
        };
        for daemon in [Daemon::Agent, Daemon::Storaged, Daemon::Netd] {
            let text = spec.configs.get(&daemon).map(String::as_str);
            config.set_config(daemon, text.unwrap_or_default())?;
        }
        for (daemon, text) in spec
            .configs
            .iter()
            .filter(|(d, _)| !matches!(d, Daemon::Agent | Daemon::Storaged | Daemon::Netd))
        {
            config.set_config(*daemon, text)?;
        }
        config.set_cmdline(&spec.cmdline)?;
        Ok(config)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Replaces the kernel command line.
    pub fn set_cmdline(&self, text: &str) -> Result<(), ConfigError> {
        self.write(CMDLINE_FILE, text)
    }

    /// Replaces `<daemon>.toml`; for the agent, `text` follows the
    /// testbed's `[api]` section, for storaged the node's `disks` list.
    pub fn set_config(&self, daemon: Daemon, text: &str) -> Result<(), ConfigError> {
        let body = match daemon {
            Daemon::Agent => agent_toml(text),
            Daemon::Storaged => storaged_toml(&self.disks, text),
            Daemon::Netd => netd_toml(self.manage_uplink, text),
            Daemon::Provisiond => text.to_owned(),
        };
        self.write(&daemon.config_file(), &body)
    }

    fn write(&self, name: &str, text: &str) -> Result<(), ConfigError> {
        let path = self.dir.join(name);
        let temp = self.dir.join(format!(".{name}.tmp"));
        let fail = |source| ConfigError::Write {
            path: path.clone(),
            source,
        };
        let mut file = File::create(&temp).map_err(fail)?;
        file.write_all(text.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&temp, &path).map_err(fail)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)
    }
}

/// The API's address, in `extra`'s own `[api]` table when it has one.
fn agent_toml(extra: &str) -> String {
    let listen = format!("[api]\nlisten = \"{API_LISTEN}\"\n");
    if extra.lines().any(|l| l.trim() == "[api]") {
        return extra.replacen("[api]\n", &listen, 1);
    }
    let mut text = listen;
    if !extra.is_empty() {
        text.push('\n');
        text.push_str(extra);
        if !extra.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// `text`, then `[uplink] manage = false` when the testbed addressed the
/// node itself (unless `text` has an `[uplink]` table).
fn netd_toml(manage_uplink: bool, text: &str) -> String {
    let has_uplink = text.lines().any(|l| l.trim() == "[uplink]");
    if manage_uplink || has_uplink {
        return text.to_owned();
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("[uplink]\nmanage = false\n");
    out
}

/// `disks = [...]` (unless `text` sets `disks` itself), then `text`.
fn storaged_toml(disks: &[PathBuf], text: &str) -> String {
    let sets_disks = text.lines().any(|line| {
        line.trim_start()
            .strip_prefix("disks")
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    });
    if sets_disks {
        return text.to_owned();
    }
    let list: Vec<String> = disks
        .iter()
        .map(|d| toml_string(&d.to_string_lossy()))
        .collect();
    format!("disks = [{}]\n{text}", list.join(", "))
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_the_spec_says() {
        let root = tempfile::tempdir().unwrap();
        let spec = NodeSpec::default()
            .cmdline("grove.farm=7 quiet")
            .config(Daemon::Agent, "[chain]\nurl = \"x\"")
            .config(Daemon::Netd, "[uplink]\n");
        let disks = vec![PathBuf::from("/dev/loop3"), PathBuf::from("/dev/loop9")];
        let dir = ConfigDir::create(root.path().join("etc"), &spec, disks).expect("written");
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect(name);
        assert_eq!(read("cmdline"), "grove.farm=7 quiet");
        assert_eq!(
            read("agent.toml"),
            "[api]\nlisten = \"0.0.0.0:8080\"\n\n[chain]\nurl = \"x\"\n"
        );
        assert_eq!(read("netd.toml"), "[uplink]\n");
        assert_eq!(
            read("storaged.toml"),
            "disks = [\"/dev/loop3\", \"/dev/loop9\"]\n"
        );
        assert!(!dir.path().join("provisiond.toml").exists());
        dir.set_config(Daemon::Storaged, "health_interval_ms = 100\n")
            .expect("rewritten");
        assert_eq!(
            read("storaged.toml"),
            "disks = [\"/dev/loop3\", \"/dev/loop9\"]\nhealth_interval_ms = 100\n"
        );
    }

    #[test]
    fn storaged_text_may_choose_its_own_disks() {
        let disks = [PathBuf::from("/dev/loop1")];
        let own = "  disks = [\"/dev/loop7\"]\n";
        assert_eq!(storaged_toml(&disks, own), own);
        assert_eq!(storaged_toml(&[], ""), "disks = []\n");
        assert_eq!(
            storaged_toml(&disks, "disks_extra = 1\n"),
            "disks = [\"/dev/loop1\"]\ndisks_extra = 1\n"
        );
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("/dev/loop0"), "\"/dev/loop0\"");
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }

    #[test]
    fn netd_leaves_a_testbed_addressed_uplink_alone() {
        assert_eq!(netd_toml(false, ""), "[uplink]\nmanage = false\n");
        assert_eq!(
            netd_toml(false, "[mesh]\nx = 1"),
            "[mesh]\nx = 1\n[uplink]\nmanage = false\n"
        );
        assert_eq!(
            netd_toml(false, "[uplink]\nprobe_secs = 2\n"),
            "[uplink]\nprobe_secs = 2\n"
        );
        assert_eq!(netd_toml(true, ""), "");
    }

    #[test]
    fn default_agent_config_is_just_the_api() {
        assert_eq!(agent_toml(""), "[api]\nlisten = \"0.0.0.0:8080\"\n");
    }

    #[test]
    fn rewrites_replace_whole_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = ConfigDir::create(root.path().join("etc"), &NodeSpec::default(), Vec::new())
            .expect("written");
        dir.set_cmdline("a").expect("first");
        dir.set_cmdline("b").expect("second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 4, "no temporary files left: {names:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cmdline")).unwrap(),
            "b"
        );
    }
}
