//! The suite leaves the host as it found it: namespaces, loop devices,
//! mounts, links and Grove processes. `ci/test` saves a snapshot before the
//! suite and runs this test after it.

use grove_testbed::HostSnapshot;

#[test]
#[ignore = "run by ci/test after the whole suite, with GROVE_HOST_BASELINE naming the snapshot taken before it"]
fn the_suite_leaves_the_host_as_it_found_it() {
    let path = std::env::var_os("GROVE_HOST_BASELINE")
        .expect("GROVE_HOST_BASELINE must name the snapshot ci/test saved before the suite");
    let before = HostSnapshot::load(std::path::Path::new(&path)).expect("baseline loads");
    let changed = before.changed_since().expect("snapshot");
    assert!(
        changed.is_empty(),
        "the suite left the host changed:\n{changed}"
    );
}
