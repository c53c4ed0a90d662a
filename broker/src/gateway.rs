//! The model route (DESIGN §11): for every agent, `run/agents/<name>/gateway.sock`, an HTTP/1.1
//! server that forwards the agent's model requests to `[model] anthropic_base_url` (the Anthropic
//! Messages paths) or `[model] openai_base_url` (`/v1/chat/completions`, for the openai driver). Inside a
//! container the claude CLI reaches it with `ANTHROPIC_UNIX_SOCKET=/run/hive/gateway.sock` and
//! `ANTHROPIC_BASE_URL=http://model-gateway` (FACTS D), so an agent needs no network and never
//! sees an API key: the gateway adds the agent's own key (`secrets/<name>/api-key`, stored by
//! `hive login --api-key-file` or the dashboard) to its Anthropic requests, else `[model]
//! api_key_file`'s, replacing whatever credential the agent sent.
//!
//! This module owns the listener, the peer check (the MCP sockets' own), the header rewrite and the
//! streaming in both directions: bodies pass through frame by frame, so server-sent events reach the
//! agent as the provider sends them; only a provider's error answer is read whole (bounded) to be
//! masked (`redact`). A CONNECT is handed to `egress`. It must never buffer a success body, log a
//! request's content or headers, or forward a path other than the Anthropic Messages and OpenAI
//! chat-completions ones.

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use proto::helper::{self, HelperEvent};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Admit, Breaker, Transition};
use crate::components::Scope;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::model_calls::{Call, UsageScanner};
use crate::names::AgentName;

/// The socket's file name in the agent's run directory.
pub const SOCKET: &str = "gateway.sock";
/// The largest request body forwarded; a larger one is answered 413.
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
/// Open connections per agent; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The paths forwarded to `anthropic_base_url`.
pub const FORWARDED_PATHS: [&str; 2] = ["/v1/messages", "/v1/messages/count_tokens"];
/// The largest error answer of a provider read (to be masked) before it reaches the agent.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;
/// The path forwarded to `openai_base_url`; anything else is answered 404.
pub const OPENAI_PATH: &str = "/v1/chat/completions";

type UpstreamBody = Limited<Incoming>;
/// What the agent gets: the provider's body as it arrives, or the gateway's own JSON error.
pub type GatewayBody = Either<Incoming, Full<Bytes>>;

/// One provider the gateway forwards to.
struct Upstream {
    /// `anthropic` or `openai`, as stored with each call.
    name: &'static str,
    /// The base URL as configured, for messages.
    base_url: String,
    /// Scheme and authority of the base URL.
    origin: Uri,
    /// Its path without the trailing `/` (empty for none): prefixed to every forwarded path.
    prefix: String,
    /// The hive's key for it, and the header that carries it (`x-api-key` for Anthropic,
    /// `authorization: Bearer` for OpenAI).
    api_key: Option<(HeaderName, HeaderValue)>,
    breaker: Breaker,
}

impl Upstream {
    fn new(
        field: &'static str,
        base_url: &str,
        key: Option<&Path>,
        key_field: &'static str,
        bearer: bool,
        config: &ModelConfig,
    ) -> Result<Self> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let uri: Uri = base_url
            .parse()
            .map_err(|e| Error::invalid(field, format!("{base_url:?} is not a URL: {e}")))?;
        let origin = Uri::builder()
            .scheme(uri.scheme_str().unwrap_or("http"))
            .authority(uri.authority().map(|a| a.as_str()).unwrap_or_default())
            .path_and_query("/")
            .build()
            .map_err(|e| Error::invalid(field, e.to_string()))?;
        let mut prefix = uri.path().trim_end_matches('/').to_owned();
        if bearer {
            // OpenAI-compatible base URLs are usually written with their `/v1`.
            if let Some(stripped) = prefix.strip_suffix("/v1") {
                prefix = stripped.to_owned();
            }
        }
        let name = if bearer { "openai" } else { "anthropic" };
        let api_key = key
            .map(|path| read_api_key(path, key_field))
            .transpose()?
            .map(|key| {
                key_header(name, key)
                    .ok_or_else(|| Error::invalid(key_field, "the key cannot be sent as a header"))
            })
            .transpose()?;
        Ok(Self {
            name,
            base_url,
            origin,
            prefix,
            api_key,
            breaker: Breaker::new(
                config.breaker_failures,
                Duration::from_secs(config.breaker_cooldown_secs),
            ),
        })
    }
}

