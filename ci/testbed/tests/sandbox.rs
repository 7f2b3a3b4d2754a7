//! The sandbox as a farmer starts it: it prints where its farmer key is and
//! how to sign with it, and the printed command reboots that node.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn the_sandbox_prints_its_farmer_key_and_a_signed_reboot_works() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the sandbox creates namespaces and loop devices: run the suite as root (ci/test)"
    );
    let bin = grove_testbed::bin_dir().expect("binaries");
    let mut sandbox = Command::new(bin.join("sandbox"))
        .args(["--nodes", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the sandbox starts");
    let stdout = sandbox.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !seen.iter().any(|l: &String| l.starts_with("Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => {
                let _killed = sandbox.kill();
                panic!("the sandbox did not come up ({e}): {seen:#?}");
            }
        }
    }
    let text = seen.join("\n");
    let key = seen
        .iter()
        .find_map(|l| l.strip_prefix("farmer key "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no farmer key printed: {text}"));
    assert!(
        std::path::Path::new(key).exists(),
        "the printed key {key} does not exist"
    );
    let command = seen
        .iter()
        .find_map(|l| l.trim().strip_prefix("n0: "))
        .unwrap_or_else(|| panic!("no signing example printed: {text}"));
    let api = command
        .split(' ')
        .find(|w| w.starts_with("http://"))
        .and_then(|u| u.strip_suffix("/v1/reboot"))
        .expect("the node's API in the example")
        .to_owned();

    let out = Command::new("bash")
        .args([
            "-c",
            &format!("{command} -s -o /dev/null -w %{{http_code}}"),
        ])
        .output()
        .expect("bash runs");
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    let stopped = answer == "202";
    // The node's agent stops for the reboot: its API goes away.
    let gone = stopped
        && grove_testbed::wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            grove_testbed::http_get(&format!("{api}/v1/status")).is_err()
        });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sandbox.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop the sandbox");
    let status = sandbox.wait().expect("the sandbox exits");
    reader.join().expect("reader");
    assert!(
        stopped,
        "the printed command did not reboot: {answer}\n{out:?}"
    );
    assert!(gone, "the node's API still answers after the reboot");
    assert!(
        status.success(),
        "the sandbox failed to tear down: {status}"
    );
}
