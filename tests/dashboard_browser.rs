//! The dashboard in a real headless browser (Debian's chromium, driven over WebDriver by
//! chromedriver) against a real `hive serve`: log in with the link `hive dashboard` prints, see a
//! pending approval with its diff and approve it, watch pages change without a reload, answer a
//! question, send from the inbox and see it in the message flow, see a chart drawn, and see that
//! a script in a message is text and a cross-site form changes nothing. A screenshot of each page
//! is kept under `target/tmp/dashboard-screenshots/`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};
use testkit::webdriver::{Browser, ChromeDriver};

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Browser, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits until the JS expression `condition` is true in the page.
async fn until_js(c: &Browser, condition: &str, what: &str) {
    c.until(condition, what).await.unwrap();
}

async fn js(c: &Browser, script: &str) -> Value {
    c.execute(script).await.unwrap()
}

/// Marks the loaded document; [`STILL_MARKED`] is true only while no reload happened.
async fn mark(c: &Browser) {
    js(c, "window.__noReload = 1; return null;").await;
}
const STILL_MARKED: &str = "window.__noReload === 1";

/// Clicks the form button `button` and waits until the page it leads to has loaded at `path`: a
/// click does not wait for the form's navigation, and the page before it may have that path too.
async fn submit_and_land(c: &Browser, button: &str, path: &str, what: &str) {
    mark(c).await;
    c.click(&c.find(button).await.unwrap()).await.unwrap();
    let landed = format!(
        "!({STILL_MARKED}) && location.pathname === '{path}' && document.readyState === 'complete'"
    );
    until_js(c, &landed, what).await;
}

