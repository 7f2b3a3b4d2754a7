//! The testbed tested for real: namespaces, veths, bridges, dnsmasq, loop
//! devices and a stand-in agent on this host. These tests need root.
//!
//! Each test builds its own farm; the leak check holds a write lock on
//! [`HOST`] so no other farm of this binary exists while it compares host
//! snapshots, the others share a read lock and run in parallel (which also
//! exercises subnet allocation under contention). Limits: the real `agent`
//! is not started here (see `stand_in_agent`); `udhcpc` (busybox) and
//! `sfdisk` must be installed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use grove_testbed::loopdev::Detached;
use grove_testbed::{
    Addressing, Daemon, DiskSpec, Farm, FarmSpec, HostSnapshot, LanSpec, NicSpec, NodeSpec, Subnet,
    wait_until,
};

/// Farms of this test binary; the leak check takes it exclusively.
static HOST: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    require_root();
    HOST.read().unwrap_or_else(PoisonError::into_inner)
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    require_root();
    HOST.write().unwrap_or_else(PoisonError::into_inner)
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the grove-testbed integration tests need root: they create network namespaces, \
         veths, bridges and loop devices (run `sudo cargo test -p grove-testbed`)"
    );
}

/// An executable shell script `name` in `dir` running `body`.
fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Nothing of farm run `run` is left: no namespace of its, no host link.
fn assert_run_gone(run: &str) {
    let namespaces = grove_testbed::netns::list().expect("list");
    assert!(
        !namespaces
            .iter()
            .any(|n| n.starts_with(&format!("gtb-{run}-"))),
        "{namespaces:?}"
    );
    assert!(
        !Path::new("/sys/class/net")
            .join(format!("gtb{run}h0"))
            .exists()
    );
}

fn text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn read_sys(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// Opens a TCP listener on `ip` inside `node`, connects to it from `client`
/// (or from the host when `None`) and checks that bytes flow.
fn tcp_works(server: &grove_testbed::Node, ip: Ipv4Addr, client: Option<&grove_testbed::Node>) {
    let listener = server
        .in_netns(|| TcpListener::bind((ip, 0)))
        .expect("enter server netns")
        .expect("bind in server node");
    let addr: SocketAddr = listener.local_addr().expect("listener address");
    let connect = move || -> std::io::Result<()> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.write_all(b"ping")
    };
    let sent = match client {
        Some(node) => node.in_netns(connect).expect("enter client netns"),
        None => connect(),
    };
    sent.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let (mut conn, _) = listener.accept().expect("accept");
    let mut got = [0u8; 4];
    conn.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"ping");
}

#[test]
fn two_nodes_with_two_nics_and_two_disks_leave_nothing_behind() {
    let _host = exclusive();
    let before = HostSnapshot::take().expect("snapshot before");
    let node = NodeSpec::default()
        .nics(vec![
            NicSpec::on_lan(0),
            NicSpec::on_lan(0).without_carrier(),
        ])
        .disks(vec![DiskSpec::hdd(64), DiskSpec::ssd(32)]);
    let mut farm =
        Farm::start(FarmSpec::with_nodes(vec![node; 2]).without_agents()).expect("farm starts");
    let run = farm.run_id().to_owned();

    let namespaces = grove_testbed::netns::list().expect("list netns");
    for ns in [
        format!("gtb-{run}-lan"),
        format!("gtb-{run}-n0"),
        format!("gtb-{run}-n1"),
    ] {
        assert!(namespaces.contains(&ns), "{ns} missing from {namespaces:?}");
    }

    for node in farm.nodes() {
        let carrier = |nic: &str| {
            let out = node
                .exec_in_netns(&["cat", &format!("/sys/class/net/{nic}/carrier")])
                .expect("cat runs");
            text(&out)
        };
        assert_eq!(carrier("eth0"), "1", "{} eth0 has carrier", node.name());
        assert_eq!(carrier("eth1"), "0", "{} eth1 has no carrier", node.name());
        let link = node
            .exec_in_netns(&["ip", "link", "show", "eth1"])
            .expect("ip runs");
        assert!(text(&link).contains("NO-CARRIER"), "{}", text(&link));

        let [hdd, ssd] = node.disks() else {
            panic!("{} has {} disks", node.name(), node.disks().len());
        };
        for (disk, rotational, mb) in [(hdd, "1", 64u64), (ssd, "0", 32)] {
            let sys = Path::new("/sys/block").join(disk.path().file_name().expect("loopN"));
            assert_eq!(
                read_sys(sys.join("queue/rotational")),
                rotational,
                "{}",
                disk.path().display()
            );
            let sectors: u64 = read_sys(sys.join("size")).parse().expect("sectors");
            assert_eq!(sectors * 512, mb * 1024 * 1024);
            assert_eq!(disk.size_bytes(), mb * 1024 * 1024);
            assert_eq!(
                read_sys(sys.join("loop/backing_file")),
                disk.file().display().to_string()
            );
        }
    }

    let subnet = farm.lan_subnet();
    let ip0 = farm.node(0).lan_ip().expect("static address");
    let ip1 = farm.node(1).lan_ip().expect("static address");
    assert_eq!((ip0, ip1), (subnet.host(10), subnet.host(11)));
    assert_eq!(farm.host_ip(), subnet.host(254));
    assert_eq!(
        farm.node(0).api_url().expect("url"),
        format!("http://{ip0}:8080")
    );
    tcp_works(farm.node(1), ip1, Some(farm.node(0)));
    tcp_works(farm.node(0), ip0, None);

    let lan = farm.lan(0);
    let pid = lan.dnsmasq_pid().expect("dnsmasq runs on the farm LAN");
    assert_eq!(grove_testbed::proc::comm(pid).as_deref(), Some("dnsmasq"));
    let sockets =
        grove_testbed::cmd::run("ip", &["netns", "exec", lan.netns(), "ss", "-H", "-lunp"])
            .expect("ss runs");
    for port in [":67 ", ":53 "] {
        assert!(
            sockets
                .lines()
                .any(|l| l.contains(port) && l.contains("dnsmasq")),
            "dnsmasq not on UDP{port}in\n{sockets}"
        );
    }

    farm.teardown().expect("clean teardown");
    farm.teardown().expect("a second teardown is a no-op");
    let changed = before.changed_since().expect("snapshot after");
    assert!(changed.is_empty(), "the farm left traces:\n{changed}");
}

