//! A typed HTTP/1.1 + JSON client for a daemon's Unix socket.
//!
//! One connection per request: the daemons' APIs are low-rate control
//! calls, so simplicity beats pooling. Every call has a deadline, and a non-2xx
//! answer becomes [`ClientError::Status`] carrying the server's message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::server::{ErrorBody, Info, ReadyReport};

/// Why a call to a daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {path} failed: {source}")]
    Http {
        path: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("bad request to {path}: {source}")]
    Build {
        path: PathBuf,
        #[source]
        source: hyper::http::Error,
    },
    #[error("{path} did not answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("{path} answered {status}: {message}")]
    Status {
        path: PathBuf,
        status: StatusCode,
        message: String,
    },
    #[error("cannot decode the answer of {path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode the request to {path}: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A client for one daemon socket (or, for the operator API, one TCP
/// address; then `path` names that address in errors).
#[derive(Clone, Debug)]
pub struct SocketClient {
    path: PathBuf,
    tcp: Option<String>,
    timeout: Duration,
}

impl SocketClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            tcp: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// A client for an HTTP server at `host:port`.
    pub fn tcp(address: &str) -> Self {
        Self {
            path: PathBuf::from(address),
            tcp: Some(address.to_owned()),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request; answers the status and the raw body.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.raw_with_headers(method, uri, &[], body).await
    }

    /// Sends one request with extra headers (a signature, say); answers
    /// the status and the raw body.
    pub async fn raw_with_headers(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, "localhost");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| ClientError::Build {
                path: self.path.clone(),
                source,
            })?;
        tokio::time::timeout(self.timeout, self.exchange(req))
            .await
            .map_err(|_elapsed| ClientError::Timeout {
                path: self.path.clone(),
                timeout: self.timeout,
            })?
    }

    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let http = |source| ClientError::Http {
            path: self.path.clone(),
            source,
        };
        let connect = |source| ClientError::Connect {
            path: self.path.clone(),
            source,
        };
        let (mut sender, conn) = match &self.tcp {
            Some(address) => handshake(
                tokio::net::TcpStream::connect(address)
                    .await
                    .map_err(connect)?,
            )
            .await
            .map_err(http)?,
            None => handshake(
                tokio::net::UnixStream::connect(&self.path)
                    .await
                    .map_err(connect)?,
            )
            .await
            .map_err(http)?,
        };
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
        conn.abort();
        Ok((status, bytes))
    }

    /// Sends a JSON request and decodes a JSON answer; non-2xx is an error.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body =
            body.map(serde_json::to_vec)
                .transpose()
                .map_err(|source| ClientError::Encode {
                    path: self.path.clone(),
                    source,
                })?;
        let (status, bytes) = self.raw(method, uri, body).await?;
        self.decode(status, &bytes)
    }

    /// Sends `body` (already encoded JSON) with extra headers and decodes a
    /// JSON answer; non-2xx is an error.
    pub async fn call_with_headers<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self
            .raw_with_headers(method, uri, headers, Some(body))
            .await?;
        self.decode(status, &bytes)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        status: StatusCode,
        bytes: &[u8],
    ) -> Result<T, ClientError> {
        if !status.is_success() {
            return Err(self.refusal(status, bytes));
        }
        serde_json::from_slice(bytes).map_err(|source| ClientError::Decode {
            path: self.path.clone(),
            source,
        })
    }

    /// A non-2xx answer as an error: the daemon's `{"error"}` text, or the
    /// body as it came.
    fn refusal(&self, status: StatusCode, bytes: &[u8]) -> ClientError {
        let message = serde_json::from_slice::<ErrorBody>(bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_not_json| String::from_utf8_lossy(bytes).into_owned());
        ClientError::Status {
            path: self.path.clone(),
            status,
            message,
        }
    }

    /// GETs a plain-text answer (a log); non-2xx is an error.
    pub async fn get_text(&self, uri: &str) -> Result<String, ClientError> {
        let (status, bytes) = self.raw(Method::GET, uri, None).await?;
        if !status.is_success() {
            return Err(self.refusal(status, &bytes));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn get<T: DeserializeOwned>(&self, uri: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, uri, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        uri: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, uri, Some(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        uri: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::PUT, uri, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, uri: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::DELETE, uri, None).await
    }

    /// `/ready`: `Ok(report)` whether ready or not; an error only when the
    /// daemon does not answer.
    pub async fn ready(&self) -> Result<ReadyReport, ClientError> {
        let (_status, bytes) = self.raw(Method::GET, "/ready", None).await?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: self.path.clone(),
            source,
        })
    }

    pub async fn info(&self) -> Result<Info, ClientError> {
        self.get("/v1/info").await
    }
}

/// An HTTP/1.1 connection over `stream`, driven by its own task.
async fn handshake<S>(
    stream: S,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
    ),
    hyper::Error,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    Ok((sender, tokio::spawn(conn)))
}

/// A daemon's typed client `$client`, reaching daemon `$name` (its crate's
/// `NAME`) at its socket under [`crate::RUN_DIR`] by default: the
/// constructor, the timeout and the standard `/ready` and `/info` calls
/// every daemon answers. The daemon's crate adds its own calls in an
/// `impl` of its own, through the `socket` field.
#[macro_export]
macro_rules! daemon_client {
    ($(#[$doc:meta])* $client:ident, $name:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $client {
            socket: $crate::client::SocketClient,
        }

        impl Default for $client {
            fn default() -> Self {
                Self::new($crate::socket_path($name))
            }
        }

        impl $client {
            /// A client of the daemon listening on `socket`.
            pub fn new(socket: impl Into<::std::path::PathBuf>) -> Self {
                Self {
                    socket: $crate::client::SocketClient::new(socket),
                }
            }

            /// Bounds every call to `timeout`.
            pub fn with_timeout(mut self, timeout: ::std::time::Duration) -> Self {
                self.socket = self.socket.with_timeout(timeout);
                self
            }

            /// `GET /ready`.
            pub async fn ready(
                &self,
            ) -> Result<$crate::server::ReadyReport, $crate::client::ClientError> {
                self.socket.ready().await
            }

            /// `GET /v1/info`.
            pub async fn info(&self) -> Result<$crate::server::Info, $crate::client::ClientError> {
                self.socket.info().await
            }
        }
    };
}
