//! The dashboard's router, driven with `oneshot` on a real hive: every page renders for a
//! session; every refusal (no session, wrong token, rate limit, stale link, missing or wrong CSRF
//! token, another origin) answers the right status and leaves the store exactly as it was.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use broker::Hive;
use broker::approvals::SpawnRequest;
use broker::config::{Config, RuntimeKind};
use broker::names::AgentName;
use broker::paths::StateDir;
use dashboard::web::{Auth, WebState, router};
use http_body_util::BodyExt;
use tower::ServiceExt;

const HOST: &str = "127.0.0.1:7000";
const ORIGIN: &str = "http://127.0.0.1:7000";
const TOKEN: &str = "the-operator-token-for-tests";

struct Web {
    dir: tempfile::TempDir,
    hive: Arc<Hive>,
    auth: Arc<Auth>,
    app: Router,
}

async fn web() -> Web {
    web_with(|_| {}).await
}

/// [`web`] with its configuration changed by `tweak`.
async fn web_with(tweak: impl FnOnce(&mut Config)) -> Web {
    web_in(tempfile::tempdir().unwrap(), tweak).await
}

/// [`web_with`] on the state dir `dir` (which may hold a hive already).
async fn web_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Web {
    let state = StateDir::new(dir.path());
    state.create().unwrap();
    let mut config = Config::default();
    config.runtime.kind = Some(RuntimeKind::Off);
    tweak(&mut config);
    let hive = Hive::open(state, config).await.unwrap();
    let auth = Arc::new(Auth::new(TOKEN));
    let app = router(WebState {
        hive: hive.clone(),
        auth: auth.clone(),
        shutdown: tokio_util::sync::CancellationToken::new(),
    });
    Web {
        dir,
        hive,
        auth,
        app,
    }
}

/// A logged-in browser: its session cookie and the CSRF token its pages carry.
struct Session {
    cookie: String,
    csrf: String,
}

