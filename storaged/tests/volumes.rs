//! Volumes and vdisks through the real `storaged` binary, on a btrfs pool it
//! makes on a loop device, reached with its typed client.
//!
//! Each test has its own loop device, directories and daemon, cleaned up on
//! drop. Needs root (loop devices, mounts, btrfs); a test run without it
//! fails, it never passes by skipping.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use grove_daemon::client::ClientError;
use storaged::client::StoragedClient;
use storaged::report::PoolReport;
use storaged::volume::{Removed, VdiskRequest, VdiskView, VolumeRequest, VolumeView};

const MIB: u64 = 1 << 20;
const ACCOUNT: &str = "5GroveTestAccountA";

/// A request for `size` bytes on `pool`.
fn on(pool: &str, size: u64) -> VolumeRequest {
    VolumeRequest {
        pool: pool.to_owned(),
        size,
        snapshot_of: None,
    }
}

/// Runs a tool; answers its stdout, panics with its stderr on failure.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `f` to hold, checking every 20 ms, for at most `limit`.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// One daemon on one loop-device disk.
struct Bed {
    dir: tempfile::TempDir,
    device: PathBuf,
    disks: PathBuf,
    pools: PathBuf,
    cache: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
}

impl Bed {
    fn new() -> Self {
        assert!(
            std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0),
            "these tests make loop devices and btrfs pools: run them as root"
        );
        let dir = tempfile::Builder::new()
            .prefix("grove-volumes-")
            .tempdir()
            .expect("temp dir");
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(1024 * MIB))
            .expect("disk image");
        let device = PathBuf::from(
            run(
                "losetup",
                &["--find", "--show", image.to_str().expect("utf-8")],
            )
            .trim(),
        );
        let disks = dir.path().join("disks");
        std::fs::create_dir(&disks).expect("disks dir");
        std::os::unix::fs::symlink(&device, disks.join("disk0")).expect("disk link");
        let machine = dir.path().join("machine-id");
        std::fs::write(&machine, "7c1d9a52-volumes-test-machine\n").expect("machine id");
        let (pools, cache) = (dir.path().join("pools"), dir.path().join("cache"));
        let socket = dir.path().join("storaged.sock");
        let config = dir.path().join("storaged.toml");
        std::fs::write(
            &config,
            format!(
                "socket = {:?}\ndisks = [{:?}]\npools_dir = {:?}\ncache_dir = {:?}\nmachine_id_file = {:?}\nhealth_interval_ms = 200\n",
                socket, disks, pools, cache, machine
            ),
        )
        .expect("config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut bed = Self {
            dir,
            device,
            disks,
            pools,
            cache,
            config,
            socket,
            child: None,
            rt,
        };
        bed.start(ACCOUNT);
        bed
    }

    fn client(&self) -> StoragedClient {
        StoragedClient::new(&self.socket).with_timeout(Duration::from_secs(60))
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Starts storaged and settles the node's identity as `account`, as the
    /// agent does.
    fn start(&mut self, account: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("storaged.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_storaged"))
            .arg("--config")
            .arg(&self.config)
            .env("GROVE_LOG", "storaged=debug")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("storaged starts");
        self.child = Some(child);
        let client = self.client();
        let booted = wait_for(Duration::from_secs(60), || {
            self.block(client.identity()).is_ok()
        });
        assert!(
            booted,
            "storaged did not boot\n{}\n{}",
            self.log(),
            btrfs_tools_running()
        );
        self.block(client.settle(Some(account.to_owned())))
            .unwrap_or_else(|e| panic!("settle: {e}\n{}", self.log()));
        let ready = wait_for(Duration::from_secs(30), || {
            self.block(client.ready()).is_ok_and(|r| r.ready)
        });
        assert!(ready, "storaged not ready\n{}", self.log());
    }

    /// kill -9.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.start(ACCOUNT);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("storaged.log")).unwrap_or_default()
    }

    fn pool(&self) -> PoolReport {
        let pools = self.block(self.client().pools()).expect("pools");
        assert_eq!(pools.len(), 1, "{pools:?}");
        pools.into_iter().next().expect("one pool")
    }

    fn label(&self) -> String {
        self.pool().label.to_string()
    }

    /// The pool's label and where it is mounted, read at once.
    fn label_and_mount(&self) -> (String, PathBuf) {
        let pool = self.pool();
        (pool.label.to_string(), pool.mount_point)
    }

    fn ensure_volume(&self, name: &str, pool: &str, size: u64) -> Result<VolumeView, ClientError> {
        self.block(self.client().ensure_volume(name, &on(pool, size)))
    }

    fn ensure_vdisk(&self, name: &str, pool: &str, size: u64) -> Result<VdiskView, ClientError> {
        self.block(self.client().ensure_vdisk(name, &on(pool, size)))
    }

    fn delete_volume(&self, name: &str) -> Result<Removed, ClientError> {
        self.block(self.client().delete_volume(name))
    }

    fn delete_vdisk(&self, name: &str) -> Result<Removed, ClientError> {
        self.block(self.client().delete_vdisk(name))
    }

    fn volumes(&self) -> Vec<VolumeView> {
        self.block(self.client().volumes()).expect("volumes")
    }

    fn vdisks(&self) -> Vec<VdiskView> {
        self.block(self.client().vdisks()).expect("vdisks")
    }

    /// Everything a change could touch on the pool: the subvolumes, the
    /// qgroups' ids, limits and paths, and both directories with sizes.
    fn state(&self) -> Vec<String> {
        let mount = self.pool().mount_point;
        let m = mount.to_str().expect("utf-8");
        let mut out = vec![run("btrfs", &["subvolume", "list", m])];
        out.extend(
            qgroups(&mount)
                .into_iter()
                .map(|(id, limit, path)| format!("{id} {limit} {path}")),
        );
        for dir in ["volumes", "vdisks"] {
            let mut entries: Vec<String> = std::fs::read_dir(mount.join(dir))
                .expect("dir")
                .map(|e| {
                    let e = e.expect("entry");
                    let meta = e.metadata().expect("meta");
                    format!("{dir}/{} {}", e.file_name().to_string_lossy(), meta.len())
                })
                .collect();
            entries.sort();
            out.extend(entries);
        }
        out
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new("umount").arg("-l").arg(&self.cache).status();
        if let Ok(entries) = std::fs::read_dir(&self.pools) {
            for e in entries.flatten() {
                let _ = Command::new("umount").arg("-l").arg(e.path()).status();
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        let _ = std::fs::remove_dir_all(&self.disks);
    }
}

/// The btrfs tools running now, with their kernel stacks: what a boot that
/// does not finish waits on.
fn btrfs_tools_running() -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("btrfs ") {
            let stack = std::fs::read_to_string(dir.join("stack")).unwrap_or_default();
            out.push_str(&format!("{}: {cmdline}\n{stack}\n", dir.display()));
        }
    }
    out
}

