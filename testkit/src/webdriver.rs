//! A small W3C WebDriver client for the dashboard's real-browser tests: `chromedriver` started on a
//! free port (stopped on drop) and the few commands the tests use (navigate, run a script, find,
//! click, type, screenshot, alerts). Each command is one HTTP/1.1 request over hyper, which the
//! workspace already builds; a full WebDriver crate would add a large dependency tree for this.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The W3C name of the element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running `chromedriver`, killed on drop.
pub struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    /// Starts `chromedriver` on a free port and waits until it says it listens.
    pub fn start(chromedriver: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot run chromedriver")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        let mut driver = Self { child, port };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            driver.stop();
            bail!("chromedriver did not say it listens within 30 s");
        }
        Ok(driver)
    }

    /// A new headless chromium session (`binary`; `args` added to the headless defaults). A page
    /// that does not load within 20 s is an error (a navigation held by the browser's per-host
    /// connection limit waits about a minute), not a wait of WebDriver's default five minutes.
    pub async fn session(&self, binary: &Path, profile: &Path) -> anyhow::Result<Browser> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"pageLoad": 20_000},
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--no-first-run",
                         "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let got = request(self.port, "POST", "/session", Some(caps)).await?;
        let id = got["sessionId"]
            .as_str()
            .context("no sessionId in the new session")?
            .to_owned();
        Ok(Browser {
            port: self.port,
            session: id,
        })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One WebDriver request; the answer's `value`, or an error with WebDriver's message.
async fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let bytes = res.into_body().collect().await?.to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "WebDriver {method} {path}: {status}: {}",
            value["value"]["message"].as_str().unwrap_or("")
        );
    }
    Ok(value["value"].clone())
}

/// A browser session.
pub struct Browser {
    port: u16,
    session: String,
}

/// An element found in the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        request(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
        .await
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Lays pages out as a phone `width` × `height` CSS pixels (Chrome's device emulation over
    /// CDP: a real window cannot be made that narrow); it holds for the rest of the session.
    pub async fn emulate_phone(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(
                json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                    "width": width, "height": height, "deviceScaleFactor": 1, "mobile": true,
                }}),
            ),
        )
        .await
        .map(drop)
    }

    pub async fn refresh(&self) -> anyhow::Result<()> {
        self.cmd("POST", "/refresh", Some(json!({})))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body; `return` gives the value).
    pub async fn execute(&self, script: &str) -> anyhow::Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Runs `script`, whose last argument is the callback that ends it with a value.
    pub async fn execute_async(&self, script: &str) -> anyhow::Result<Value> {
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The first element matching a CSS selector.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let got = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        let id = got[ELEMENT_KEY]
            .as_str()
            .or_else(|| got["ELEMENT"].as_str())
            .with_context(|| format!("no element reference for {css} in {got}"))?;
        Ok(Element(id.to_owned()))
    }

    pub async fn click(&self, e: &Element) -> anyhow::Result<()> {
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await
            .map(drop)
    }

    pub async fn send_keys(&self, e: &Element, text: &str) -> anyhow::Result<()> {
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    /// Presses and releases one key on whatever has the focus (`\u{E004}` is Tab).
    pub async fn press_key(&self, key: &str) -> anyhow::Result<()> {
        self.cmd(
            "POST",
            "/actions",
            Some(
                json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                    {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key},
                ]}]}),
            ),
        )
        .await
        .map(drop)
    }

    pub async fn text(&self, e: &Element) -> anyhow::Result<String> {
        let v = self
            .cmd("GET", &format!("/element/{}/text", e.0), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// The page's HTML now.
    pub async fn source(&self) -> anyhow::Result<String> {
        let v = self.cmd("GET", "/source", None).await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// The text of an open alert, or `None` when no alert is open.
    pub async fn alert_text(&self) -> Option<String> {
        let v = self.cmd("GET", "/alert/text", None).await.ok()?;
        Some(v.as_str().unwrap_or_default().to_owned())
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine;
        let v = self.cmd("GET", "/screenshot", None).await?;
        Ok(base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("no screenshot data")?)?)
    }

    /// Waits until the JS expression `condition` is true; the error names `what` and shows the
    /// page. Checks every 50 ms for at most 20 s.
    pub async fn until(&self, condition: &str, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self
                .execute(&format!("return !!({condition});"))
                .await
                .unwrap_or(Value::Bool(false));
            if v == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let page = self.source().await.unwrap_or_default();
                bail!("timed out waiting until {what}; the page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn close(self) -> anyhow::Result<()> {
        request(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        )
        .await
        .map(drop)
    }
}
