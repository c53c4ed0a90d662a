//! Alerts only when a human is needed (DESIGN §9): a pending approval, a question to the operator,
//! a crash loop, a spent budget, a login needed — read off the bus, batched for
//! `[notify] batch_seconds`, and POSTed to `[notify] url` as an ntfy message or a webhook's JSON,
//! with a one-time link that opens the first item in the dashboard (after a login: the link alone
//! grants nothing, as an alert topic may be public). Nothing else notifies:
//! not messages between agents, not messages to the operator, not the other helper events.
//!
//! It owns the choice of what alerts, the batching and the POST; it never retries a POST the
//! endpoint refused (the item is still in the dashboard), never blocks the bus, and never puts an
//! agent's text into a notification unescaped or uncut. A service ([`Notifier`]) built in
//! `Hive::open` holding `[notify]` and the bus; `hive serve` starts it as a component through
//! `Hive::run_notifier`, giving it the dashboard's link minter.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::json;

use crate::bus::{Bus, Event};
use crate::components::Scope;
use crate::config::{NotifyConfig, NotifyFormat};
use crate::error::{Error, Result};

/// The most items one notification lists (more are counted, not listed).
const MAX_ITEMS: usize = 20;
/// The longest agent-written text in an item.
const MAX_TEXT: usize = 200;
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes a one-time link that opens a dashboard path (`/approvals/12`); `None` when
/// the dashboard is off.
pub type LinkMinter = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// One thing that needs the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// `approval`, `question`, `crash_loop`, `budget_exhausted` or `needs_login`.
    pub kind: &'static str,
    pub text: String,
    /// The dashboard page that shows it.
    pub path: String,
}

/// The alert an event calls for, if any.
pub fn alert_of(event: &Event) -> Option<Alert> {
    match event {
        Event::ApprovalRequested { approval } => Some(Alert {
            kind: "approval",
            text: format!(
                "approval #{}: {} of {} asked by {}{}",
                approval.id,
                approval.kind,
                shown(&approval.agent),
                shown(&approval.requester),
                if approval.description.is_empty() {
                    String::new()
                } else {
                    format!(": {}", shown(&approval.description))
                }
            ),
            path: format!("/approvals/{}", approval.id),
        }),
        Event::QuestionAsked {
            asker, question, ..
        } => Some(Alert {
            kind: "question",
            text: format!("{} asks: {}", shown(asker), shown(question)),
            path: "/questions".into(),
        }),
        Event::Helper { agent, name, .. } => {
            let (kind, what) = match name.as_str() {
                "crash_loop" => ("crash_loop", "keeps crashing and is kept stopped"),
                "budget_exhausted" => ("budget_exhausted", "spent its daily token budget"),
                "needs_login" => ("needs_login", "needs a model login"),
                _ => return None,
            };
            Some(Alert {
                kind,
                text: format!("{} {what}", shown(agent)),
                path: format!("/agents/{}", shown(agent)),
            })
        }
        _ => None,
    }
}

/// `text` on one line, control characters escaped, cut to [`MAX_TEXT`] characters.
fn shown(text: &str) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == MAX_TEXT {
            out.push('…');
            break;
        }
        if c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What one POST says.
struct Notification {
    title: String,
    lines: Vec<String>,
    items: Vec<Alert>,
    link: Option<String>,
}

fn notification(batch: &[Alert], minter: Option<&LinkMinter>) -> Notification {
    let title = match batch {
        [one] => format!("hyperhive: {} needs you", one.kind.replace('_', " ")),
        _ => format!("hyperhive: {} things need you", batch.len()),
    };
    let mut lines: Vec<String> = batch
        .iter()
        .take(MAX_ITEMS)
        .map(|a| a.text.clone())
        .collect();
    if batch.len() > MAX_ITEMS {
        lines.push(format!(
            "… and {} more in the dashboard",
            batch.len() - MAX_ITEMS
        ));
    }
    let link = batch.first().and_then(|a| minter.and_then(|m| m(&a.path)));
    Notification {
        title,
        lines,
        items: batch.iter().take(MAX_ITEMS).cloned().collect(),
        link,
    }
}

/// The POST of `n` in `format`.
fn request(url: &Uri, format: NotifyFormat, n: &Notification) -> Result<Request<Full<Bytes>>> {
    let builder = Request::post(url.clone());
    let built = match format {
        NotifyFormat::Ntfy => {
            let mut b = builder
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .header("Tags", "bee");
            // Header values must be visible ASCII: the title is ours; the link is a URL.
            b = b.header("Title", HeaderValue::from_str(&n.title).map_err(invalid)?);
            if let Some(link) = &n.link {
                b = b.header("Click", HeaderValue::from_str(link).map_err(invalid)?);
            }
            b.body(Full::new(Bytes::from(n.lines.join("\n"))))
        }
        NotifyFormat::Webhook => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                json!({"title": n.title, "items": n.items, "link": n.link}).to_string(),
            ))),
    };
    built.map_err(invalid)
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::invalid("notify", e.to_string())
}

/// The notify service: what `[notify]` says, and the bus it reads.
pub struct Notifier {
    config: NotifyConfig,
    bus: Bus,
}