/// Level-0 qgroups of subvolumes: (id, limit, path).
fn qgroups(mount: &Path) -> Vec<(String, String, String)> {
    run(
        "btrfs",
        &[
            "qgroup",
            "show",
            "-re",
            "--raw",
            mount.to_str().expect("utf-8"),
        ],
    )
    .lines()
    .filter_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        let id = cols.first()?;
        (id.starts_with("0/") && *id != "0/5").then(|| {
            (
                id.to_string(),
                cols.get(3).unwrap_or(&"").to_string(),
                cols.get(5..).map(|p| p.join(" ")).unwrap_or_default(),
            )
        })
    })
    .collect()
}

fn limit_of(mount: &Path, rel: &str) -> Option<String> {
    qgroups(mount)
        .into_iter()
        .find(|(_, _, path)| path == rel)
        .map(|(_, limit, _)| limit)
}

fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Status {
            status, message, ..
        }) => (status.as_u16(), message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn lsattr(path: &Path) -> String {
    run("lsattr", &["-d", path.to_str().expect("utf-8")])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_volume_is_a_subvolume_limited_to_its_size_and_writing_past_it_fails_with_edquot() {
    let bed = Bed::new();
    let (label, mount) = bed.label_and_mount();
    let view = bed
        .ensure_volume("c7-data", &label, 16 * MIB)
        .expect("volume made");
    assert_eq!(view.name, "c7-data");
    assert_eq!(view.pool, label);
    assert_eq!(view.size, 16 * MIB);
    assert_eq!(view.path, mount.join("volumes/c7-data"));
    assert_eq!(view.broken, None);
    // A subvolume of its own (its root is inode 256), limited to the size.
    let meta = std::fs::metadata(&view.path).expect("volume path");
    assert_eq!(meta.ino(), 256, "not a subvolume root");
    run("btrfs", &["subvolume", "show", view.path.to_str().unwrap()]);
    assert_eq!(
        limit_of(&mount, "volumes/c7-data").as_deref(),
        Some((16 * MIB).to_string().as_str())
    );

    let mut file = std::fs::File::create(view.path.join("big")).expect("create in volume");
    let chunk = vec![0xa5u8; MIB as usize];
    let mut written = 0u64;
    let failure = loop {
        if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_data()) {
            break e;
        }
        written += MIB;
        assert!(
            written <= 64 * MIB,
            "wrote {written} bytes into a 16 MiB volume"
        );
    };
    assert_eq!(
        failure.raw_os_error(),
        Some(nix::libc::EDQUOT),
        "writing past the limit: {failure}"
    );
    assert!(written >= 8 * MIB, "only {written} bytes fit: {failure}");
    drop(file);
    run("btrfs", &["filesystem", "sync", mount.to_str().unwrap()]);
    let used = wait_for(Duration::from_secs(30), || {
        bed.volumes()
            .iter()
            .any(|v| v.name == "c7-data" && v.used >= written)
    });
    assert!(used, "usage not shown: {:?}", bed.volumes());
}

#[test]
fn a_vdisk_is_a_nocow_file_of_exactly_its_size_preallocated_and_private() {
    let bed = Bed::new();
    let label = bed.label();
    let size = 48 * MIB + 4096 * 3 + 17;
    let view = bed
        .ensure_vdisk("c7-disk", &label, size)
        .expect("vdisk made");
    assert_eq!((view.name.as_str(), view.size), ("c7-disk", size));
    assert_eq!(view.path, bed.pool().mount_point.join("vdisks/c7-disk"));
    let meta = std::fs::metadata(&view.path).expect("vdisk");
    assert!(meta.is_file());
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 >= size,
        "only {} of {size} bytes allocated",
        meta.blocks() * 512
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(lsattr(&view.path).contains('C'), "{}", lsattr(&view.path));
    assert_eq!(bed.vdisks(), vec![view]);
}

#[test]
fn ensure_twice_changes_nothing_and_a_larger_size_grows() {
    let bed = Bed::new();
    let (label, mount) = bed.label_and_mount();
    let volume = bed.ensure_volume("vol", &label, 16 * MIB).expect("volume");
    let vdisk = bed.ensure_vdisk("disk", &label, 16 * MIB).expect("vdisk");
    let before = bed.state();
    assert_eq!(
        bed.ensure_volume("vol", &label, 16 * MIB).expect("again"),
        volume
    );
    assert_eq!(
        bed.ensure_vdisk("disk", &label, 16 * MIB).expect("again"),
        vdisk
    );
    assert_eq!(
        bed.state(),
        before,
        "an ensure of what exists changed the pool"
    );

    let grown = bed
        .ensure_volume("vol", &label, 40 * MIB)
        .expect("grow volume");
    assert_eq!(grown.size, 40 * MIB);
    assert_eq!(
        limit_of(&mount, "volumes/vol").as_deref(),
        Some((40 * MIB).to_string().as_str())
    );
    let grown = bed
        .ensure_vdisk("disk", &label, 40 * MIB)
        .expect("grow vdisk");
    assert_eq!(grown.size, 40 * MIB);
    let meta = std::fs::metadata(&grown.path).expect("vdisk");
    assert_eq!(meta.len(), 40 * MIB);
    assert!(meta.blocks() * 512 >= 40 * MIB, "the tail is not allocated");
    assert!(lsattr(&grown.path).contains('C'));
    let allocated = bed.pool().allocated_bytes;
    assert_eq!(allocated, 80 * MIB, "the pool counts what it gave");
}

#[test]
fn refusals_name_the_problem_and_change_nothing() {
    let mut bed = Bed::new();
    let label = bed.label();
    bed.ensure_volume("kept", &label, 16 * MIB).expect("volume");
    bed.ensure_vdisk("kept", &label, 16 * MIB).expect("vdisk");
    let before = bed.state();
    let free = bed.pool().free_bytes;

    let cases: Vec<(&str, (u16, String), u16, String)> = vec![
        (
            "shrink a volume",
            refusal(bed.ensure_volume("kept", &label, 8 * MIB)),
            409,
            format!(
                "a volume only grows: has {} bytes, asked {}",
                16 * MIB,
                8 * MIB
            ),
        ),
        (
            "shrink a vdisk",
            refusal(bed.ensure_vdisk("kept", &label, 8 * MIB)),
            409,
            "a vdisk only grows".to_owned(),
        ),
        (
            "a volume on another pool",
            refusal(bed.ensure_volume("kept", "grove-0ther", 16 * MIB)),
            409,
            format!("is on pool {label}, not on pool grove-0ther"),
        ),
        (
            "an unknown pool",
            refusal(bed.ensure_vdisk("new", "grove-0ther", MIB)),
            409,
            "no pool grove-0ther".to_owned(),
        ),
        (
            "a bad pool label",
            refusal(bed.ensure_volume("new", "../etc", MIB)),
            400,
            "../etc".to_owned(),
        ),
        (
            "a name with a dot",
            refusal(bed.ensure_volume("a.b", &label, MIB)),
            400,
            "a.b".to_owned(),
        ),
        (
            "a temporary name",
            refusal(bed.ensure_vdisk(".new-kept", &label, MIB)),
            400,
            ".new-kept".to_owned(),
        ),
        (
            "a leading dash",
            refusal(bed.ensure_volume("-x", &label, MIB)),
            400,
            "starts with '-'".to_owned(),
        ),
        (
            "a long name",
            refusal(bed.ensure_vdisk(&"n".repeat(65), &label, MIB)),
            400,
            "longer than 64".to_owned(),
        ),
        (
            "an encoded slash",
            refusal(bed.ensure_vdisk("a%2Fb", &label, MIB)),
            400,
            "a/b".to_owned(),
        ),
        (
            "size 0",
            refusal(bed.ensure_volume("zero", &label, 0)),
            400,
            "more than 0".to_owned(),
        ),
        (
            "a volume too big",
            refusal(bed.ensure_volume("huge", &label, free + 1)),
            507,
            format!("{free} bytes free"),
        ),
        (
            "a vdisk too big",
            refusal(bed.ensure_vdisk("huge", &label, 1 << 50)),
            507,
            format!("needs {}", 1u64 << 50),
        ),
        (
            "growing past the free space",
            refusal(bed.ensure_vdisk("kept", &label, 16 * MIB + free + 1)),
            507,
            format!("needs {}", free + 1),
        ),
        (
            "a delete with a bad name",
            refusal(bed.delete_volume("a.b")),
            400,
            "a.b".to_owned(),
        ),
    ];
    for (what, (status, message), want, needle) in cases {
        assert_eq!(status, want, "{what}: {message}");
        assert!(
            message.contains(&needle),
            "{what}: {message:?} lacks {needle:?}"
        );
    }
    let raw = |body: &str| {
        let uri = "/v1/vdisks/raw";
        let client = grove_daemon::client::SocketClient::new(&bed.socket);
        let (status, bytes) = bed
            .block(client.raw(hyper::Method::PUT, uri, Some(body.as_bytes().to_vec())))
            .expect("answer");
        (
            status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    };
    for (body, needle) in [
        (r#"{"pool": "x"}"#, "size"),
        (r#"{"pool": "grove-a", "size": -1}"#, "size"),
        (r#"{"pool": "grove-a", "size": 1, "extra": 1}"#, "extra"),
        ("not json", "body"),
    ] {
        let (status, text) = raw(body);
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }
    assert_eq!(bed.state(), before, "a refusal changed the pool");
    assert_eq!(bed.pool().free_bytes, free);

    // Another node's pool: the same machine restarted as another account.
    bed.kill();
    bed.start("5GroveTestAccountB");
    let (status, message) = refusal(bed.ensure_volume("new", &label, MIB));
    assert_eq!(status, 409, "{message}");
    assert!(
        message.contains(&format!("another node's pool (account {ACCOUNT})")),
        "{message}"
    );
    assert!(bed.volumes().is_empty(), "another node's volumes listed");
    assert_eq!(bed.state(), before);
}

#[test]
fn delete_frees_the_space_and_leaves_no_qgroup_and_is_idempotent() {
    let bed = Bed::new();
    let (label, mount) = bed.label_and_mount();
    let free = bed.pool().free_bytes;
    let volume = bed.ensure_volume("gone", &label, 32 * MIB).expect("volume");
    std::fs::write(volume.path.join("data"), vec![1u8; MIB as usize]).unwrap();
    let vdisk = bed.ensure_vdisk("gone", &label, 32 * MIB).expect("vdisk");
    assert_eq!(bed.pool().free_bytes, free - 64 * MIB);
    let before = qgroups(&mount);
    assert_eq!(before.len(), 2, "the cache's and the volume's: {before:?}");

    let removed = bed.delete_volume("gone").expect("delete");
    assert_eq!(
        removed,
        Removed {
            name: "gone".to_owned(),
            existed: true
        }
    );
    assert!(!volume.path.exists());
    let after = qgroups(&mount);
    assert_eq!(after.len(), 1, "a qgroup is left: {after:?}");
    assert!(after.iter().all(|(_, _, p)| p == "cache"), "{after:?}");
    let removed = bed.delete_vdisk("gone").expect("delete");
    assert!(removed.existed);
    assert!(!vdisk.path.exists());
    assert_eq!(bed.pool().free_bytes, free);
    assert!(bed.volumes().is_empty() && bed.vdisks().is_empty());

    for _ in 0..2 {
        let again = bed.delete_volume("gone").expect("delete");
        assert_eq!(
            again,
            Removed {
                name: "gone".to_owned(),
                existed: false
            }
        );
        let again = bed.delete_vdisk("gone").expect("delete");
        assert!(!again.existed);
    }
    let missing = bed.delete_vdisk("never").expect("delete");
    assert!(!missing.existed);
}

#[test]
fn a_restart_finds_everything_and_removes_only_temporary_leftovers() {
    let mut bed = Bed::new();
    let (label, mount) = bed.label_and_mount();
    let volume = bed.ensure_volume("v1", &label, 16 * MIB).expect("volume");
    std::fs::write(volume.path.join("kept"), b"kept").unwrap();
    let vdisk = bed.ensure_vdisk("d1", &label, 16 * MIB).expect("vdisk");
    // What a crash leaves, and what only looks like it.
    let m = |rel: &str| mount.join(rel).to_str().unwrap().to_owned();
    run("btrfs", &["subvolume", "create", &m("volumes/.new-half")]);
    run(
        "btrfs",
        &["qgroup", "limit", "1048576", &m("volumes/.new-half")],
    );
    std::fs::write(mount.join("vdisks/.new-half"), b"").expect("leftover");
    std::fs::create_dir(mount.join("volumes/.new-plain-dir")).expect("plain dir");
    std::fs::write(mount.join("vdisks/.keep"), b"not ours to remove").expect("other");
    std::fs::write(mount.join("volumes/notes.txt"), b"someone's").expect("other");
    assert_eq!(qgroups(&mount).len(), 3);

    bed.restart();

    let listing = |dir: &str| {
        let mut names: Vec<String> = std::fs::read_dir(mount.join(dir))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(listing("volumes"), [".new-plain-dir", "notes.txt", "v1"]);
    assert_eq!(listing("vdisks"), [".keep", "d1"]);
    let left = qgroups(&mount);
    assert_eq!(left.len(), 2, "the leftover's qgroup stayed: {left:?}");
    let volumes = bed.volumes();
    assert_eq!(volumes.len(), 1);
    assert_eq!(
        (volumes[0].name.as_str(), volumes[0].size),
        ("v1", 16 * MIB)
    );
    assert_eq!(bed.vdisks(), vec![vdisk]);
    assert_eq!(std::fs::read(volume.path.join("kept")).unwrap(), b"kept");
}

#[test]
fn a_pool_whose_disk_leaves_shows_its_objects_as_broken_and_refuses_changes() {
    let bed = Bed::new();
    let label = bed.label();
    bed.ensure_volume("v", &label, 16 * MIB).expect("volume");
    bed.ensure_vdisk("d", &label, 16 * MIB).expect("vdisk");
    std::fs::remove_file(bed.disks.join("disk0")).expect("pull the disk");
    let broken = wait_for(Duration::from_secs(30), || {
        bed.vdisks().iter().any(|d| d.broken.is_some())
    });
    assert!(
        broken,
        "not shown broken: {:?}\n{}",
        bed.vdisks(),
        bed.log()
    );
    assert_eq!(
        bed.pool().allocated_bytes,
        32 * MIB,
        "a broken pool shows what it held"
    );
    let volumes = bed.volumes();
    assert_eq!(volumes.len(), 1);
    let why = volumes[0].broken.as_deref().expect("broken");
    assert!(why.contains("broken"), "{why}");
    let (status, message) = refusal(bed.ensure_volume("v", &label, 32 * MIB));
    assert_eq!(status, 409, "{message}");
    assert!(message.contains(&format!("on pool {label}")), "{message}");
    let (status, message) = refusal(bed.ensure_vdisk("new", &label, MIB));
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("broken"), "{message}");
    let (status, message) = refusal(bed.delete_vdisk("d"));
    assert_eq!(status, 409, "{message}");
}

#[test]
fn a_kill_during_creation_leaves_nothing_or_the_whole_object() {
    let mut bed = Bed::new();
    let (label, mount) = bed.label_and_mount();
    // Large enough that preallocating takes a while, small enough that two
    // rounds' worth fit a 1 GiB pool while btrfs frees the last one.
    let size = 200 * MIB;
    let mut outcomes = Vec::new();
    // The last round is never cut short: both are made whole.
    let delays = [0u64, 1, 2, 4, 8, 15, 30, 60, 120, 60_000];
    for (round, delay_ms) in delays.into_iter().enumerate() {
        let (volume, vdisk) = (format!("v{round}"), format!("d{round}"));
        let client = bed.client();
        bed.block(async {
            let (volume_req, vdisk_req) = (on(&label, size), on(&label, size));
            let both = async {
                let _ = client.ensure_volume(&volume, &volume_req).await;
                let _ = client.ensure_vdisk(&vdisk, &vdisk_req).await;
            };
            tokio::select! {
                () = both => {}
                () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
            }
        });
        bed.kill();
        // What the kill left, before any start could tidy it.
        let had_temp = ["volumes", "vdisks"].iter().any(|d| {
            std::fs::read_dir(mount.join(d)).expect("dir").any(|e| {
                e.expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".new-")
            })
        });
        bed.start(ACCOUNT);
        for dir in ["volumes", "vdisks"] {
            let temp: Vec<String> = std::fs::read_dir(mount.join(dir))
                .expect("dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".new-"))
                .collect();
            assert!(
                temp.is_empty(),
                "round {round}: left {temp:?}\n{}",
                bed.log()
            );
        }
        let stale: Vec<_> = qgroups(&mount)
            .into_iter()
            .filter(|(_, _, p)| p == "<stale>")
            .collect();
        assert!(stale.is_empty(), "round {round}: {stale:?}");
        let made_volume = bed.volumes().into_iter().find(|v| v.name == volume);
        if let Some(v) = &made_volume {
            assert_eq!(v.size, size, "round {round}: a half-made volume counts");
            assert_eq!(
                limit_of(&mount, &format!("volumes/{volume}")).as_deref(),
                Some(size.to_string().as_str())
            );
        }
        let made_vdisk = bed.vdisks().into_iter().find(|d| d.name == vdisk);
        if let Some(d) = &made_vdisk {
            let meta = std::fs::metadata(&d.path).expect("vdisk");
            assert_eq!((d.size, meta.len()), (size, size), "round {round}");
            assert!(meta.blocks() * 512 >= size, "round {round}: not allocated");
            assert!(lsattr(&d.path).contains('C'), "round {round}");
        }
        outcomes.push((
            delay_ms,
            had_temp,
            made_volume.is_some(),
            made_vdisk.is_some(),
        ));
        // Asked again, each is there once, whole.
        bed.ensure_volume(&volume, &label, size)
            .expect("volume after restart");
        bed.ensure_vdisk(&vdisk, &label, size)
            .expect("vdisk after restart");
        assert_eq!(bed.volumes().len(), 1, "round {round}");
        assert_eq!(bed.vdisks().len(), 1, "round {round}");
        bed.delete_volume(&volume).expect("delete");
        bed.delete_vdisk(&vdisk).expect("delete");
    }
    eprintln!("(delay ms, temporary left by the kill, volume made, vdisk made): {outcomes:?}");
    let last = outcomes.last().expect("rounds");
    assert!(
        last.2 && last.3,
        "an uninterrupted round made nothing: {outcomes:?}"
    );
}

#[test]
fn a_volume_with_subvolumes_made_inside_it_is_deleted_whole_and_nothing_else() {
    let bed = Bed::new();
    let (label, mount) = bed.label_and_mount();
    let volume = bed.ensure_volume("nest", &label, 64 * MIB).expect("volume");
    let keep = bed.ensure_volume("keep", &label, 16 * MIB).expect("volume");
    std::fs::write(keep.path.join("data"), b"kept").unwrap();
    std::fs::write(mount.join("cache/marker"), b"node state").unwrap();
    let cache_id = run(
        "btrfs",
        &[
            "inspect-internal",
            "rootid",
            mount.join("cache").to_str().unwrap(),
        ],
    );
    let keep_id = run(
        "btrfs",
        &["inspect-internal", "rootid", keep.path.to_str().unwrap()],
    );
    // What a tenant may make inside its volume, including a name that reads
    // as another line of `btrfs subvolume list` naming the cache and the
    // other volume.
    let tricky = format!(
        "x\nID {} gen 1 top level 5 path cache\nID {} gen 1 top level 256 path keep",
        cache_id.trim(),
        keep_id.trim()
    );
    std::fs::create_dir(volume.path.join("d")).expect("dir");
    for rel in ["n 1", "d/n2", "d/n2/n3", tricky.as_str()] {
        run(
            "btrfs",
            &[
                "subvolume",
                "create",
                volume.path.join(rel).to_str().unwrap(),
            ],
        );
    }
    std::os::unix::fs::symlink(&keep.path, volume.path.join("d/link")).expect("symlink");

    let removed = bed.delete_volume("nest").expect("delete");
    assert!(removed.existed);
    assert!(!volume.path.exists());
    let list = run("btrfs", &["subvolume", "list", mount.to_str().unwrap()]);
    let paths: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split(" path ").nth(1))
        .collect();
    assert_eq!(paths, ["cache", "volumes/keep"], "{list}");
    let left: Vec<String> = qgroups(&mount).into_iter().map(|q| q.2).collect();
    assert_eq!(left, ["cache", "volumes/keep"]);
    assert_eq!(
        std::fs::read(mount.join("cache/marker")).expect("cache"),
        b"node state"
    );
    assert_eq!(
        std::fs::read(keep.path.join("data")).expect("keep"),
        b"kept"
    );
    assert_eq!(bed.volumes().len(), 1);
}

#[test]
fn a_volume_made_as_a_snapshot_holds_its_source_and_keeps_its_writes_to_itself() {
    let bed = Bed::new();
    let (label, mount) = bed.label_and_mount();
    // The source: a subvolume on the cache, which lives on the pool (where
    // provisiond keeps unpacked images), crossed into the pool's volumes.
    let source = bed.cache.join("image-rootfs");
    run("btrfs", &["subvolume", "create", source.to_str().unwrap()]);
    std::fs::create_dir(source.join("bin")).expect("dir");
    std::fs::write(source.join("bin/app"), b"image bytes").expect("file");
    let snapshot = |name: &str, from: &Path| {
        let request = VolumeRequest {
            pool: label.clone(),
            size: 64 * MIB,
            snapshot_of: Some(from.to_owned()),
        };
        bed.block(bed.client().ensure_volume(name, &request))
    };

    let view = snapshot("c9-root", &source).expect("snapshot made");
    assert_eq!(view.path, mount.join("volumes/c9-root"));
    assert_eq!(std::fs::metadata(&view.path).expect("meta").ino(), 256);
    assert_eq!(
        std::fs::read(view.path.join("bin/app")).unwrap(),
        b"image bytes"
    );
    assert_eq!(
        limit_of(&mount, "volumes/c9-root").as_deref(),
        Some((64 * MIB).to_string().as_str())
    );
    std::fs::write(view.path.join("bin/app"), b"changed").unwrap();
    assert_eq!(
        std::fs::read(source.join("bin/app")).unwrap(),
        b"image bytes",
        "the source is untouched"
    );
    assert_eq!(
        snapshot("c9-root", &source).expect("again"),
        view,
        "ensure twice changes nothing"
    );

    // Sources that are not a subvolume on this pool are refused, and
    // nothing changes.
    let plain = bed.cache.join("plain");
    std::fs::create_dir(&plain).expect("dir");
    let link = bed.dir.path().join("link");
    std::os::unix::fs::symlink(&source, &link).expect("link");
    let elsewhere = bed.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("dir");
    // A subvolume of another btrfs filesystem.
    let other_image = bed.dir.path().join("other.img");
    std::fs::File::create(&other_image)
        .and_then(|f| f.set_len(256 * MIB))
        .expect("image");
    run("mkfs.btrfs", &["-q", other_image.to_str().unwrap()]);
    let other_mount = bed.dir.path().join("other");
    std::fs::create_dir(&other_mount).expect("dir");
    run(
        "mount",
        &[
            "-o",
            "loop",
            other_image.to_str().unwrap(),
            other_mount.to_str().unwrap(),
        ],
    );
    let foreign = other_mount.join("sub");
    run("btrfs", &["subvolume", "create", foreign.to_str().unwrap()]);
    let before = bed.state();
    for (from, why) in [
        (foreign.clone(), "it is not on pool"),
        (plain.clone(), "not the root of a subvolume"),
        (link.clone(), "symbolic link"),
        (PathBuf::from("relative/path"), "not an absolute path"),
        (bed.cache.join("missing"), "No such file"),
        (elsewhere.clone(), "not the root of a subvolume"),
    ] {
        let (status, message) = refusal(snapshot("c9-other", &from));
        assert_eq!(status, 400, "{from:?}: {message}");
        assert!(message.contains(why), "{from:?}: {message}");
    }
    let as_snapshot = VdiskRequest {
        pool: label.clone(),
        size: 64 * MIB,
        snapshot_of: Some(source.clone()),
    };
    let (status, message) = refusal(bed.block(bed.client().ensure_vdisk("c9-disk", &as_snapshot)));
    assert_eq!(status, 400, "{message}");
    assert!(
        message.contains("a vdisk cannot start as a snapshot"),
        "{message}"
    );
    assert_eq!(bed.state(), before, "a refusal changes nothing");
    run("umount", &["-d", other_mount.to_str().unwrap()]);

    bed.delete_volume("c9-root").expect("deleted");
    assert!(!view.path.exists());
    assert_eq!(
        std::fs::read(source.join("bin/app")).unwrap(),
        b"image bytes"
    );
}