impl Web {
    async fn call(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let res: Response<Body> = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(
        &self,
        path: &str,
        session: Option<&Session>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = Request::get(path).header(header::HOST, HOST);
        if let Some(s) = session {
            req = req.header(header::COOKIE, format!("hive_session={}", s.cookie));
        }
        self.call(req.body(Body::empty()).unwrap()).await
    }

    /// A form POST as a browser on this origin sends it; `origin`/`csrf` `None` leave them out.
    async fn post_form(
        &self,
        path: &str,
        session: Option<&Session>,
        origin: Option<&str>,
        fields: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = Request::post(path)
            .header(header::HOST, HOST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        if let Some(s) = session {
            req = req.header(header::COOKIE, format!("hive_session={}", s.cookie));
        }
        let body = serde_urlencoded::to_string(fields).unwrap();
        self.call(req.body(Body::from(body)).unwrap()).await
    }

    async fn login(&self) -> Session {
        let link = self.auth.new_link();
        let (status, headers, _) = self.get(&format!("/login/link?t={link}"), None).await;
        assert_eq!(status, StatusCode::OK);
        let cookie = session_cookie(&headers).expect("a session cookie");
        let mut s = Session {
            cookie,
            csrf: String::new(),
        };
        let (status, _, page) = self.get("/", Some(&s)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        s.csrf = between(&page, "<meta name=\"csrf-token\" content=\"", "\"").to_owned();
        assert_eq!(s.csrf.len(), 64);
        s
    }

    /// Every table an action of the dashboard writes, and the sessions: "nothing changed".
    fn snapshot(&self) -> String {
        let db = rusqlite::Connection::open_with_flags(
            self.hive.state_dir().db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut out = String::new();
        for table in [
            "messages",
            "approvals",
            "deploys",
            "agents",
            "audit",
            "questions",
            "paused",
        ] {
            let mut stmt = db
                .prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))
                .unwrap();
            let columns = stmt.column_count();
            let rows: Vec<String> = stmt
                .query_map([], |r| {
                    Ok((0..columns)
                        .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            out.push_str(&format!("{table}: {}\n", rows.join("\n")));
        }
        out.push_str(&format!("sessions={}\n", self.auth.session_count()));
        out
    }

    /// A pending spawn approval of `name` asked by the manager, with `agent_nix` as its config.
    async fn pending_spawn(&self, name: &str, agent_nix: &str) -> i64 {
        let manager = AgentName::manager();
        let SpawnRequest::Draft(_) = self.hive.request_spawn(&manager, name, None).await.unwrap()
        else {
            panic!("expected a draft")
        };
        let repo = self
            .hive
            .state_dir()
            .proposed_repo(&AgentName::parse(name).unwrap());
        std::fs::write(repo.join("agent.nix"), agent_nix).unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args([
                    "-c",
                    "user.name=manager",
                    "-c",
                    "user.email=m@hive",
                    "-c",
                    "commit.gpgsign=false",
                ])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        git(&["commit", "-qam", "config"]);
        let head = git(&["rev-parse", "HEAD"]);
        let SpawnRequest::Queued(a) = self
            .hive
            .request_spawn(&manager, name, Some(&head))
            .await
            .unwrap()
        else {
            panic!("expected a queued approval")
        };
        a.id
    }
}

fn with_csrf<'a>(fields: &[(&'a str, &'a str)], csrf: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut all = fields.to_vec();
    all.push(("csrf", csrf));
    all
}

fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("hive_session=") && !v.starts_with("hive_session=;"))
        .map(|v| {
            assert!(v.contains("HttpOnly"), "{v}");
            assert!(v.contains("SameSite=Strict"), "{v}");
            v["hive_session=".len()..]
                .split(';')
                .next()
                .unwrap()
                .to_owned()
        })
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start} in {text}"))
        + start.len();
    let len = text[from..].find(end).unwrap();
    &text[from..from + len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_pages_redirect_and_the_api_answers_401() {
    let w = web().await;
    for page in [
        "/",
        "/approvals",
        "/questions",
        "/inbox",
        "/messages",
        "/agents/manager",
        "/tombstones",
        "/audit",
    ] {
        let (status, headers, _) = w.get(page, None).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(headers[header::LOCATION], "/login", "{page}");
    }
    for api in [
        "/api/v1/status",
        "/api/v1/agents",
        "/api/v1/agents/manager/logs?follow=1",
        "/api/v1/no/such/route",
        "/events",
    ] {
        let (status, _, body) = w.get(api, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{api}");
        assert!(body.contains("\"unauthorized\""), "{body}");
    }
    // A made-up session cookie is no session.
    let fake = Session {
        cookie: "0".repeat(64),
        csrf: String::new(),
    };
    assert_eq!(
        w.get("/api/v1/status", Some(&fake)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let before = w.snapshot();
    let (status, _, _) = w
        .post_form(
            "/send",
            Some(&fake),
            Some(ORIGIN),
            &[("to", "manager"), ("body", "hi")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(w.snapshot(), before);
}

/// The inbox page lists the dead letters (here: mail for the manager, which never runs); the
/// operator redirects one and drops another there; a redirect to an unknown agent changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_redirects_and_drops_dead_letters_from_the_inbox_page() {
    let w = web_with(|c| c.mailbox.dead_letter_after_seconds = 1).await;
    let s = w.login().await;
    for body in ["kept for the manager", "not needed"] {
        let (status, _, page) = w
            .post_form(
                "/send",
                Some(&s),
                Some(ORIGIN),
                &[("csrf", &s.csrf), ("to", "manager"), ("body", body)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let letters = loop {
        let letters: Vec<_> = w
            .hive
            .dead_letters()
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.message.from == "operator")
            .collect();
        if letters.len() == 2 {
            break letters;
        }
        assert!(std::time::Instant::now() < deadline, "no dead letters");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let (keep, drop) = (letters[0].message.id, letters[1].message.id);
    let (status, _, page) = w.get("/inbox", Some(&s)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Dead letters") && page.contains("kept for the manager"),
        "{page}"
    );
    assert!(
        page.contains(&format!("action=\"/dead-letters/{keep}/redirect\"")),
        "{page}"
    );

    let before = w.snapshot();
    let (status, _, _) = w
        .post_form(
            &format!("/dead-letters/{keep}/redirect"),
            Some(&s),
            Some(ORIGIN),
            &[("csrf", &s.csrf), ("to", "nobody")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(w.snapshot(), before, "a refused redirect changed nothing");

    let (status, headers, _) = w
        .post_form(
            &format!("/dead-letters/{keep}/redirect"),
            Some(&s),
            Some(ORIGIN),
            &[("csrf", &s.csrf), ("to", "operator")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/inbox");
    let (status, _, _) = w
        .post_form(
            &format!("/dead-letters/{drop}/drop"),
            Some(&s),
            Some(ORIGIN),
            &[("csrf", &s.csrf)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, page) = w.get("/inbox", Some(&s)).await;
    let dead = between(&page, "id=\"dead-letters\"", "</section>");
    assert!(
        !dead.contains("kept for the manager") && !dead.contains("not needed"),
        "{dead}"
    );
    let inbox = between(&page, "id=\"inbox\"", "</section>");
    assert!(
        inbox.contains("kept for the manager"),
        "the redirected letter is in the inbox: {inbox}"
    );
}

/// The hive page shows each agent's liveness (the manager here has no harness: `dead`), and an
/// alert's link opens its page once, through the login page when there is no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hive_page_shows_liveness_and_an_alert_link_opens_its_page_once() {
    let w = web().await;
    let s = w.login().await;
    let (status, _, page) = w.get("/", Some(&s)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<th scope=\"col\">Liveness</th>"), "{page}");
    assert!(
        page.contains(r#"<span class="liveness liveness-dead">dead</span>"#),
        "{page}"
    );
    // With a session: straight to the page.
    let t = w.auth.new_alert_link("/approvals/7");
    let (status, headers, _) = w.get(&format!("/go?t={t}"), Some(&s)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/approvals/7");
    let (status, _, _) = w.get(&format!("/go?t={t}"), Some(&s)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "once only");
    // Without one: the login page, going on to it; a path out of the dashboard becomes `/`.
    let t = w.auth.new_alert_link("/questions");
    let (status, _, page) = w.get(&format!("/go?t={t}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"name="next" value="/questions""#), "{page}");
    let t = w.auth.new_alert_link("//evil.example/x");
    let (_, _, page) = w.get(&format!("/go?t={t}"), None).await;
    assert!(page.contains(r#"name="next" value="/""#), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_link_works_once() {
    let w = web().await;
    let link = w.auth.new_link();
    let (status, headers, body) = w.get(&format!("/login/link?t={link}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(session_cookie(&headers).is_some());
    assert!(body.contains("http-equiv=\"refresh\""), "{body}");
    let before = w.snapshot();
    let (status, headers, _) = w.get(&format!("/login/link?t={link}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(session_cookie(&headers).is_none());
    let (status, _, _) = w.get("/login/link?t=forged", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(w.snapshot(), before);
}

/// The login form: its own CSRF cookie, the origin, the token, and the rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_form_refuses_wrong_tokens_other_origins_and_floods() {
    let w = web().await;
    let (status, headers, page) = w.get("/login", None).await;
    assert_eq!(status, StatusCode::OK);
    let form_csrf = between(&page, "name=\"csrf\" value=\"", "\"").to_owned();
    let login_cookie = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("hive_login="))
        .unwrap()["hive_login=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(login_cookie, form_csrf);
    let login = |origin: &'static str, csrf: String, token: &'static str| {
        let cookie = format!("hive_login={login_cookie}");
        let app = w.app.clone();
        async move {
            let body =
                serde_urlencoded::to_string([("csrf", csrf.as_str()), ("token", token)]).unwrap();
            let res = app
                .oneshot(
                    Request::post("/login")
                        .header(header::HOST, HOST)
                        .header(header::ORIGIN, origin)
                        .header(header::COOKIE, cookie)
                        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(Body::from(body))
                        .unwrap(),
                )
                .await
                .unwrap();
            (res.status(), session_cookie(res.headers()))
        }
    };
    let before = w.snapshot();
    // Another origin, or a form whose CSRF token is not its cookie's: refused, even with the
    // right operator token.
    assert_eq!(
        login("http://evil.example", form_csrf.clone(), TOKEN).await,
        (StatusCode::FORBIDDEN, None)
    );
    assert_eq!(
        login(ORIGIN, "f".repeat(64), TOKEN).await,
        (StatusCode::FORBIDDEN, None)
    );
    // Wrong tokens until the limit; then the right one is refused too.
    for _ in 0..dashboard::web::auth::MAX_FAILURES {
        assert_eq!(
            login(ORIGIN, form_csrf.clone(), "guess").await,
            (StatusCode::UNAUTHORIZED, None)
        );
    }
    assert_eq!(
        login(ORIGIN, form_csrf.clone(), TOKEN).await,
        (StatusCode::TOO_MANY_REQUESTS, None)
    );
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.auth.session_count(), 0);

    // A fresh hive (no failures): the right token logs in.
    let w2 = web().await;
    let (_, headers, page) = w2.get("/login", None).await;
    let csrf = between(&page, "name=\"csrf\" value=\"", "\"").to_owned();
    assert!(
        headers
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|v| v.to_str().unwrap().contains(&csrf))
    );
    let body = serde_urlencoded::to_string([("csrf", csrf.as_str()), ("token", TOKEN)]).unwrap();
    let (status, headers, _) = w2
        .call(
            Request::post("/login")
                .header(header::HOST, HOST)
                .header(header::ORIGIN, ORIGIN)
                .header(header::COOKIE, format!("hive_login={csrf}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(session_cookie(&headers).is_some());
}

/// Every POST without the session's CSRF token, or from another origin, is refused before it
/// reaches the hive: a message is not sent, an approval stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_without_the_csrf_token_or_from_another_origin_change_nothing() {
    let w = web().await;
    let s = w.login().await;
    let approval = w.pending_spawn("bob", "{ ... }: { }\n").await;
    let approve = format!("/approvals/{approval}/approve");
    let send: &[(&str, &str)] = &[("to", "manager"), ("body", "hello")];
    let before = w.snapshot();
    for (path, fields) in [(approve.as_str(), &[][..]), ("/send", send)] {
        // No token.
        let (status, _, body) = w.post_form(path, Some(&s), Some(ORIGIN), fields).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        // A wrong token.
        let (status, _, _) = w
            .post_form(
                path,
                Some(&s),
                Some(ORIGIN),
                &with_csrf(fields, &"0".repeat(64)),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        // The right token from another origin, or with no Origin at all.
        let (status, _, _) = w
            .post_form(
                path,
                Some(&s),
                Some("http://evil.example"),
                &with_csrf(fields, &s.csrf),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let (status, _, _) = w
            .post_form(path, Some(&s), None, &with_csrf(fields, &s.csrf))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(w.snapshot(), before, "{path}");
    }
    // The JSON API over TCP: the same checks with the token in a header.
    let api_post = |origin: &'static str, csrf: Option<String>| {
        let mut req = Request::post("/api/v1/messages")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, origin)
            .header(header::COOKIE, format!("hive_session={}", s.cookie))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.body(Body::from(r#"{"to":"manager","body":"hi"}"#))
            .unwrap()
    };
    assert_eq!(
        w.call(api_post(ORIGIN, None)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        w.call(api_post("http://evil.example", Some(s.csrf.clone())))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(w.snapshot(), before);
    // And with both right, the same requests do act.
    let (status, _, body) = w.call(api_post(ORIGIN, Some(s.csrf.clone()))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, headers, _) = w
        .post_form(&approve, Some(&s), Some(ORIGIN), &[("csrf", &s.csrf)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], format!("/approvals/{approval}"));
    assert_ne!(
        w.hive.approval(approval).await.unwrap().status.to_string(),
        "pending"
    );
    assert!(w.hive.agent(&AgentName::parse("bob").unwrap()).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_with_security_headers_and_no_inline_script() {
    let w = web().await;
    let s = w.login().await;
    let approval = w
        .pending_spawn("bob", "{ ... }: { hyperhive.model = \"<b>m1</b>\"; }\n")
        .await;
    let pages = [
        "/".to_owned(),
        "/approvals".to_owned(),
        format!("/approvals/{approval}"),
        "/questions".to_owned(),
        "/inbox".to_owned(),
        "/messages".to_owned(),
        "/messages?agent=manager".to_owned(),
        "/agents/manager".to_owned(),
        "/tombstones".to_owned(),
        "/audit".to_owned(),
        "/login".to_owned(),
    ];
    for page in &pages {
        let (status, headers, body) = w.get(page, Some(&s)).await;
        let expected = if page == "/login" {
            StatusCode::SEE_OTHER
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "{page}: {body}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        // Every form control a person fills in has a label, and the page scales on a phone.
        if page != "/login" {
            assert!(
                body.contains("<meta name=\"viewport\" content=\"width=device-width"),
                "{page}"
            );
            assert!(body.contains("<a class=\"skip\" href=\"#main\">"), "{page}");
        }
        for tag in ["<input", "<textarea", "<select"] {
            for (at, _) in body.match_indices(tag) {
                let head = &body[at..at + body[at..].find('>').unwrap()];
                if head.contains("type=\"hidden\"") {
                    continue;
                }
                let wrapped = body[..at].ends_with("<label>");
                let labelled = head
                    .split("id=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .is_some_and(|id| body.contains(&format!("<label for=\"{id}\"")));
                assert!(
                    wrapped || labelled,
                    "{page}: a control without a label: {head}"
                );
            }
        }
        // The only <script> elements load a file or hold JSON data.
        for tag in body.split("<script").skip(1) {
            let head = &tag[..tag.find('>').unwrap()];
            assert!(
                head.contains("src=\"/assets/") || head.contains("type=\"application/json\""),
                "{page}: <script{head}>"
            );
        }
    }
    // The approval shows its whole agent.nix, escaped.
    let (_, _, detail) = w.get(&format!("/approvals/{approval}"), Some(&s)).await;
    assert!(
        detail.contains("hyperhive.model = &#34;&#60;b&#62;m1&#60;/b&#62;&#34;"),
        "{detail}"
    );
    assert!(!detail.contains("<b>m1</b>"));
    // An unknown agent or approval is a 404 page that names no file.
    for page in ["/agents/nobody", "/approvals/999999", "/no/such/page"] {
        let (status, _, body) = w.get(page, Some(&s)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{page}");
        assert!(!body.contains(w.dir.path().to_str().unwrap()), "{body}");
    }
    // The assets are embedded.
    for asset in [
        "/assets/app.js",
        "/assets/style.css",
        "/assets/uplot.iife.min.js",
        "/assets/uplot.min.css",
    ] {
        let (status, _, body) = w.get(asset, None).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert!(body.len() > 500, "{asset}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_in_a_message_shows_as_text() {
    let w = web().await;
    let s = w.login().await;
    let (status, _, body) = w
        .post_form(
            "/send",
            Some(&s),
            Some(ORIGIN),
            &[
                ("csrf", &s.csrf),
                ("to", "manager"),
                ("body", "<script>alert(1)</script>"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    for page in ["/messages", "/agents/manager"] {
        let (_, _, body) = w.get(page, Some(&s)).await;
        assert!(
            body.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{page}: {body}"
        );
        assert!(!body.contains("<script>alert"), "{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_answers_a_question_and_denies_with_a_note() {
    let w = web().await;
    let s = w.login().await;
    let q = w
        .hive
        .ask_operator(
            &AgentName::manager(),
            "Which?".into(),
            vec!["a".into(), "b".into()],
            true,
            None,
        )
        .await
        .unwrap();
    let (_, _, page) = w.get("/questions", Some(&s)).await;
    assert!(
        page.contains("type=\"checkbox\" name=\"choice\" value=\"a\""),
        "{page}"
    );
    let (status, _, _) = w
        .post_form(
            &format!("/questions/{}/answer", q.id),
            Some(&s),
            Some(ORIGIN),
            &[("csrf", &s.csrf), ("choice", "a"), ("choice", "b")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let answered = w.hive.questions(true).await.unwrap();
    assert_eq!(answered[0].status, "answered");
    assert!(answered[0].answer.as_deref().unwrap().contains('b'));

    let approval = w.pending_spawn("carol", "{ ... }: { }\n").await;
    let deny = format!("/approvals/{approval}/deny");
    // No note where one is required: refused with the broker's message, nothing changed.
    let before = w.snapshot();
    let (status, _, body) = w
        .post_form(&deny, Some(&s), Some(ORIGIN), &[("csrf", &s.csrf)])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(w.snapshot(), before);
    let (status, _, _) = w
        .post_form(
            &deny,
            Some(&s),
            Some(ORIGIN),
            &[("csrf", &s.csrf), ("note", "not now")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let a = w.hive.approval(approval).await.unwrap();
    assert_eq!(a.status.to_string(), "denied");
    assert_eq!(a.note.as_deref(), Some("not now"));
}

/// A pending approval stays listed however many approvals were resolved after it (the page
/// once partitioned only the newest 500 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_approval_is_listed_behind_many_resolved_ones() {
    let w = web().await;
    let s = w.login().await;
    let pending = w.pending_spawn("bob", "{ ... }: { }\n").await;
    // 600 resolved approvals after it, written straight into the table (a history that the
    // real path would take minutes of git to make).
    let db = rusqlite::Connection::open(w.hive.state_dir().db()).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600)
         INSERT INTO approvals (kind, agent, requester, commit_sha, description, diff, status,
                                created_at, resolved_at)
         SELECT 'apply', 'manager', 'manager', printf('%040d', i), 'old change', '', 'deployed',
                i, i FROM n",
    )
    .unwrap();
    let (status, _, page) = w.get("/approvals", Some(&s)).await;
    assert_eq!(status, StatusCode::OK);
    let listed = between(&page, "<div id=\"pending\"", "</div>");
    assert!(
        listed.contains(&format!("href=\"/approvals/{pending}\"")),
        "{listed}"
    );
    let history = between(&page, "<div id=\"history\"", "</div>");
    assert_eq!(
        history.matches("<tr><td>").count(),
        200,
        "the newest 200 resolved"
    );
}

/// The agent page shows the applied agent.nix and its deploy history, each deploy with a
/// rollback button; a rollback through it records a rollback deploy, and one to a deploy that is
/// not this agent's changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_page_lists_deploys_and_rolls_back() {
    let w = web().await;
    let s = w.login().await;
    let approval = w
        .pending_spawn("bob", "{ ... }: { hyperhive.model = \"m1\"; }\n")
        .await;
    w.hive.approve(approval).await.unwrap();
    let bob = AgentName::parse("bob").unwrap();
    let deploys = w.hive.deploys(&bob).await.unwrap();
    let first = deploys.last().unwrap().id;
    let (status, _, page) = w.get("/agents/bob", Some(&s)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("hyperhive.model = &#34;m1&#34;"), "{page}");
    let history = between(&page, "<div id=\"deploys\"", "</table>");
    assert!(
        history.contains(&format!(
            "<input type=\"hidden\" name=\"deploy\" value=\"{first}\">"
        )) && history.contains("action=\"/agents/bob/rollback\""),
        "{history}"
    );
    assert!(history.contains(&format!("aria-label=\"Roll back to deploy {first}\"")));

    // A deploy of another agent (the manager's), or none at all: refused, nothing changed.
    let before = w.snapshot();
    for fields in [vec![("deploy", "999999")], vec![]] {
        let mut all = fields.clone();
        all.push(("csrf", &s.csrf));
        let (status, _, body) = w
            .post_form("/agents/bob/rollback", Some(&s), Some(ORIGIN), &all)
            .await;
        assert!(status.is_client_error(), "{fields:?}: {status} {body}");
        assert_eq!(w.snapshot(), before, "{fields:?}");
    }
    let first_text = first.to_string();
    let (status, headers, body) = w
        .post_form(
            "/agents/bob/rollback",
            Some(&s),
            Some(ORIGIN),
            &[("csrf", &s.csrf), ("deploy", &first_text)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(headers[header::LOCATION], "/agents/bob");
    let after = w.hive.deploys(&bob).await.unwrap();
    assert_eq!(after.len(), deploys.len() + 1);
    assert_eq!(after.last().unwrap().kind, "rollback");
    assert_eq!(after.last().unwrap().commit, deploys.last().unwrap().commit);
}

#[tokio::test]
async fn the_operator_pauses_and_resumes_an_agent_from_its_page() {
    let w = web().await;
    let s = w.login().await;
    let manager = AgentName::manager();
    let (_, _, page) = w.get("/agents/manager", Some(&s)).await;
    assert!(page.contains("action=\"/agents/manager/pause\""), "{page}");
    // Without the CSRF token: refused, nothing changed.
    let before = w.snapshot();
    let (status, _, _) = w
        .post_form("/agents/manager/pause", Some(&s), Some(ORIGIN), &[])
        .await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(w.snapshot(), before);
    assert!(!w.hive.is_paused(&manager));
    for (action, paused) in [("pause", true), ("resume", false)] {
        let (status, headers, body) = w
            .post_form(
                &format!("/agents/manager/{action}"),
                Some(&s),
                Some(ORIGIN),
                &[("csrf", &s.csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        assert_eq!(headers[header::LOCATION], "/agents/manager");
        assert_eq!(w.hive.is_paused(&manager), paused, "after {action}");
    }
}

#[tokio::test]
async fn the_approvals_history_shows_each_build_and_the_tail_of_a_failed_one() {
    let w = web().await;
    let s = w.login().await;
    let ok = w
        .pending_spawn("bob", "{ ... }: { hyperhive.model = \"m1\"; }\n")
        .await;
    w.hive.approve(ok).await.unwrap();
    let failed = w
        .pending_spawn("carol", "{ ... }: { hyperhive.model = \"m1\"; }\n")
        .await;
    w.hive.approve(failed).await.unwrap();
    // The build's own words, as a failed nix evaluation leaves them (and a script in them).
    let message = (1..=10)
        .map(|i| format!("build line {i}"))
        .chain(["error: <script>alert(1)</script> at agent.nix:12:5".to_owned()])
        .collect::<Vec<_>>()
        .join("\n");
    let db = rusqlite::Connection::open(w.hive.state_dir().db()).unwrap();
    db.execute(
        "UPDATE deploys SET status = 'failed', log_tail = ?1 WHERE approval_id = ?2",
        rusqlite::params![message, failed],
    )
    .unwrap();
    let (status, _, page) = w.get("/approvals", Some(&s)).await;
    assert_eq!(status, StatusCode::OK);
    let history = between(&page, "<div id=\"history\"", "</table>");
    let row = |id: i64| between(history, &format!("<a href=\"/approvals/{id}\">"), "</tr>");
    let bob = w
        .hive
        .deploys(&AgentName::parse("bob").unwrap())
        .await
        .unwrap();
    let built = bob.last().unwrap().status.to_string();
    assert!(row(ok).contains(&format!(">{built}</span>")), "{}", row(ok));
    assert!(!row(ok).contains("build-tail"), "{}", row(ok));
    let tail = row(failed);
    assert!(tail.contains(">failed</span>"), "{tail}");
    assert!(
        tail.contains("build line 8\nbuild line 9\nbuild line 10\nerror: &#60;script&#62;"),
        "{tail}"
    );
    assert!(
        !tail.contains("build line 7") && !tail.contains("<script>"),
        "{tail}"
    );
}

/// Waits until `check` holds (the watcher and the log follower act on their own tasks).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The files under `secrets/` (path, mode, content): "no key was stored".
fn secrets_snapshot(w: &Web) -> String {
    use std::os::unix::fs::PermissionsExt;
    let root = w.hive.state_dir().root().join("secrets");
    let mut out = vec![];
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                stack.push(path.clone());
                vec![]
            };
            out.push(format!(
                "{} {:o} {:?}",
                path.strip_prefix(&root).unwrap().display(),
                meta.permissions().mode(),
                content
            ));
        }
    }
    out.sort();
    out.join("\n")
}

/// The agent page's login panel: the exact `hive login NAME` command, and a form that stores an
/// API key as `hive login NAME --api-key-file F` does; the watcher then reports the agent logged
/// in. A bad key (empty, NUL, a newline, spaces, huge) is refused and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_panel_stores_a_good_api_key_and_refuses_bad_ones() {
    use std::os::unix::fs::PermissionsExt;
    let w = web().await;
    let mut parts = broker::components::Components::default();
    parts
        .start("watcher", |scope| w.hive.run_watcher(scope))
        .unwrap();
    let manager = AgentName::manager();
    until("the watcher's first look", || {
        w.hive.agent_axes(&manager).logged_in == Some(false)
    })
    .await;
    let s = w.login().await;
    let (status, _, page) = w.get("/agents/manager", Some(&s)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("id=\"login-panel\""), "{page}");
    assert!(
        page.contains("<pre class=\"code\" id=\"login-command\">hive login manager</pre>"),
        "{page}"
    );
    assert!(
        page.contains("action=\"/agents/manager/api-key\""),
        "{page}"
    );
    assert!(page.contains("<label for=\"api-key\">"), "{page}");

    let key_path = w.hive.state_dir().agent_api_key(&manager);
    let before = (w.snapshot(), secrets_snapshot(&w));
    let huge = "k".repeat(5000);
    for bad in [
        "",
        "   ",
        "sk-ant\0key",
        "sk-ant-key\nsecond-line",
        "two words",
        &huge,
    ] {
        let (status, _, body) = w
            .post_form(
                "/agents/manager/api-key",
                Some(&s),
                Some(ORIGIN),
                &[("csrf", &s.csrf), ("api_key", bad)],
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert!(
            body.contains("not an API key") || body.contains("longer than 4096 bytes"),
            "{body}"
        );
        assert!(
            bad.trim().is_empty() || !body.contains(bad),
            "the key echoed: {body}"
        );
        assert_eq!((w.snapshot(), secrets_snapshot(&w)), before, "{bad:?}");
    }
    // A good key without the CSRF token, or from another origin: refused, nothing stored.
    let good = "sk-ant-api03-Good_Key-0123456789";
    for (origin, csrf) in [
        (ORIGIN, "0".repeat(64)),
        ("http://evil.example", s.csrf.clone()),
    ] {
        let (status, _, _) = w
            .post_form(
                "/agents/manager/api-key",
                Some(&s),
                Some(origin),
                &[("csrf", &csrf), ("api_key", good)],
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!((w.snapshot(), secrets_snapshot(&w)), before);
    }
    assert!(!key_path.exists());
    // An unknown agent: refused, nothing stored.
    let (status, _, _) = w
        .post_form(
            "/agents/nobody/api-key",
            Some(&s),
            Some(ORIGIN),
            &[("csrf", &s.csrf), ("api_key", good)],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!((w.snapshot(), secrets_snapshot(&w)), before);

    // The good key, with surrounding whitespace as a paste brings it: stored trimmed, 0600.
    let (status, headers, body) = w
        .post_form(
            "/agents/manager/api-key",
            Some(&s),
            Some(ORIGIN),
            &[("csrf", &s.csrf), ("api_key", &format!("  {good}\n"))],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(headers[header::LOCATION], "/agents/manager");
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        format!("{good}\n")
    );
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    until("the watcher reports logged_in", || {
        w.hive.agent_axes(&manager).logged_in == Some(true)
    })
    .await;
    let (_, _, page) = w.get("/agents/manager", Some(&s)).await;
    assert!(!page.contains("id=\"login-panel\""), "{page}");
    assert!(page.contains(">logged in</span>"), "{page}");
    assert!(!page.contains(good), "the key is never shown");
    parts.stop(std::time::Duration::from_secs(5)).await;
}

/// The agent page's log follows: the page names its stream, and that stream (through the
/// dashboard's session) brings the last lines, then each line appended, without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_page_log_follows_appended_lines() {
    use std::io::Write;
    let w = web().await;
    let s = w.login().await;
    let manager = AgentName::manager();
    let log_path = w.hive.state_dir().agent_log(&manager);
    std::fs::create_dir_all(log_path.parent().unwrap()).unwrap();
    std::fs::write(&log_path, "first line <b>\n").unwrap();
    let (_, _, page) = w.get("/agents/manager", Some(&s)).await;
    let follow = between(&page, "id=\"log\"", ">");
    let url = between(follow, "data-follow=\"", "\"").replace("&#38;", "&");
    assert_eq!(url, "/api/v1/agents/manager/logs?follow=1&lines=100");
    assert!(page.contains("first line &#60;b&#62;"), "{page}");

    let res = w
        .app
        .clone()
        .oneshot(
            Request::get(&url)
                .header(header::HOST, HOST)
                .header(header::COOKIE, format!("hive_session={}", s.cookie))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    if res.status() != StatusCode::OK {
        let body = res.into_body().collect().await.unwrap().to_bytes();
        panic!("{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = res.into_body();
    let mut seen = String::new();
    let mut next_until = async |seen: &mut String, text: &str| {
        while !seen.contains(text) {
            let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
                .await
                .unwrap_or_else(|_| panic!("no {text:?} within 10 s; saw {seen}"))
                .expect("the stream goes on")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    };
    next_until(&mut seen, "first line <b>\\n").await;
    assert!(seen.starts_with("event: log\n"), "{seen}");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .unwrap();
    f.write_all(b"appended later\n").unwrap();
    next_until(&mut seen, "appended later\\n").await;
    assert_eq!(seen.matches("first line").count(), 1, "{seen}");
    // Without a session the stream is refused.
    let (status, _, _) = w.get(&url, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[test]
fn the_operator_token_is_made_0600_and_a_wider_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.token");
    let token = dashboard::web::auth::load_or_create_token(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        dashboard::web::auth::load_or_create_token(&path).unwrap(),
        token
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = dashboard::web::auth::load_or_create_token(&path).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

/// A change whose check found it widening isolation, and whose check build failed, shows its
/// flags first in the list and on its page, and its approve form asks for both confirmations;
/// the server checks them, whatever the browser sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widening_change_with_a_failed_build_needs_both_confirmations() {
    let w = web().await;
    let s = w.login().await;
    let approval = w.pending_spawn("bob", "{ ... }: { }\n").await;
    // The check's result, as the review component stores it (this hive builds nothing).
    let db = rusqlite::Connection::open(w.hive.state_dir().db()).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute(
        "INSERT INTO approval_checks (approval_id, status, message, risk, started_at, finished_at)
         VALUES (?1, 'failed', 'error: <b>bad</b> at agent.nix:3', ?2, 1, 2)",
        rusqlite::params![
            approval,
            r#"[{"flag":"egress_added","widening":true,"details":["<i>x</i>:443"]}]"#
        ],
    )
    .unwrap();
    let (status, _, page) = w.get("/approvals", Some(&s)).await;
    assert_eq!(status, StatusCode::OK);
    let listed = between(&page, "<div id=\"pending\"", "</div>");
    assert!(
        listed.contains("risk-widening") && listed.contains("egress_added"),
        "{listed}"
    );
    assert!(listed.contains("check-failed"), "{listed}");
    let (_, _, detail) = w.get(&format!("/approvals/{approval}"), Some(&s)).await;
    let risk = detail.find("id=\"risk\"").expect("the flags");
    assert!(
        risk < detail.find("class=\"facts\"").unwrap(),
        "flags first"
    );
    assert!(!detail.contains("<i>x"), "escaped details: {detail}");
    assert!(!detail.contains("<b>bad"), "escaped message");
    assert!(
        detail.contains("x&#60;/i&#62;:443") || detail.contains("x&lt;/i&gt;:443"),
        "{detail}"
    );
    assert!(detail.contains("name=\"yes_widen\""), "{detail}");
    assert!(
        detail.contains("name=\"override_failed_build\""),
        "{detail}"
    );

    let approve = format!("/approvals/{approval}/approve");
    let before = w.snapshot();
    for fields in [
        &[][..],
        &[("yes_widen", "1")][..],
        &[("override_failed_build", "1")][..],
    ] {
        let (status, _, _) = w
            .post_form(
                &approve,
                Some(&s),
                Some(ORIGIN),
                &with_csrf(fields, &s.csrf),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{fields:?}");
        assert_eq!(w.snapshot(), before, "{fields:?}");
    }
    let both = [("yes_widen", "1"), ("override_failed_build", "1")];
    let (status, _, _) = w
        .post_form(&approve, Some(&s), Some(ORIGIN), &with_csrf(&both, &s.csrf))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        w.hive.approval(approval).await.unwrap().status.to_string(),
        "approved"
    );
}

/// The hive page shows the delivery latency of the last hour (none on a fresh hive); the messages
/// page shows each message's receipt: leased to its turn and delivered, with times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hive_page_shows_the_delivery_latency_and_the_messages_page_the_receipts() {
    use broker::names::{Recipient, Sender};
    let w = web().await;
    let s = w.login().await;
    let (status, _, page) = w.get("/", Some(&s)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Delivery in the last hour: none delivered."),
        "{page}"
    );

    let manager = AgentName::parse("manager").unwrap();
    let id = w
        .hive
        .send(
            &Sender::Operator,
            &Recipient::Agent(manager.clone()),
            "work".into(),
            None,
        )
        .await
        .unwrap()[0];
    let turn = w
        .hive
        .next_turn(&manager, std::time::Duration::ZERO)
        .await
        .unwrap()
        .expect("a turn");
    w.hive
        .finish_turn(&manager, turn.turn, "ok", None)
        .await
        .unwrap();
    let m = w.hive.message(id).await.unwrap();
    let (leased, delivered) = (m.leased_at.unwrap(), m.delivered_at.unwrap());

    let (_, _, page) = w.get("/", Some(&s)).await;
    assert!(
        page.contains("Delivery in the last hour: 1 delivered, p50 "),
        "{page}"
    );
    let (_, _, page) = w.get("/messages", Some(&s)).await;
    let when = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .unwrap()
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    for step in [
        format!("leased {} (turn {})", when(leased), turn.turn),
        format!("delivered {}", when(delivered)),
    ] {
        assert!(
            page.contains(&format!(r#"<span class="receipt">{step}</span>"#)),
            "{step} in {page}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hive_page_checks_an_agent_kept_stopped_again() {
    // x1's applied repo loses its objects while the hive is down: kept stopped at the next start.
    let first = web().await;
    first.hive.spawn("x1", None).await.unwrap();
    first.hive.close();
    let Web { dir, hive, app, .. } = first;
    drop((app, hive));
    let objects = dir.path().join("applied/x1/objects");
    let kept = dir.path().join("x1-objects");
    std::fs::rename(&objects, &kept).unwrap();

    let w = web_in(dir, |_| {}).await;
    let s = w.login().await;
    let x1 = AgentName::parse("x1").unwrap();
    assert!(w.hive.is_faulted(&x1));
    let (_, _, page) = w.get("/", Some(&s)).await;
    assert!(page.contains("action=\"/agents/x1/recheck\""), "{page}");

    let form = [("csrf", s.csrf.as_str()), ("back", "hive")];
    let recheck = || w.post_form("/agents/x1/recheck", Some(&s), Some(ORIGIN), &form);

    // Still broken: refused with the reason, nothing changed.
    let before = w.snapshot();
    let (status, _, body) = recheck().await;
    assert!(status.is_client_error(), "{status}");
    assert!(body.contains("x1 is still inconsistent"), "{body}");
    assert_eq!(w.snapshot(), before);
    assert!(w.hive.is_faulted(&x1));

    // Mended: back to the hive page, no longer kept stopped.
    std::fs::rename(&kept, &objects).unwrap();
    let (status, headers, body) = recheck().await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(headers[header::LOCATION], "/");
    assert!(!w.hive.is_faulted(&x1));
    let (_, _, page) = w.get("/", Some(&s)).await;
    assert!(!page.contains("/agents/x1/recheck"), "{page}");
}