impl Notifier {
    pub(crate) fn new(config: NotifyConfig, bus: Bus) -> Self {
        Self { config, bus }
    }

    /// The notify component: reads the bus until the scope stops, batching alerts. Does nothing
    /// without `[notify] url`.
    pub fn run(&self, scope: &Scope, minter: Option<LinkMinter>) -> Result<()> {
        let config: NotifyConfig = self.config.clone();
        let Some(url) = config.url.clone() else {
            return Ok(());
        };
        let url: Uri = url.parse().map_err(invalid)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(POST_TIMEOUT));
        connector.enforce_http(false);
        let connector: HttpsConnector<HttpConnector> = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let mut bus = self.bus.subscribe();
        let stop = scope.stopping().clone();
        let window = Duration::from_secs(config.batch_seconds);
        scope.spawn(async move {
            let mut batch: Vec<Alert> = Vec::new();
            let mut due: Option<tokio::time::Instant> = None;
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                        let n = notification(&batch, minter.as_ref());
                        batch.clear();
                        due = None;
                        send(&client, &url, config.format, &n).await;
                        continue;
                    }
                    event = bus.recv() => event,
                };
                match event {
                    Ok(event) => {
                        if let Some(alert) = alert_of(&event) {
                            batch.push(alert);
                            due.get_or_insert_with(|| tokio::time::Instant::now() + window);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the notifier lagged behind the bus; some alerts were not sent");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
            // What was batched when the daemon stops still goes out.
            if !batch.is_empty() {
                let n = notification(&batch, minter.as_ref());
                send(&client, &url, config.format, &n).await;
            }
        });
        Ok(())
    }
}

async fn send(
    client: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: &Uri,
    format: NotifyFormat,
    n: &Notification,
) {
    let req = match request(url, format, n) {
        Ok(req) => req,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build an alert");
            return;
        }
    };
    match tokio::time::timeout(POST_TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => {
            tracing::info!(items = n.items.len(), "alert sent");
        }
        Ok(Ok(resp)) => {
            tracing::warn!(status = %resp.status(), "the alert endpoint refused an alert")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot send an alert"),
        Err(_) => tracing::warn!("sending an alert timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper(agent: &str, name: &str) -> Event {
        Event::Helper {
            agent: agent.into(),
            name: name.into(),
            body: Arc::new(json!({})),
        }
    }

    #[test]
    fn only_what_needs_a_human_alerts() {
        assert_eq!(
            alert_of(&helper("alice", "crash_loop")).unwrap().kind,
            "crash_loop"
        );
        assert_eq!(
            alert_of(&helper("alice", "needs_login")).unwrap().path,
            "/agents/alice"
        );
        assert!(alert_of(&helper("alice", "budget_exhausted")).is_some());
        for quiet in [
            "container_crash",
            "logged_in",
            "rebuilt",
            "spawned",
            "model_unreachable",
        ] {
            assert_eq!(alert_of(&helper("alice", quiet)), None, "{quiet}");
        }
        let q = Event::QuestionAsked {
            id: 3,
            asker: "bob".into(),
            question: "deploy?\u{1b}[2J\nnow".into(),
        };
        let a = alert_of(&q).unwrap();
        assert_eq!(a.text, "bob asks: deploy?\\u{1b}[2J\\nnow");
        assert!(
            alert_of(&Event::MessageDelivered {
                ids: vec![1],
                to: "x".into()
            })
            .is_none()
        );
    }

    #[test]
    fn a_batch_is_one_notification_with_a_link_to_its_first_item() {
        let alerts: Vec<Alert> = (0..25)
            .map(|n| Alert {
                kind: "question",
                text: format!("q{n}"),
                path: format!("/p{n}"),
            })
            .collect();
        let minter: LinkMinter =
            Arc::new(|path: &str| Some(format!("http://h/login/link?next={path}")));
        let n = notification(&alerts, Some(&minter));
        assert_eq!(n.title, "hyperhive: 25 things need you");
        assert_eq!(n.lines.len(), MAX_ITEMS + 1);
        assert_eq!(n.link.as_deref(), Some("http://h/login/link?next=/p0"));
        let one = notification(&alerts[..1], None);
        assert_eq!(one.title, "hyperhive: question needs you");
        assert_eq!(one.link, None);
        let long = shown(&"x".repeat(500));
        assert_eq!(long.chars().count(), MAX_TEXT + 1);
    }

    #[test]
    fn a_webhook_gets_one_json_object() {
        let n = notification(
            &[Alert {
                kind: "approval",
                text: "approval #3".into(),
                path: "/approvals/3".into(),
            }],
            None,
        );
        let url: Uri = "http://127.0.0.1:9/hook".parse().unwrap();
        let req = request(&url, NotifyFormat::Webhook, &n).unwrap();
        assert_eq!(req.headers()[header::CONTENT_TYPE], "application/json");
        let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
            req.into_body(),
        ))
        .unwrap()
        .unwrap()
        .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["title"], "hyperhive: approval needs you");
        assert_eq!(v["items"][0]["path"], "/approvals/3");
        assert_eq!(v["link"], serde_json::Value::Null);
    }
}