#[test]
fn dnsmasq_leases_an_address_to_an_unaddressed_node() {
    let _host = shared();
    let udhcpc = grove_testbed::cmd::resolve("udhcpc");
    assert!(
        udhcpc.is_absolute(),
        "this test needs `udhcpc` (Debian package udhcpc or busybox) as a DHCP client"
    );
    let spec = FarmSpec::with_nodes(vec![NodeSpec::default().addressing(Addressing::None)])
        .without_agents();
    let farm = Farm::start(spec).expect("farm starts");
    let node = farm.node(0);
    assert!(node.lan_ip().is_err(), "no address before DHCP");

    let script_dir = tempfile::tempdir().unwrap();
    let script = script(
        &script_dir,
        "bound.sh",
        "[ \"$1\" = bound ] && ip addr add \"$ip/${mask:-24}\" dev \"$interface\"\nexit 0\n",
    );
    let up = node
        .exec_in_netns(&["ip", "link", "set", "eth0", "up"])
        .expect("ip runs");
    assert!(up.status.success());
    let script_path = script.to_str().expect("utf-8 path");
    let udhcpc_path = udhcpc.to_str().expect("utf-8 path");
    let dhcp = node
        .exec_in_netns(&[
            udhcpc_path,
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "5",
            "-T",
            "2",
            "-s",
            script_path,
        ])
        .expect("udhcpc runs");
    assert!(
        dhcp.status.success(),
        "udhcpc failed: {}\n{}\n{}",
        String::from_utf8_lossy(&dhcp.stderr),
        text(&dhcp),
        farm.logs(20)
    );

    let ip = node.lan_ip().expect("address from DHCP");
    let (first, last) = farm.lan_subnet().dhcp_range();
    assert!(ip >= first && ip <= last, "{ip} outside {first}-{last}");
    let mac = node.nics()[0].mac();
    assert_eq!(
        farm.lan(0).lease_for(mac),
        Some(ip),
        "lease file: {:?}",
        farm.lan(0).leases()
    );
    tcp_works(node, ip, None);
}

