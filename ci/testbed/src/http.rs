//! A minimal blocking HTTP/1.1 client for asking a node's operator API
//! whether it is up, and for a daemon's socket (GET and DELETE, PUT and
//! POST of a JSON body), without an HTTP client dependency.
//!
//! One request per connection with `Connection: close`; the body is
//! delimited by `Content-Length`, chunked encoding, or the end of the
//! stream. Limits: `http://` only, no redirects, no keep-alive, bodies must
//! be UTF-8 and are held in memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// How long a request may take unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A GET that did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`{url}` is not an http://host:port/path URL")]
    BadUrl { url: String },
    #[error("cannot resolve the host of {url}")]
    Resolve {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("exchange with {url} broke off")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed response from {url}")]
    BadResponse {
        url: String,
        #[source]
        source: ResponseError,
    },
    #[error("response body from {url} is not UTF-8")]
    NotUtf8 {
        url: String,
        #[source]
        source: std::string::FromUtf8Error,
    },
}

/// What is wrong with a response.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("it ends inside the {0}")]
    Truncated(&'static str),
    #[error("its headers are not text")]
    HeadNotText(#[source] std::str::Utf8Error),
    #[error("bad status line `{0}`")]
    StatusLine(String),
    #[error("header line without a colon: `{0}`")]
    Header(String),
    #[error("bad Content-Length `{value}`")]
    Length {
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("bad chunk size line `{line}`")]
    ChunkSize {
        line: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

/// GETs `url`, returning the status code and body.
pub fn http_get(url: &str) -> Result<(u16, String), HttpError> {
    http_get_timeout(url, DEFAULT_TIMEOUT)
}

/// GETs `url` with connect, read and write each bounded by `timeout`.
pub fn http_get_timeout(url: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    let (stream, authority, path) = connect(url, timeout)?;
    exchange(stream, url, &authority, &path)
}

/// POSTs to `url` only the head of a request, with `headers` and a body of
/// `length` bytes announced, and none of the body: what a server answers
/// before it reads a body (a stranger's upload, say).
pub fn post_head_only(url: &str, headers: &[(&str, String)], length: u64) -> Answer {
    let (stream, authority, path) = connect(url, DEFAULT_TIMEOUT)?;
    let mut head = format!("Content-Length: {length}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    send(stream, url, &authority, ("POST", &path), None, &head)
}

/// A TCP connection to `url`'s server with connect, read and write each
/// bounded by `timeout`; its authority and path.
fn connect(url: &str, timeout: Duration) -> Result<(TcpStream, String, String), HttpError> {
    let (authority, path) = split_url(url).ok_or_else(|| HttpError::BadUrl {
        url: url.to_owned(),
    })?;
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .map_err(|source| HttpError::Resolve {
            url: url.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| HttpError::BadUrl {
            url: url.to_owned(),
        })?;
    let io = |source| HttpError::Io {
        url: url.to_owned(),
        source,
    };
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| HttpError::Connect {
            url: url.to_owned(),
            source,
        })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    Ok((stream, authority, path))
}

/// A status code and a body.
pub type Answer = Result<(u16, String), HttpError>;

/// GETs `path` from the HTTP server on the Unix socket `socket`, like
/// `curl --unix-socket`.
pub fn unix_get(socket: &Path, path: &str) -> Answer {
    unix_request(socket, "GET", path, None)
}

/// PUTs the JSON `body` to `path` on the Unix socket `socket`.
pub fn unix_put(socket: &Path, path: &str, body: &[u8]) -> Answer {
    unix_request(socket, "PUT", path, Some(body))
}

/// POSTs the JSON `body` to `path` on the Unix socket `socket`.
pub fn unix_post(socket: &Path, path: &str, body: &[u8]) -> Answer {
    unix_request(socket, "POST", path, Some(body))
}

/// DELETEs `path` on the Unix socket `socket`.
pub fn unix_delete(socket: &Path, path: &str) -> Answer {
    unix_request(socket, "DELETE", path, None)
}

/// The headers of the `-H 'name: value'` lines that `agent sign` prints.
pub fn signed_headers(cli_output: &str) -> Vec<(&str, String)> {
    cli_output
        .lines()
        .filter_map(|l| {
            let inner = l.strip_prefix("-H '")?.strip_suffix('\'')?;
            let (name, value) = inner.split_once(": ")?;
            Some((name, value.to_owned()))
        })
        .collect()
}

/// POSTs to `url` through `curl`, with extra `headers` and a JSON `body`
/// (sent on its stdin) if any: for requests as a stranger on the LAN makes
/// them, signed or not.
pub fn curl_post(url: &str, body: Option<&[u8]>, headers: &[(&str, String)]) -> Answer {
    let io = |source| HttpError::Io {
        url: url.to_owned(),
        source,
    };
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-X", "POST", "-w", "\n%{http_code}", url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    if body.is_some() {
        cmd.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    for (name, value) in headers {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    let mut child = cmd.spawn().map_err(io)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body.unwrap_or_default()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    let text = String::from_utf8(out.stdout).map_err(|source| HttpError::NotUtf8 {
        url: url.to_owned(),
        source,
    })?;
    let bad = |line: &str| HttpError::BadResponse {
        url: url.to_owned(),
        source: ResponseError::StatusLine(line.to_owned()),
    };
    let (body, code) = text.rsplit_once('\n').ok_or_else(|| bad(&text))?;
    let code = code
        .parse()
        .map_err(|_not_a_number: std::num::ParseIntError| bad(code))?;
    Ok((code, body.to_owned()))
}

pub(crate) fn unix_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, String), HttpError> {
    let url = format!("unix:{}{path}", socket.display());
    let stream =
        std::os::unix::net::UnixStream::connect(socket).map_err(|source| HttpError::Connect {
            url: url.clone(),
            source,
        })?;
    let io = |source| HttpError::Io {
        url: url.clone(),
        source,
    };
    stream.set_read_timeout(Some(DEFAULT_TIMEOUT)).map_err(io)?;
    stream
        .set_write_timeout(Some(DEFAULT_TIMEOUT))
        .map_err(io)?;
    send(stream, &url, "localhost", (method, path), body, "")
}

/// Sends one GET on `stream` and reads the whole response.
fn exchange(
    stream: impl Read + Write,
    url: &str,
    host: &str,
    path: &str,
) -> Result<(u16, String), HttpError> {
    send(stream, url, host, ("GET", path), None, "")
}

/// Sends one request (with a JSON body, if any, and the header lines
/// `head`) on `stream` and reads the whole response.
fn send(
    mut stream: impl Read + Write,
    url: &str,
    host: &str,
    (method, path): (&str, &str),
    body: Option<&[u8]>,
    head: &str,
) -> Result<(u16, String), HttpError> {
    let io = |source| HttpError::Io {
        url: url.to_owned(),
        source,
    };
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str(head);
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&request).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let (status, body) = parse_response(&raw).map_err(|source| HttpError::BadResponse {
        url: url.to_owned(),
        source,
    })?;
    let body = String::from_utf8(body).map_err(|source| HttpError::NotUtf8 {
        url: url.to_owned(),
        source,
    })?;
    Ok((status, body))
}

/// `http://host:port/path?q` into (`host:port`, `/path?q`).
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'))
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Some((authority, path.to_owned()))
}

fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ResponseError> {
    let end = find(raw, b"\r\n\r\n").ok_or(ResponseError::Truncated("headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(ResponseError::HeadNotText)?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    if !words.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(ResponseError::StatusLine(status_line.to_owned()));
    }
    let status: u16 = words
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ResponseError::StatusLine(status_line.to_owned()))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ResponseError::Header(line.to_owned()));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|source| ResponseError::Length {
                value: value.to_owned(),
                source,
            })?);
        }
    }
    if chunked {
        return dechunk(body).map(|b| (status, b));
    }
    match length {
        Some(n) if n > body.len() => Err(ResponseError::Truncated("body")),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ResponseError> {
    let mut out = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or(ResponseError::Truncated("chunk size"))?;
        let line = String::from_utf8_lossy(&rest[..eol]).into_owned();
        let digits = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(digits, 16).map_err(|source| ResponseError::ChunkSize {
                line: line.clone(),
                source,
            })?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err(ResponseError::Truncated("chunk"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(response: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let mut request = Vec::new();
            while find(&request, b"\r\n\r\n").is_none() {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(response).unwrap();
            String::from_utf8(request).expect("utf8 request")
        });
        (format!("http://{addr}/v1/node"), handle)
    }

    #[test]
    fn content_length_body() {
        let (url, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(http_get(&url).expect("get"), (200, "hello".to_owned()));
        let request = server.join().expect("server");
        assert!(
            request.starts_with("GET /v1/node HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[test]
    fn chunked_body() {
        let (url, server) = serve_once(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        );
        assert_eq!(http_get(&url).expect("get"), (404, "abcde".to_owned()));
        server.join().expect("server");
    }

    #[test]
    fn refused_connection_names_the_url() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        drop(listener);
        let err = http_get(&url).expect_err("nobody listens");
        assert!(matches!(err, HttpError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains(&url));
    }

    #[test]
    fn urls() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            (
                "http://10.77.0.10:8080/v1/node",
                Some(("10.77.0.10:8080", "/v1/node")),
            ),
            ("http://10.77.0.10:8080", Some(("10.77.0.10:8080", "/"))),
            ("http://example/x?y=1", Some(("example:80", "/x?y=1"))),
            ("https://10.0.0.1/", None),
            ("http:///x", None),
            ("http://u@h/", None),
        ];
        for (url, want) in cases {
            let got = split_url(url);
            let want = want.map(|(a, p)| (a.to_owned(), p.to_owned()));
            assert_eq!(got, want, "{url}");
        }
    }

    #[test]
    fn malformed_responses() {
        for raw in [
            &b"garbage"[..],
            b"SMTP 220 hi\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                parse_response(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