impl Upstream {
    /// `key` as this upstream takes it; `None` when it cannot be a header.
    fn key_header(&self, key: HeaderValue) -> Option<(HeaderName, HeaderValue)> {
        key_header(self.name, key)
    }
}

/// `x-api-key: KEY` for Anthropic, `authorization: Bearer KEY` for OpenAI-compatible upstreams.
fn key_header(upstream: &str, key: HeaderValue) -> Option<(HeaderName, HeaderValue)> {
    if upstream != "openai" {
        return Some((HeaderName::from_static("x-api-key"), key));
    }
    let mut value =
        HeaderValue::from_bytes(&[b"Bearer ".as_slice(), key.as_bytes()].concat()).ok()?;
    value.set_sensitive(true);
    Some((header::AUTHORIZATION, value))
}

/// The forwarding side, built once at start from `[model]`.
pub struct Gateway {
    anthropic: Upstream,
    /// Unset: chat-completions requests are answered 404, saying so.
    openai: Option<Upstream>,
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
}

impl Gateway {
    /// Reads `[model]`: the base URLs (checked by `Config::check`) and the API key files, which
    /// must not be readable by group or others.
    pub fn new(config: &ModelConfig) -> Result<Self> {
        let anthropic = Upstream::new(
            "model.anthropic_base_url",
            &config.anthropic_base_url,
            config.api_key_file.as_deref(),
            "model.api_key_file",
            false,
            config,
        )?;
        let openai = config
            .openai_base_url
            .as_deref()
            .map(|url| {
                Upstream::new(
                    "model.openai_base_url",
                    url,
                    config.openai_api_key_file.as_deref(),
                    "model.openai_api_key_file",
                    true,
                    config,
                )
            })
            .transpose()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            anthropic,
            openai,
            client,
        })
    }
}