#[test]
fn an_extra_lan_has_no_dhcp_and_its_own_bridge() {
    let _host = shared();
    let node = NodeSpec::default().nics(vec![NicSpec::on_lan(1), NicSpec::on_lan(0)]);
    let spec = FarmSpec::with_nodes(vec![node])
        .lan(LanSpec::without_dhcp())
        .without_agents();
    let farm = Farm::start(spec).expect("farm starts");
    assert!(farm.lan(0).dnsmasq_pid().is_some());
    assert!(farm.lan(1).dnsmasq_pid().is_none());
    assert_ne!(farm.lan(0).subnet(), farm.lan(1).subnet());

    let node = farm.node(0);
    let ports = |bridge: &str| {
        grove_testbed::cmd::run(
            "ip",
            &[
                "-n",
                farm.lan(0).netns(),
                "-o",
                "link",
                "show",
                "master",
                bridge,
            ],
        )
        .expect("ip runs")
    };
    assert!(ports("br1").contains("n0e0@"), "{}", ports("br1"));
    assert!(ports("br0").contains("n0e1@"), "{}", ports("br0"));

    let addrs = node
        .exec_in_netns(&["ip", "-4", "-o", "addr", "show", "eth1"])
        .expect("ip runs");
    let ip = node.lan_ip().expect("static address");
    assert!(
        text(&addrs).contains(&format!("{ip}/24")),
        "static address on eth1: {}",
        text(&addrs)
    );
    tcp_works(node, ip, None);
}

#[test]
fn cables_can_be_pulled_and_plugged() {
    let _host = shared();
    let node = NodeSpec::default().nics(vec![
        NicSpec::default(),
        NicSpec::default().without_carrier(),
    ]);
    let farm = Farm::start(FarmSpec::with_nodes(vec![node]).without_agents()).expect("farm starts");
    let node = farm.node(0);
    let carrier = |nic: &str| {
        let out = node
            .exec_in_netns(&["cat", &format!("/sys/class/net/{nic}/carrier")])
            .expect("cat runs");
        text(&out)
    };
    let settles = |nic: &str, want: &str| {
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            carrier(nic) == want
        })
    };
    assert!(settles("eth1", "0"));
    node.nic_set_carrier(1, true).expect("plug");
    assert!(node.nics()[1].carrier());
    assert!(settles("eth1", "1"));
    node.nic_set_carrier(0, false).expect("pull");
    assert!(settles("eth0", "0"));
    assert!(
        node.nic_set_carrier(2, true).is_err(),
        "there is no third NIC"
    );
}

#[test]
fn disks_can_hold_ext4_or_an_empty_gpt_and_can_vanish() {
    let _host = shared();
    let node = NodeSpec::default().disks(vec![
        DiskSpec::ssd(64),
        DiskSpec::hdd(16),
        DiskSpec::ssd(16),
    ]);
    let farm = Farm::start(FarmSpec::with_nodes(vec![node]).without_agents()).expect("farm starts");
    let [ext4, gpt, doomed] = farm.node(0).disks() else {
        panic!("three disks expected");
    };

    ext4.format_ext4_with_file("data/hello.txt", b"hello grove\n")
        .expect("ext4 with a file");
    let dev = ext4.path().to_str().unwrap();
    let kind =
        grove_testbed::cmd::run("blkid", &["-o", "value", "-s", "TYPE", dev]).expect("blkid");
    assert_eq!(kind.trim(), "ext4");
    let content =
        grove_testbed::cmd::run("debugfs", &["-R", "cat /data/hello.txt", dev]).expect("debugfs");
    assert_eq!(content, "hello grove\n");
    assert!(ext4.format_ext4_with_file("../escape", b"x").is_err());
    assert!(ext4.format_ext4_with_file("/abs", b"x").is_err());

    gpt.write_empty_gpt().expect("empty gpt");
    let dev = gpt.path().to_str().unwrap();
    let table = grove_testbed::cmd::run("sfdisk", &["--dump", dev]).expect("sfdisk --dump");
    assert!(table.contains("label: gpt"), "{table}");
    assert!(!table.contains("start="), "no partitions expected: {table}");

    // A disk in use cannot leave at once: it shows no media, then goes when
    // released.
    let sys = Path::new("/sys/block").join(ext4.path().file_name().expect("loopN"));
    let held = std::fs::File::open(ext4.path()).expect("open the device");
    assert_eq!(
        ext4.detach().expect("detach busy disk"),
        Detached::Autoclear
    );
    assert_eq!(read_sys(sys.join("size")), "0");
    drop(held);
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || !sys
            .join("loop/backing_file")
            .exists()),
        "released busy disk was not freed"
    );

    let device = doomed.path().to_owned();
    doomed.detach().expect("detach");
    assert!(!doomed.is_attached());
    let backing = Path::new("/sys/block")
        .join(device.file_name().expect("loopN"))
        .join("loop/backing_file");
    assert!(!backing.exists(), "{} still attached", device.display());
    assert!(
        doomed.write_empty_gpt().is_err(),
        "a detached disk refuses writes"
    );
}

