//! The socket server and client against each other on a real Unix socket.

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use grove_daemon::client::{ClientError, SocketClient};
use grove_daemon::server::{self, ApiError, Identity, Readiness};
use grove_daemon::shutdown::Shutdown;

async fn wait_for_socket(client: &SocketClient) {
    for _ in 0..200 {
        if client.ready().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("socket {} never answered", client.path().display());
}

#[tokio::test]
async fn standard_routes_answer_and_shutdown_removes_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/grove/test.sock");
    let readiness = Readiness::waiting("disks");
    let app = server::standard_routes(Identity::new("testd", "9.9.9"), readiness.clone()).route(
        "/v1/fail",
        get(|| async { Err::<(), _>(ApiError::new(StatusCode::CONFLICT, "volume x exists")) }),
    );
    let shutdown = Shutdown::new();
    let task = tokio::spawn({
        let (path, shutdown) = (path.clone(), shutdown.clone());
        async move { server::serve_unix(&path, app, shutdown).await }
    });
    let client = SocketClient::new(&path);
    wait_for_socket(&client).await;

    let report = client.ready().await.expect("ready answers");
    assert!(!report.ready);
    assert_eq!(report.waiting_for.as_deref(), Some("disks"));
    readiness.set_ready();
    assert!(client.ready().await.expect("ready").ready);

    let info = client.info().await.expect("info");
    assert_eq!(info.name, "testd");
    assert_eq!(info.version, "9.9.9");
    assert_eq!(info.pid, std::process::id());

    match client.get::<serde_json::Value>("/v1/fail").await {
        Err(ClientError::Status {
            status, message, ..
        }) => {
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(message, "volume x exists");
        }
        other => panic!("expected a 409, got {other:?}"),
    }

    // A second server must not steal a live socket.
    let err = server::bind_unix(&path).await.expect_err("socket in use");
    assert!(matches!(err, server::ServerError::InUse { .. }), "{err}");

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops within the grace period")
        .expect("join")
        .expect("serve");
    assert!(!path.exists(), "socket file removed on shutdown");
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let listener = server::bind_unix(&path)
        .await
        .expect("stale socket replaced");
    drop(listener);
}

#[tokio::test]
async fn connect_error_names_the_socket() {
    let client = SocketClient::new("/nonexistent/grove.sock");
    let err = client.ready().await.expect_err("no server");
    assert!(err.to_string().contains("/nonexistent/grove.sock"), "{err}");
}
