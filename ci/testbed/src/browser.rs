//! A real browser driven over WebDriver: Debian's `chromedriver` running
//! headless Chromium, for tests that measure a page as it is laid out,
//! which `chromium --dump-dom` cannot tell. A viewport narrower than 600
//! CSS pixels is a phone's (Chromium's mobile emulation: touch, and the
//! page's viewport meta honoured). The browser quits and chromedriver stops
//! when the [`Browser`] is dropped.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::{HttpError, curl_post};
use crate::wait::wait_until;

/// Driving the browser failed.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("cannot start chromedriver (ci/setup installs chromium-driver)")]
    Spawn(#[source] std::io::Error),
    #[error("no free port for chromedriver")]
    Port(#[source] std::io::Error),
    #[error("chromedriver did not answer within {0:?}")]
    NotReady(Duration),
    #[error("WebDriver {what}")]
    Http {
        what: &'static str,
        #[source]
        source: HttpError,
    },
    #[error("WebDriver {what} answered {status}: {body}")]
    Refused {
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("WebDriver {what} answered what is not WebDriver's: {body}")]
    Answer { what: &'static str, body: String },
}

/// One headless Chromium with one page open.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    session: String,
    base: String,
}

impl Browser {
    /// Starts chromedriver and a Chromium whose viewport is `width` ×
    /// `height` CSS pixels, with its profile in `profile`.
    pub fn start(profile: &Path, width: u32, height: u32) -> Result<Browser, BrowserError> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(BrowserError::Port)?
            .port();
        let driver = Command::new(crate::cmd::resolve("chromedriver"))
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(BrowserError::Spawn)?;
        let mut browser = Browser {
            driver,
            session: String::new(),
            base: format!("http://127.0.0.1:{port}"),
        };
        let within = Duration::from_secs(15);
        // Through curl: chromedriver answers `Connection: close` and keeps
        // the connection open, so a client must stop at the body's length.
        let status = format!("{}/status", browser.base);
        let ready = wait_until(within, Duration::from_millis(50), || {
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "-m", "2", &status])
                .status()
                .is_ok_and(|s| s.success())
        });
        if !ready {
            return Err(BrowserError::NotReady(within));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": crate::cmd::resolve("chromium"),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "mobileEmulation": {"deviceMetrics": {
                    "width": width,
                    "height": height,
                    "pixelRatio": 1,
                    "mobile": width < 600,
                    "touch": width < 600,
                }},
            },
        }}});
        let answer = browser.post("new session", "/session", &capabilities)?;
        browser.session = answer["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Answer {
                what: "new session",
                body: answer.to_string(),
            })?
            .to_owned();
        Ok(browser)
    }

    /// Opens `url` and waits for it to load.
    pub fn open(&self, url: &str) -> Result<(), BrowserError> {
        let path = format!("/session/{}/url", self.session);
        self.post("navigate", &path, &json!({"url": url})).map(drop)
    }

    /// Runs `script` (a function body: `return` gives the value) in the
    /// page, and answers what it returned.
    pub fn eval(&self, script: &str) -> Result<Value, BrowserError> {
        let path = format!("/session/{}/execute/sync", self.session);
        self.post("script", &path, &json!({"script": script, "args": []}))
    }

    /// A WebDriver command: its `value` when it succeeded.
    fn post(&self, what: &'static str, path: &str, body: &Value) -> Result<Value, BrowserError> {
        let url = format!("{}{path}", self.base);
        let (status, text) = curl_post(&url, Some(body.to_string().as_bytes()), &[])
            .map_err(|source| BrowserError::Http { what, source })?;
        if status != 200 {
            return Err(BrowserError::Refused {
                what,
                status,
                body: text,
            });
        }
        let mut answer: Value =
            serde_json::from_str(&text).map_err(|_not_json| BrowserError::Answer {
                what,
                body: text.clone(),
            })?;
        Ok(answer["value"].take())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Quitting the session closes Chromium and all its processes.
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-X", "DELETE", &url])
                .status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