/// Formatting used to mount the new filesystem to write its file, and a
/// child that another thread forked while the file was open held a copy of
/// its descriptor until it exec'd, so the unmount failed with EBUSY whenever
/// other tests of this binary happened to spawn a tool just then. Here a
/// thread spawns children without pause while one disk is formatted again
/// and again.
#[test]
fn ext4_content_is_written_while_other_threads_spawn_children() {
    const ROUNDS: usize = 20;
    let _host = shared();
    let node = NodeSpec::default().disks(vec![DiskSpec::ssd(16)]);
    let farm = Farm::start(FarmSpec::with_nodes(vec![node]).without_agents()).expect("farm starts");
    let [disk] = farm.node(0).disks() else {
        panic!("one disk expected");
    };
    let done = AtomicBool::new(false);
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                std::process::Command::new("true")
                    .status()
                    .expect("`true` runs");
            }
        });
        let outcomes = (0..ROUNDS)
            .map(|round| disk.format_ext4_with_file(&format!("round-{round}.txt"), b"farmer data"))
            .collect();
        done.store(true, Ordering::SeqCst);
        outcomes
    });
    for (round, outcome) in outcomes.iter().enumerate() {
        assert!(outcome.is_ok(), "round {round}: {outcome:?}");
    }
    let dev = disk.path().to_str().unwrap();
    let last = format!("cat /round-{}.txt", ROUNDS - 1);
    let content = grove_testbed::cmd::run("debugfs", &["-R", &last, dev]).expect("debugfs");
    assert_eq!(content, "farmer data");
}

/// A stand-in for `agent`: records its boot in /run, leaves a child
/// behind, and sleeps.
const FAKE_AGENT: &str = "#!/bin/sh\n\
    echo \"fake agent up: $*\"\n\
    mkdir -p /run/grove\n\
    echo boot >> /run/grove/boots\n\
    sleep 1000 &\n\
    exec sleep 1000\n";

#[test]
fn stand_in_agent_runs_inside_the_node_and_dies_with_it() {
    let _host = shared();
    let bin = tempfile::tempdir().unwrap();
    let agent = bin.path().join("agent");
    std::fs::write(&agent, FAKE_AGENT).expect("write fake agent");
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Started by hand: the stand-in never opens the API `Farm::start` waits for.
    let spec = FarmSpec::with_nodes(vec![
        NodeSpec::default().cmdline("grove.farm=1 grove.test=yes"),
    ])
    .bin_dir(bin.path())
    .without_agents();
    let farm = Farm::start(spec).expect("farm starts");
    let node = farm.node(0);
    assert_eq!(node.agent_pid(), None);
    node.start_agent().expect("agent starts");
    let run = |argv: &[&str]| {
        let out = node.exec(argv).expect("nsenter runs");
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text(&out)
    };
    let booted = |count: usize| {
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            node.exec(&["cat", "/run/grove/boots"])
                .is_ok_and(|out| text(&out).lines().count() == count)
        })
    };
    assert!(booted(1), "agent did not boot:\n{}", farm.logs(20));

    assert_eq!(
        run(&["cat", "/etc/grove/cmdline"]),
        "grove.farm=1 grove.test=yes"
    );
    assert!(run(&["cat", "/etc/grove/agent.toml"]).contains("listen = \"0.0.0.0:8080\""));
    for dir in ["/run", "/var/cache", "/mnt"] {
        assert_eq!(run(&["stat", "-f", "-c", "%T", dir]), "tmpfs", "{dir}");
    }
    assert_eq!(run(&["ls", "/sys/class/net"]), "eth0\nlo");
    assert!(
        !Path::new("/run/grove/boots").exists(),
        "the host's /run is untouched"
    );
    let host_cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .expect("host cgroups")
        .count();
    let node_cgroups = run(&["ls", "-A", "/sys/fs/cgroup"]).lines().count();
    assert_eq!(
        node_cgroups, host_cgroups,
        "cgroup mounts carried into the node"
    );
    node.set_cmdline("grove.farm=2").expect("rewrite cmdline");
    assert_eq!(run(&["cat", "/etc/grove/cmdline"]), "grove.farm=2");
    node.set_config(Daemon::Netd, "[uplink]\n")
        .expect("netd config");
    assert_eq!(run(&["cat", "/etc/grove/netd.toml"]), "[uplink]");

    let pid = node.agent_pid().expect("agent runs");
    let socket = node.socket(Daemon::Storaged).expect("socket path");
    assert_eq!(
        socket,
        Path::new(&format!("/proc/{pid}/root/run/grove/storaged.sock"))
    );
    let boots = Path::new(&format!("/proc/{pid}/root/run/grove/boots")).to_owned();
    assert_eq!(read_sys(&boots), "boot", "host reaches the node's /run");
    let log = std::fs::read_to_string(node.agent_log()).expect("agent log");
    assert!(
        log.contains("fake agent up: --config /etc/grove/agent.toml --cmdline /etc/grove/cmdline"),
        "{log}"
    );
    assert!(
        node.start_agent().is_err(),
        "a running agent is not started twice"
    );

    let in_node = || grove_testbed::netns::pids(node.netns()).len();
    assert!(
        wait_until(
            Duration::from_secs(5),
            Duration::from_millis(20),
            || in_node() == 2
        ),
        "agent and its child expected, found {}",
        in_node()
    );
    node.stop_agent().expect("stop");
    assert_eq!(node.agent_pid(), None);
    assert_eq!(in_node(), 0, "the left-behind child died with the node");
    assert!(
        node.exec(&["true"]).is_err(),
        "no agent, no mount namespace to enter"
    );

    node.start_agent().expect("restart");
    assert!(booted(1), "a reboot has a fresh /run:\n{}", farm.logs(20));
    node.kill_agent().expect("power loss");
    assert_eq!(in_node(), 0);
    let status = node.agent_exit().expect("exit recorded");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