/// The manager drafts `name`, commits `agent_nix` with git, and asks: the approval's id.
async fn request_spawn(manager: &McpClient, state: &Path, name: &str, agent_nix: &str) -> i64 {
    mcp_ok(manager, "request_spawn", json!({"name": name})).await;
    let repo = state.join(format!("agents/{name}/config"));
    std::fs::write(repo.join("agent.nix"), agent_nix).unwrap();
    git(&repo, &["commit", "-qam", &format!("{name}: config")]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let queued = mcp_ok(
        manager,
        "request_spawn",
        json!({"name": name, "commit": sha}),
    )
    .await;
    queued["id"].as_i64().unwrap()
}

fn message_rows(state: &Path) -> i64 {
    open_db(state)
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap()
}

/// One streamed `POST /v1/messages` on a gateway socket, read to its end.
async fn model_call(socket: &Path) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"model":"claude-test","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: model-gateway\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn the_operator_uses_the_dashboard_in_a_real_browser() {
    let Some(chromium) = testkit::tools::require("chromium", testkit::tools::chromium()) else {
        return;
    };
    let Some(chromedriver) =
        testkit::tools::require("chromedriver", testkit::tools::chromedriver())
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    // The model behind the gateway, for the model-call chart.
    let model = testkit::model_server::ModelServer::start_blocking(vec![
        testkit::model_server::Reply::text("one answer"),
        testkit::model_server::Reply::text("and a longer second answer"),
    ]);
    let _daemon = Daemon::start(
        state,
        &format!(
            "[dashboard]\nport = 0\n\n[model]\nanthropic_base_url = \"{}\"\n",
            model.base_url()
        ),
    );
    let addr = std::fs::read_to_string(state.join("run/dashboard.addr")).unwrap();
    let base = format!("http://{}", addr.trim());
    let link: Value = serde_json::from_str(&cli_ok(state, &["dashboard", "--json"])).unwrap();
    let login_link = link["login_link"].as_str().unwrap().to_owned();
    assert!(
        login_link.starts_with(&format!("{base}/login/link?t=")),
        "{link}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = mcp_connect(&rt, state, "manager", "mcp.sock");
    let harness = mcp_connect(&rt, state, "manager", "harness.sock");

    // A pending spawn whose agent.nix holds HTML: it must show as text.
    let bob = rt.block_on(request_spawn(
        &manager,
        state,
        "bob",
        "{ ... }: { hyperhive.model = \"<img src=x onerror=alert(1)>\"; }\n",
    ));

    let driver = ChromeDriver::start(&chromedriver).unwrap();
    let profile = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let c = driver
            .session(&chromium, profile.path())
            .await
            .expect("a WebDriver session");

        // Without a session: the login page.
        c.goto(&format!("{base}/")).await.unwrap();
        until_js(&c, "location.pathname === '/login'", "redirected to the login").await;
        screenshot(&c, "login").await;

        // The one-time link logs in and lands on the hive page.
        c.goto(&login_link).await.unwrap();
        until_js(&c, "location.pathname === '/' && document.querySelector('h1') && document.querySelector('h1').textContent === 'Hive'", "the hive page after login").await;
        until_js(&c, "document.getElementById('live').textContent === 'live'", "the event stream connected").await;
        screenshot(&c, "hive").await;

        // The approvals page lists bob; a new request appears without a reload.
        c.goto(&format!("{base}/approvals")).await.unwrap();
        until_js(&c, &format!("document.querySelector('a[href=\"/approvals/{bob}\"]')"), "bob's approval listed").await;
        until_js(&c, "document.getElementById('live').textContent === 'live'", "live").await;
        mark(&c).await;
        let carol = request_spawn(&manager, state, "carol", "{ ... }: { }\n").await;
        until_js(&c, &format!("document.querySelector('a[href=\"/approvals/{carol}\"]') && {STILL_MARKED}"), "carol's request shown live").await;
        screenshot(&c, "approvals").await;

        // The approval with its whole diff, the HTML in it as text.
        c.click(&c.find(&format!("a[href=\"/approvals/{bob}\"]")).await.unwrap()).await.unwrap();
        until_js(&c, "document.getElementById('diff')", "the approval page").await;
        let diff = c.text(&c.find("#diff").await.unwrap()).await.unwrap();
        assert!(diff.contains("+{ ... }: { hyperhive.model = \"<img src=x onerror=alert(1)>\"; }"), "{diff}");
        assert_eq!(js(&c, "return document.querySelectorAll('#diff img').length;").await, json!(0));
        screenshot(&c, "approval").await;
        c.click(&c.find("#approve").await.unwrap()).await.unwrap();
        until_js(&c, "document.getElementById('approval-status') && document.getElementById('approval-status').textContent !== 'pending'", "approved").await;
        screenshot(&c, "approved").await;

        // The hive page: bob is there; an agent spawned meanwhile appears without a reload.
        c.goto(&format!("{base}/")).await.unwrap();
        until_js(&c, "document.querySelector('tr[data-agent=\"bob\"]')", "bob on the hive page").await;
        until_js(&c, "document.getElementById('live').textContent === 'live'", "live").await;
        mark(&c).await;
        cli_ok(state, &["spawn", "dave"]);
        until_js(&c, &format!("document.querySelector('tr[data-agent=\"dave\"]') && {STILL_MARKED}"), "dave shown live").await;
        screenshot(&c, "hive-live").await;
        // Each row's buttons post the table's one form (its CSRF token): the hive answers the
        // action itself (this hive runs no agents), the guard refuses nothing.
        assert_eq!(js(&c, "return document.querySelector('button[formaction=\"/agents/dave/stop\"]').form.id;").await, json!("agent-actions"));
        c.click(&c.find("button[formaction=\"/agents/dave/stop\"]").await.unwrap()).await.unwrap();
        until_js(&c, "location.pathname === '/agents/dave/stop' && document.body.textContent.includes('this hive runs no agents')", "the hive's own answer to stop").await;

        // A question with options: pick one and answer.
        let asked = mcp_ok(&manager, "ask_operator", json!({"question": "Deploy <b>now</b>?", "options": ["yes", "later"]})).await;
        let qid = asked["question"].as_i64().unwrap();
        c.goto(&format!("{base}/questions")).await.unwrap();
        until_js(&c, &format!("document.getElementById('question-{qid}')"), "the question").await;
        assert!(c.text(&c.find(&format!("#question-{qid} .body")).await.unwrap()).await.unwrap().contains("Deploy <b>now</b>?"));
        until_js(&c, &format!("document.querySelector('#question-{qid} time.ttl').textContent.startsWith('expires in')"), "a TTL countdown").await;
        screenshot(&c, "questions").await;
        c.click(&c.find(&format!("#question-{qid} input[value=\"later\"]")).await.unwrap()).await.unwrap();
        c.click(&c.find(&format!("#question-{qid} button[type=submit]")).await.unwrap()).await.unwrap();
        until_js(&c, &format!("!document.getElementById('question-{qid}') && document.body.textContent.includes('answered')"), "the question answered").await;
        let told = mcp_ok(&manager, "recv", json!({"wait_seconds": 10})).await;
        assert!(told.to_string().contains("later"), "{told}");

        // The inbox: send a message whose body is a script; it reaches the flow as text.
        c.goto(&format!("{base}/inbox")).await.unwrap();
        until_js(&c, "document.getElementById('compose')", "the inbox").await;
        c.send_keys(&c.find("#to").await.unwrap(), "manager").await.unwrap();
        c.send_keys(&c.find("#body").await.unwrap(), "<script>alert(1)</script>").await.unwrap();
        screenshot(&c, "inbox").await;
        submit_and_land(&c, "#compose button[type=submit]", "/inbox", "back on the inbox").await;
        c.goto(&format!("{base}/messages")).await.unwrap();
        until_js(&c, "[...document.querySelectorAll('.message .body')].some(e => e.textContent === '<script>alert(1)</script>')", "the message in the flow, as text").await;
        assert_eq!(c.alert_text().await, None, "no alert ran");
        // A message from the manager appears in the flow without a reload.
        until_js(&c, "document.getElementById('live').textContent === 'live'", "live").await;
        mark(&c).await;
        mcp_ok(&manager, "send", json!({"to": "operator", "body": "hello from the manager"})).await;
        until_js(&c, &format!("[...document.querySelectorAll('.message .body')].some(e => e.textContent === 'hello from the manager') && {STILL_MARKED}"), "the manager's message live").await;
        screenshot(&c, "messages").await;

        // Turns with usage: the manager's page charts them, and shows a turn's events live.
        c.goto(&format!("{base}/agents/manager")).await.unwrap();
        until_js(&c, "document.getElementById('live').textContent === 'live'", "live").await;
        for (n, (input, cost)) in [(1200, 0.01), (800, 0.004), (2500, 0.02)].into_iter().enumerate() {
            cli_ok(state, &["send", "manager", &format!("turn {n}")]);
            let turn = mcp_ok(&harness, "next_turn", json!({"wait_seconds": 10})).await;
            let id = turn["turn"].as_i64().unwrap();
            mcp_ok(&harness, "turn_events", json!({"turn": id, "events": [{"type": "text", "text": format!("thinking about turn {n}")}]})).await;
            mcp_ok(&harness, "finish_turn", json!({"turn": id, "outcome": "ok", "usage": {"input_tokens": input, "output_tokens": 100 + n, "cost_usd": cost, "duration_ms": 1500 + n as u64 * 100}})).await;
        }
        until_js(&c, "[...document.querySelectorAll('#turn-stream li')].some(e => e.textContent.includes('thinking about turn 2'))", "the turn stream live").await;
        c.refresh().await.unwrap();
        // Two model calls through the manager's gateway: charted with their usage.
        for _ in 0..2 {
            model_call(&state.join("run/agents/manager/gateway.sock")).await;
        }
        c.refresh().await.unwrap();
        until_js(&c, "document.querySelectorAll('#charts canvas').length >= 4", "the charts").await;
        until_js(&c, "document.querySelectorAll('#call-charts canvas').length === 1 && document.querySelector('#call-charts figure').getAttribute('aria-label').endsWith('2 model calls')", "the model-call chart").await;
        let drawn = js(&c, "const cv = document.querySelector('#charts canvas'); const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;").await;
        assert!(drawn.as_u64().unwrap() > 200, "the chart drew {drawn} pixels");
        screenshot(&c, "agent").await;

        // The log tail follows: a line written to the agent's log shows without a reload.
        until_js(&c, "document.getElementById('live').textContent === 'live'", "live").await;
        mark(&c).await;
        let log = state.join("logs/manager.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut file, b"a log line <i>written</i> after the page loaded\n").unwrap();
        until_js(&c, &format!("document.getElementById('log').textContent.includes('a log line <i>written</i> after the page loaded') && {STILL_MARKED}"), "the log line followed").await;
        assert_eq!(js(&c, "return document.querySelectorAll('#log i').length;").await, json!(0));

        // The manager has no login: the panel names the command and stores a pasted API key; the
        // watcher's logged_in then changes the page without a reload.
        assert_eq!(c.text(&c.find("#login-command").await.unwrap()).await.unwrap(), "hive login manager");
        screenshot(&c, "agent-login-panel").await;
        c.send_keys(&c.find("#api-key").await.unwrap(), "sk-ant-api03-browser-test-key").await.unwrap();
        submit_and_land(&c, "#store-api-key", "/agents/manager", "back on the agent page").await;
        until_js(&c, "document.getElementById('live').textContent === 'live'", "live").await;
        until_js(&c, "document.getElementById('login-state').textContent === 'logged in' && !document.getElementById('login-panel')", "logged in").await;
        assert_eq!(std::fs::read_to_string(state.join("secrets/manager/api-key")).unwrap(), "sk-ant-api03-browser-test-key\n");

        // Kept state and audit render.
        c.goto(&format!("{base}/audit")).await.unwrap();
        until_js(&c, "document.querySelector('.ok')", "the audit chain whole").await;
        screenshot(&c, "audit").await;

        // A form on another site posting to the dashboard, even with a real CSRF token: the
        // session cookie is not sent (SameSite=Strict), nothing changes.
        c.goto(&format!("{base}/inbox")).await.unwrap();
        let csrf = js(&c, "return document.querySelector('meta[name=csrf-token]').content;").await;
        let before = message_rows(state);
        let evil = format!(
            "data:text/html,<form method=post action='{base}/send'><input name=to value=manager><input name=body value=forged><input name=csrf value={}></form><script>document.forms[0].submit()</script>",
            csrf.as_str().unwrap()
        )
        .replace(' ', "%20");
        c.goto(&evil).await.unwrap();
        until_js(&c, &format!("location.href.startsWith('{base}')"), "the forged form submitted").await;
        screenshot(&c, "cross-site").await;
        assert_eq!(message_rows(state), before, "a cross-site form sent nothing");
        // And from the dashboard's own page, a POST without the token is refused.
        c.goto(&format!("{base}/inbox")).await.unwrap();
        let status = c
            .execute_async(
                "const done = arguments[0]; fetch('/send', {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'to=manager&body=no-token'}).then(r => done(r.status));",
            )
            .await
            .unwrap();
        assert_eq!(status, json!(403));
        assert_eq!(message_rows(state), before, "a POST without the CSRF token sent nothing");

        // A phone 390 px wide: the pages fit its width (tables and diffs scroll or wrap inside
        // their own boxes), and the first Tab reaches the skip link.
        c.emulate_phone(390, 844).await.unwrap();
        let phone_pages = [
            ("/".to_owned(), "phone-hive"),
            (format!("/approvals/{bob}"), "phone-approval"),
            ("/agents/manager".to_owned(), "phone-agent"),
            ("/approvals".to_owned(), "phone-approvals"),
            ("/questions".to_owned(), "phone-questions"),
            ("/inbox".to_owned(), "phone-inbox"),
            ("/messages".to_owned(), "phone-messages"),
            ("/tombstones".to_owned(), "phone-tombstones"),
            ("/audit".to_owned(), "phone-audit"),
        ];
        for (page, name) in phone_pages {
            c.goto(&format!("{base}{page}")).await.unwrap();
            until_js(&c, "document.readyState === 'complete'", "the page loaded").await;
            // A page wider than the screen scrolls sideways, and a phone zooms out to show it
            // (the layout viewport, innerWidth, grows past 390).
            let widths = js(&c, "return [Math.max(document.documentElement.scrollWidth, document.body.scrollWidth), window.innerWidth];").await;
            assert_eq!(widths, json!([390, 390]), "{page}: [the page's scroll width, innerWidth] on a 390 px phone");
            screenshot(&c, name).await;
        }
        c.goto(&format!("{base}/approvals/{bob}")).await.unwrap();
        until_js(&c, "document.getElementById('diff')", "the approval page").await;
        c.press_key("\u{E004}").await.unwrap();
        until_js(&c, "document.activeElement && document.activeElement.classList.contains('skip')", "Tab reaches the skip link first").await;

        c.close().await.unwrap();
    });
}
