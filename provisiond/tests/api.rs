//! provisiond's socket API over a real Unix socket, with the engine on a
//! fake node: the answers and their status codes, bad bodies refused with
//! a clear error, and no private key in any answer.

mod common;

use std::time::Duration;

use common::*;
use grove_daemon::client::{ClientError, SocketClient};
use grove_daemon::shutdown::Shutdown;
use hyper::Method;
use provisiond::api::DeploymentState;
use provisiond::capacity::GIB;
use provisiond::client::ProvisiondClient;

fn status(error: &ClientError) -> u16 {
    match error {
        ClientError::Status { status, .. } => status.as_u16(),
        other => panic!("not an answer: {other}"),
    }
}

#[tokio::test]
async fn the_api_answers_with_the_right_codes_and_never_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeNode::default();
    let engine = start(&dir.path().join("s.redb"), &fake, 10).await;
    let socket = dir.path().join("provisiond.sock");
    let shutdown = Shutdown::new();
    let server = {
        let (socket, routes, shutdown) = (
            socket.clone(),
            provisiond::server::routes(engine.clone()),
            shutdown.clone(),
        );
        tokio::spawn(
            async move { grove_daemon::server::serve_unix(&socket, routes, shutdown).await },
        )
    };
    let client = ProvisiondClient::new(&socket);
    let raw = SocketClient::new(&socket);
    let up = tokio::time::timeout(Duration::from_secs(10), async {
        while client.capacity().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(up.is_ok(), "the socket never answered");

    let wire = signed(
        7,
        1,
        0,
        vec![network(0, "net", 3000), zmount(0, "disk", GIB)],
    );
    let view = client.deploy(&submission(&wire)).await.expect("202");
    assert_eq!(view.state, DeploymentState::Deploying);
    settle(&engine, 1).await;
    let view = client.deployment(1).await.expect("200");
    assert_eq!(view.state, DeploymentState::Ok);
    assert_eq!(client.deployments(Some(7)).await.expect("list").len(), 1);
    assert!(client.deployments(Some(8)).await.expect("list").is_empty());
    assert!(!client.changes(1).await.expect("changes").is_empty());
    let capacity = client.capacity().await.expect("capacity");
    assert_eq!(capacity.used.sru, GIB);
    assert_eq!(capacity.wireguard_ports, vec![3000]);
    assert_eq!(capacity.pools[0].used, GIB);
    let usage = client.usage().await.expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].sru, GIB);

    // No answer holds the private key.
    for uri in [
        "/v1/deployments",
        "/v1/deployments/1",
        "/v1/deployments/1/changes",
    ] {
        let (_, body) = raw.raw(Method::GET, uri, None).await.expect("answers");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains(&wg_key(9)), "{uri}: {text}");
    }

    // Refusals: each a clear status and text; nothing changes.
    let again = client.deploy(&submission(&wire)).await.expect_err("exists");
    assert_eq!(status(&again), 409);
    let big = signed(7, 2, 0, vec![zmount(0, "big", 20 * GIB)]);
    let error = client.deploy(&submission(&big)).await.expect_err("too big");
    assert_eq!(status(&error), 507);
    assert!(error.to_string().contains("20 GiB"), "{error}");
    let mut forged = submission(&big);
    forged.twins[0].account_key = "00".repeat(32);
    assert_eq!(
        status(&client.deploy(&forged).await.expect_err("forged")),
        403
    );
    assert_eq!(status(&client.deployment(9).await.expect_err("none")), 404);
    for (body, want) in [
        (b"{not json".to_vec(), 400),
        (b"{\"deployment\": 5}".to_vec(), 400),
        (vec![b' '; 2 << 20], 413),
    ] {
        let (code, answer) = raw
            .raw(Method::POST, "/v1/deployments", Some(body))
            .await
            .expect("answers");
        assert_eq!(code.as_u16(), want, "{}", String::from_utf8_lossy(&answer));
    }
    let (code, _) = raw
        .raw(Method::PUT, "/v1/node", Some(b"{\"node_id\": 99}".to_vec()))
        .await
        .expect("answers");
    assert_eq!(code.as_u16(), 409, "the node id does not change");
    assert_eq!(client.deployments(None).await.expect("list").len(), 1);
    assert_eq!(client.capacity().await.expect("capacity").used.sru, GIB);

    let view = client.remove(1).await.expect("202");
    assert_eq!(view.state, DeploymentState::Deleting);
    settle(&engine, 1).await;
    assert_eq!(client.capacity().await.expect("capacity").used.sru, 0);
    shutdown.trigger();
    server.await.expect("joins").expect("serves");
    engine.shutdown().await;
}
