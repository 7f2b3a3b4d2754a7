//! The farmer's side of a signed request, as the tests play it: keys made
//! and requests signed with `agent sign`, the CLI a farmer runs.
//!
//! Each function runs the agent binary the farm's nodes run and answers
//! what it printed. Limit: it panics when the CLI fails, as a test should.

#![allow(dead_code)]

use std::path::Path;

/// Runs `agent sign` with `args`.
fn sign(args: &[&str]) -> String {
    let mut argv = vec!["sign"];
    argv.extend_from_slice(args);
    grove_testbed::cmd::agent_cli(&argv).expect("the agent CLI answers")
}

fn text(key: &Path) -> &str {
    key.to_str().expect("a key path in UTF-8")
}

/// Makes a key at `key`; answers its account.
pub fn new_key(key: &Path) -> String {
    sign(&["new-key", "--key", text(key)])
}

/// `agent sign request` by the key at `key` for `POST path` on the node of
/// account `node`, with `body` as that command takes it (`--body TEXT`,
/// `--body-file PATH`, or nothing for none): curl's `-H` arguments.
pub fn request(key: &Path, node: &str, path: &str, body: &[&str]) -> String {
    let mut args = vec![
        "request",
        "--key",
        text(key),
        "--node",
        node,
        "--path",
        path,
    ];
    args.extend_from_slice(body);
    sign(&args)
}