/// The key in `path`, trimmed; refused when group or others may read the file.
fn read_api_key(path: &Path, field: &'static str) -> Result<HeaderValue> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot read {field} {}", path.display()), e))?;
    let mode = meta.permissions().mode();
    if mode & 0o044 != 0 {
        return Err(Error::invalid(
            field,
            format!(
                "{} is readable by group or others (mode {:o}): chmod 600 it",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    if meta.len() > 64 * 1024 {
        return Err(Error::invalid(
            field,
            format!("{} is larger than an API key", path.display()),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read {field} {}", path.display()), e))?;
    let key = text.trim();
    crate::redact::remember(key);
    if key.is_empty() {
        return Err(Error::invalid(
            field,
            format!("{} is empty", path.display()),
        ));
    }
    let mut value = HeaderValue::from_str(key).map_err(|_| {
        Error::invalid(
            field,
            format!(
                "{} holds characters an HTTP header cannot carry",
                path.display()
            ),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The key in `secrets/<agent>/api-key` when there is one (`None` when the file is absent);
/// an error (never holding the key) when it is there but a symlink, not a plain file, or not a
/// valid key.
pub(crate) fn read_agent_key(
    root: &Path,
    file: &Path,
) -> std::result::Result<Option<HeaderValue>, &'static str> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(dir) = file.parent() else {
        return Err("no secrets directory");
    };
    crate::paths::checked_within(root, dir)
        .map_err(|_| "a symlink is in the way of its directory")?;
    let mut opened = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err("the file cannot be opened (a symlink?)"),
    };
    if !opened.metadata().is_ok_and(|m| m.is_file()) {
        return Err("not a plain file");
    }
    let mut bytes = Vec::new();
    (&mut opened)
        .take(crate::api_key::MAX_KEY_BYTES as u64 + 64)
        .read_to_end(&mut bytes)
        .map_err(|_| "the file cannot be read")?;
    let key = crate::api_key::validate(&bytes).map_err(|_| "not an API key")?;
    crate::redact::remember(&key);
    let mut value = HeaderValue::from_str(&key).map_err(|_| "not an API key")?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// Opens `dir/gateway.sock` for `agent` and serves it on `scope` until `token` is cancelled.
pub(crate) fn open(
    hive: &Arc<Hive>,
    agent: &AgentName,
    dir: &Path,
    token: &CancellationToken,
    scope: &Scope,
) -> Result<()> {
    let listener = crate::mcp::bind(&dir.join(SOCKET))?;
    scope.spawn(accept_loop(
        hive.clone(),
        agent.clone(),
        listener,
        token.clone(),
        scope.clone(),
    ));
    Ok(())
}

async fn accept_loop(
    hive: Arc<Hive>,
    agent: AgentName,
    listener: UnixListener,
    token: CancellationToken,
    scope: Scope,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(%agent, error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(refused) = crate::mcp::peer_allowed(&hive, &agent, &stream) {
            tracing::warn!(%agent, uid = refused.uid, pid = ?refused.pid,
                "refused a gateway connection from a uid that is not this agent's");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%agent, "too many gateway connections; closing one");
            continue;
        };
        let (hive, agent, token, tunnels) =
            (hive.clone(), agent.clone(), token.clone(), scope.clone());
        scope.spawn(async move {
            let _slot = slot;
            serve_connection(hive, agent, stream, token, tunnels).await;
        });
    }
}

/// One agent connection: HTTP/1.1 with keep-alive, each request forwarded (a CONNECT becomes an
/// egress tunnel on `tunnels`); on stop, the request in flight finishes and the connection
/// closes.
async fn serve_connection(
    hive: Arc<Hive>,
    agent: AgentName,
    stream: tokio::net::UnixStream,
    token: CancellationToken,
    tunnels: Scope,
) {
    let stop = token.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (hive, agent, token, tunnels) =
            (hive.clone(), agent.clone(), token.clone(), tunnels.clone());
        async move {
            if req.method() == hyper::Method::CONNECT {
                let resp = crate::egress::connect(&hive, &agent, req, &token, &tunnels).await;
                let (parts, body) = resp.into_parts();
                return Ok::<_, Infallible>(Response::from_parts(
                    parts,
                    Logged {
                        body,
                        log: None,
                        meter: None,
                    },
                ));
            }
            Ok::<_, Infallible>(forward(&hive, &agent, req).await)
        }
    });
    let token = stop;
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Forwards one request and logs one line when its answer has been sent (or dropped); a call
/// that reached the upstream is also stored with its usage (`model_calls`).
async fn forward(hive: &Arc<Hive>, agent: &AgentName, req: Request<Incoming>) -> Response<Logged> {
    let log = RequestLog {
        agent: agent.clone(),
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        status: 0,
        started: Instant::now(),
    };
    let (resp, upstream) = route(hive, agent, req).await;
    let (parts, body) = resp.into_parts();
    let log = RequestLog {
        status: parts.status.as_u16(),
        ..log
    };
    let meter = upstream.map(|upstream| Meter {
        hive: hive.clone(),
        upstream,
        scanner: UsageScanner::new(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        ),
    });
    Response::from_parts(
        parts,
        Logged {
            body,
            log: Some(log),
            meter,
        },
    )
}

/// The answer, and the upstream's name when the request reached it.
async fn route(
    hive: &Arc<Hive>,
    agent: &AgentName,
    req: Request<Incoming>,
) -> (Response<GatewayBody>, Option<&'static str>) {
    let gateway = &hive.gateway;
    let path = req.uri().path();
    let provider = if FORWARDED_PATHS.contains(&path) {
        &gateway.anthropic
    } else if path == OPENAI_PATH {
        match &gateway.openai {
            Some(openai) => openai,
            None => {
                return refused(
                    StatusCode::NOT_FOUND,
                    "not_found_error",
                    "the hive has no OpenAI-compatible provider: set [model] openai_base_url in \
                     hive.toml",
                );
            }
        }
    } else {
        return refused(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!(
                "the hive's model gateway forwards only {} and {OPENAI_PATH}; not {path}",
                FORWARDED_PATHS.join(", ")
            ),
        );
    };
    // The agent's own key, when the operator stored one, wins over the hive's.
    let file = hive.paths.agent_api_key(agent);
    let root = hive.paths.root().to_owned();
    let agent_key = match tokio::task::spawn_blocking(move || read_agent_key(&root, &file)).await {
        Ok(Ok(key)) => key,
        Ok(Err(why)) => {
            tracing::warn!(%agent, "the agent's stored API key is unusable: {why}");
            return refused(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                &format!(
                    "the API key stored for this agent is unusable ({why}): the operator \
                     stores it again with `hive login {agent} --api-key-file FILE`"
                ),
            );
        }
        Err(_) => {
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "the hive's model gateway failed to read the agent's API key",
            );
        }
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BYTES as u64) {
        return (too_large(), None);
    }
    if let Some(spent) = hive.budgets.exhausted(agent) {
        tracing::warn!(%agent, used = spent.used_today, limit = spent.tokens_per_day,
            "model call refused: the daily token budget is spent");
        let mut resp = refused(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            &spent.message(),
        )
        .0;
        // Retrying cannot help before the day ends.
        resp.headers_mut()
            .insert("x-should-retry", HeaderValue::from_static("false"));
        return (resp, None);
    }
    if let Admit::Refuse(retry_in) = provider.breaker.admit() {
        // Rounded up: a caller that waits this long finds the probe admitted.
        let secs = retry_in.as_secs_f64().ceil().max(1.0) as u64;
        let mut resp = refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            &format!(
                "the hive's model gateway stopped calling {} after {} failures in a row; it \
                 {}{secs} s",
                provider.base_url,
                hive.config.model.breaker_failures,
                proto::BREAKER_RETRY_IN
            ),
        )
        .0;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return (resp, None);
    }
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{}{path}?{q}", provider.prefix),
        None => format!("{}{path}", provider.prefix),
    };
    let (mut parts, body) = req.into_parts();
    let mut uri = provider.origin.clone().into_parts();
    uri.path_and_query = path_and_query.parse().ok();
    let Ok(uri) = Uri::from_parts(uri) else {
        // Admitted above: a half-open probe must not stay taken.
        provider.breaker.succeeded();
        return refused(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request's path and query do not make a URL",
        );
    };
    parts.uri = uri;
    parts.version = hyper::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    // Error answers are masked before the agent sees them (a provider may echo the key), which
    // needs them uncompressed.
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let key = match agent_key {
        Some(key) => provider
            .key_header(key)
            .or_else(|| provider.api_key.clone()),
        None => provider.api_key.clone(),
    };
    if let Some((name, key)) = key {
        // The hive's key replaces whatever credential the agent sent.
        parts.headers.remove(header::AUTHORIZATION);
        parts.headers.remove("x-api-key");
        parts.headers.insert(name, key);
    }
    let upstream = Request::from_parts(parts, Limited::new(body, MAX_REQUEST_BYTES));
    let answered = gateway.client.request(upstream).await;
    let down = match &answered {
        Ok(resp) => resp.status().is_server_error(),
        Err(e) => !caused_by_limit(e),
    };
    let transition = if down {
        provider.breaker.failed()
    } else {
        provider.breaker.succeeded()
    };
    if let Some(transition) = transition {
        breaker_moved(hive, agent, provider, transition);
    }
    let resp = match answered {
        Ok(resp) if resp.status().is_client_error() || resp.status().is_server_error() => {
            masked_error(resp).await
        }
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) if caused_by_limit(&e) => return (too_large(), None),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            "api_error",
            &crate::redact::mask(&format!(
                "the hive's model gateway cannot reach {}: {}",
                provider.base_url,
                error_chain(&e)
            )),
        ),
    };
    (resp, Some(provider.name))
}

/// The gateway's own answer to a request it did not forward.
fn refused(
    status: StatusCode,
    kind: &str,
    message: &str,
) -> (Response<GatewayBody>, Option<&'static str>) {
    (error(status, kind, message), None)
}

/// Logs an upstream's breaker opening or closing and tells the manager (a helper event).
fn breaker_moved(hive: &Arc<Hive>, agent: &AgentName, provider: &Upstream, moved: Transition) {
    let event = match moved {
        Transition::Opened(failures) => {
            tracing::warn!(
                upstream = provider.name,
                failures,
                "model upstream unreachable: its breaker opened"
            );
            HelperEvent::ModelUnreachable(helper::ModelUnreachable {
                upstream: provider.base_url.clone(),
                failures,
                retry_in_seconds: hive.config.model.breaker_cooldown_secs,
            })
        }
        Transition::Closed => {
            tracing::info!(
                upstream = provider.name,
                "model upstream answers again: its breaker closed"
            );
            HelperEvent::ModelReachable(helper::ModelReachable {
                upstream: provider.base_url.clone(),
            })
        }
    };
    let (hive, agent) = (hive.clone(), agent.clone());
    tokio::spawn(async move {
        let event_name = event.name();
        let told = hive
            .watcher
            .tell_manager_of(&agent, "model_upstream", event_name.to_owned(), event)
            .await;
        if let Err(e) = told {
            tracing::warn!(%agent, event = event_name, error = %e, "cannot tell the manager");
        }
    });
}

/// Stores one forwarded call and counts its tokens against `agent`'s budget; the call that
/// spends the last of it tells the manager `budget_exhausted`.
async fn record_call(hive: Arc<Hive>, agent: AgentName, call: Call) {
    let tokens = call.usage.tokens();
    if let Err(e) = crate::model_calls::insert(&hive.store, &agent, call).await {
        tracing::warn!(%agent, error = %e, "cannot store a model call");
    }
    let Some(spent) = hive.budgets.spend(&agent, tokens) else {
        return;
    };
    tracing::warn!(%agent, used = spent.used_today, limit = spent.tokens_per_day,
        "the agent's daily token budget is spent");
    let day = crate::model_calls::utc_day();
    let event = HelperEvent::BudgetExhausted(helper::BudgetExhausted {
        tokens_per_day: spent.tokens_per_day,
        used_today: spent.used_today,
        how: "its model calls are refused until 00:00 UTC, or until a raised \
              hyperhive.budget.tokensPerDay is approved"
            .to_owned(),
    });
    let told = hive
        .watcher
        .tell_manager_of(&agent, "budget", format!("exhausted:{day}"), event)
        .await;
    if let Err(e) = told {
        tracing::warn!(%agent, error = %e, "cannot tell the manager of a spent budget");
    }
}

/// The provider's error answer, read whole (they are small; a larger one is replaced by the
/// gateway's own 502) and masked: a provider may quote the key it refused, and the agent must
/// not learn it that way.
async fn masked_error(resp: Response<Incoming>) -> Response<GatewayBody> {
    use http_body_util::BodyExt;
    let (mut parts, body) = resp.into_parts();
    let bytes = match Limited::new(body, MAX_ERROR_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "api_error",
                &format!(
                    "the provider answered {} with a body the gateway could not read whole \
                     (larger than {MAX_ERROR_BYTES} bytes, or cut)",
                    parts.status
                ),
            );
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let body = match crate::redact::mask(&text) {
        std::borrow::Cow::Borrowed(_) => bytes,
        std::borrow::Cow::Owned(masked) => Bytes::from(masked),
    };
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    Response::from_parts(parts, Either::Right(Full::new(body)))
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and those the
/// `connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

fn caused_by_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<LengthLimitError>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// `e` and its sources, `: `-joined (hyper's own message is only "client error (Connect)").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

fn too_large() -> Response<GatewayBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        &format!(
            "the request body is larger than the hive's model gateway forwards ({MAX_REQUEST_BYTES} bytes)"
        ),
    )
}

/// An Anthropic-shaped error, so the claude CLI shows its message.
fn error(status: StatusCode, kind: &str, message: &str) -> Response<GatewayBody> {
    let body = serde_json::json!({
        "type": "error",
        "error": {"type": kind, "message": message},
    });
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// What the one log line of a request says.
struct RequestLog {
    agent: AgentName,
    method: String,
    path: String,
    status: u16,
    started: Instant,
}

/// Reads a forwarded answer's usage as it passes, for `model_calls` and the budget.
struct Meter {
    hive: Arc<Hive>,
    upstream: &'static str,
    scanner: UsageScanner,
}

/// A response body that logs its request's line when it is done with (sent to its end, or
/// dropped because the agent went away), so the duration covers the whole stream; a forwarded
/// call's usage is stored then too.
pub struct Logged {
    body: GatewayBody,
    log: Option<RequestLog>,
    meter: Option<Meter>,
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let (Some(meter), Some(log)) = (self.meter.take(), self.log.as_ref()) {
            let usage = meter.scanner.finish();
            let cost_usd = usage
                .model
                .as_deref()
                .and_then(|m| meter.hive.config.model.price_of(m))
                .map(|p| usage.cost_usd(p));
            let call = Call {
                upstream: meter.upstream,
                status: log.status,
                ms: log.started.elapsed().as_millis() as u64,
                usage,
                cost_usd,
            };
            let (hive, agent) = (meter.hive, log.agent.clone());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(record_call(hive, agent, call));
            }
        }
        if let Some(log) = self.log.take() {
            tracing::info!(
                agent = %log.agent,
                method = log.method,
                path = log.path,
                status = log.status,
                ms = log.started.elapsed().as_millis() as u64,
                "model request"
            );
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.body {
            Either::Left(body) => Pin::new(body).poll_frame(cx),
            Either::Right(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never: Infallible| match never {}),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(meter)) = (&polled, this.meter.as_mut())
            && let Some(data) = frame.data_ref()
        {
            meter.scanner.feed(data);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