#[test]
fn an_agent_that_exits_at_boot_fails_the_farm_naming_its_log() {
    let _host = shared();
    let bin = tempfile::tempdir().unwrap();
    script(
        &bin,
        "agent",
        "echo 'refusing configuration' >&2\nexit 64\n",
    );
    let err = Farm::start(FarmSpec::nodes(1).bin_dir(bin.path())).expect_err("agent exits");
    let message = grove_testbed::report(&err);
    assert!(message.contains("exit status: 64"), "{message}");
    assert!(message.contains("agent.log"), "{message}");
}

#[test]
fn missing_agent_binary_is_named() {
    let _host = shared();
    let empty = tempfile::tempdir().unwrap();
    let err = Farm::start(FarmSpec::default().bin_dir(empty.path())).expect_err("no agent there");
    let message = grove_testbed::report(&err);
    assert!(
        message.contains("cargo build --workspace --bins"),
        "{message}"
    );
    assert!(
        message.contains(&empty.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn stale_farms_are_cleaned() {
    let _host = shared();
    // No dnsmasq and no agent: the forgotten farm leaves no child to reap.
    let spec = FarmSpec {
        lans: vec![LanSpec::without_dhcp()],
        ..FarmSpec::with_nodes(vec![NodeSpec::default().disk(DiskSpec::ssd(16))]).without_agents()
    };
    let farm = Farm::start(spec).expect("farm starts");
    let run = farm.run_id().to_owned();
    let dir = farm.dir().to_owned();
    let image = farm.node(0).disks()[0].file().to_owned();
    // An owner record no live process matches: the farm's process "died".
    std::fs::write(
        dir.join("owner"),
        format!("{} {}\n", std::process::id(), u64::MAX),
    )
    .expect("owner");
    // A mount under the run directory, as a test that mounted a disk and
    // died would leave.
    let scratch = dir.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &scratch,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount tmpfs");
    std::mem::forget(farm);

    let cleaned = grove_testbed::clean_stale().expect("clean");
    assert!(
        cleaned.iter().any(|r| r.as_str() == run),
        "{run} not in {cleaned:?}"
    );
    assert_run_gone(&run);
    assert!(!dir.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(scratch.to_str().unwrap()), "{mounts}");
    let loops = grove_testbed::loopdev::list();
    assert!(
        !loops
            .iter()
            .any(|(_, b)| b.starts_with(image.to_str().unwrap())),
        "{loops:?}"
    );
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let _host = shared();
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let farm = Farm::start(FarmSpec::nodes(1).without_agents()).expect("farm starts");
        tx.send((farm.run_id().to_owned(), farm.dir().to_owned()))
            .expect("send");
        panic!("deliberate panic with farm {} alive", farm.run_id());
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let (run, dir) = rx.recv().expect("run id");
    assert_run_gone(&run);
    assert!(!dir.exists(), "{} removed", dir.display());
}

#[test]
fn subnets_are_distinct_across_concurrent_farms() {
    let _host = shared();
    let farms: Vec<Farm> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| Farm::start(FarmSpec::nodes(1).without_agents()).expect("farm starts"))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut subnets: Vec<Subnet> = farms.iter().map(Farm::lan_subnet).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3, "{subnets:?}");
    for mut farm in farms {
        farm.teardown().expect("clean teardown");
    }
}
