//! The egress allow-list (DESIGN §16): an agent reaches the network only by HTTP CONNECT through
//! its `gateway.sock`, and only to the `host:port` pairs of `hyperhive.egress` in the agent.nix
//! of its *deployed* image (set at each container start, so a changed list takes effect only
//! once its commit is approved and deployed). Names are resolved here and the connection is made
//! to the resolved address (no second lookup an agent could race); an address that is private,
//! loopback, link-local (the cloud metadata service among them) or otherwise not public is
//! refused unless the entry names it literally. Every refusal is answered 403 with its reason,
//! written as one line to the agent's log and audited as `egress_denied`.
//!
//! It owns the lists, the decision and the tunnel; it never forwards anything but CONNECT, never
//! connects to an address it did not check, and never follows a path out of the state dir.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::components::Scope;
use crate::gateway::GatewayBody;
use crate::hive::Hive;
use crate::names::AgentName;

/// How long a connection to an allowed target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest target kept in a log line or an audit row (an agent chooses it).
const MAX_TARGET_SHOWN: usize = 300;

/// Each running agent's allowed `host:port` pairs, as its deployed image lists them, and how many
/// CONNECTs each had refused since the daemon started.
#[derive(Default)]
pub struct EgressLists {
    lists: RwLock<HashMap<String, Arc<Vec<String>>>>,
    denials: std::sync::Mutex<HashMap<String, u64>>,
}

impl EgressLists {
    /// `agent`'s container starts on an image whose agent.json lists `egress`.
    pub fn set(&self, agent: &AgentName, egress: &[String]) {
        let list = egress.iter().map(|e| e.to_ascii_lowercase()).collect();
        self.lists
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(agent.to_string(), Arc::new(list));
    }

    /// CONNECTs of `agent` refused since the daemon started.
    pub fn denied(&self, agent: &AgentName) -> u64 {
        let denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        denials.get(agent.as_str()).copied().unwrap_or(0)
    }

    fn count_denial(&self, agent: &AgentName) {
        let mut denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        *denials.entry(agent.to_string()).or_default() += 1;
    }

    fn get(&self, agent: &AgentName) -> Arc<Vec<String>> {
        self.lists
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent.as_str())
            .cloned()
            .unwrap_or_default()
    }
}

/// What a CONNECT gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Connect to these addresses (in order).
    Connect(Vec<SocketAddr>),
    /// Refused (403), for this reason.
    Deny(String),
    /// Allowed, but the name does not resolve (502).
    Unresolved(String),
}

/// The decision for `target` (`host:port`, lowercase) against `list`.
pub async fn decide(list: &[String], target: &str) -> Decision {
    let Some((host, port)) = split_target(target) else {
        return Decision::Deny(format!(
            "{target} is not a host:port pair; CONNECT takes one of this agent's egress entries"
        ));
    };
    if !list.iter().any(|e| e == target) {
        let allowed = if list.is_empty() {
            "the list is empty".to_owned()
        } else {
            format!("allowed: {}", list.join(", "))
        };
        return Decision::Deny(format!(
            "{target} is not in this agent's hyperhive.egress ({allowed}); the manager adds it \
             to agent.nix and the operator approves"
        ));
    }
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        // Listed literally: the operator approved this very address.
        return Decision::Connect(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => return Decision::Unresolved(format!("{host} does not resolve: {e}")),
    };
    if addrs.is_empty() {
        return Decision::Unresolved(format!("{host} resolves to no address"));
    }
    if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Decision::Deny(format!(
            "{host} resolves to {}, a private, loopback or link-local address; only an address \
             listed literally in hyperhive.egress may be reached",
            bad.ip()
        ));
    }
    Decision::Connect(addrs)
}

/// `host` and `port` of `host:port` (`[v6]:port` for IPv6).
fn split_target(target: &str) -> Option<(&str, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) {
        return None;
    }
    Some((host, port))
}

/// Whether `ip` is an ordinary public address (not private, loopback, link-local, shared,
/// reserved, multicast or unspecified; IPv4-mapped IPv6 judged as its IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        || (ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0]))
}

/// Answers one CONNECT of `agent`: the tunnel (on `scope`, ended by `token`) or a refusal.
pub(crate) async fn connect(
    hive: &Arc<Hive>,
    agent: &AgentName,
    req: Request<Incoming>,
    token: &CancellationToken,
    scope: &Scope,
) -> Response<GatewayBody> {
    let target = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .unwrap_or_default();
    let list = hive.egress.get(agent);
    let addrs = match decide(&list, &target).await {
        Decision::Connect(addrs) => addrs,
        Decision::Deny(reason) => return deny(hive, agent, &target, &reason).await,
        Decision::Unresolved(reason) => return answer(StatusCode::BAD_GATEWAY, &reason),
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addrs[..])).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return answer(
                StatusCode::BAD_GATEWAY,
                &format!("cannot connect to {target}: {e}"),
            );
        }
        Err(_) => {
            return answer(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("connecting to {target} took longer than {CONNECT_TIMEOUT:?}"),
            );
        }
    };
    let _ = upstream.set_nodelay(true);
    let (token, agent_name) = (token.clone(), agent.clone());
    scope.spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::warn!(agent = %agent_name, error = %e, "egress tunnel not upgraded");
                return;
            }
        };
        let mut agent_side = TokioIo::new(upgraded);
        let mut upstream = upstream;
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut agent_side, &mut upstream) => {}
            _ = token.cancelled() => {}
        }
    });
    tracing::info!(%agent, target = shown(&target), "egress tunnel opened");
    Response::new(Either::Right(Full::new(Bytes::new())))
}

/// A refusal: one line in the agent's log, an `egress_denied` audit row, 403 with the reason.
async fn deny(
    hive: &Arc<Hive>,
    agent: &AgentName,
    target: &str,
    reason: &str,
) -> Response<GatewayBody> {
    let target = shown(target);
    let reason = shown(reason);
    hive.egress.count_denial(agent);
    tracing::warn!(%agent, target, reason, "egress denied");
    let (actor, detail) = (
        agent.to_string(),
        json!({"target": target, "reason": reason}),
    );
    if let Err(e) = hive
        .store
        .write(move |c| {
            crate::audit::append(c, &actor, "egress_denied", Some(&actor), detail)?;
            Ok(())
        })
        .await
    {
        tracing::warn!(%agent, error = %e, "cannot audit an egress denial");
    }
    let (paths, name, line) = (
        hive.paths.clone(),
        agent.clone(),
        format!("hive gateway: egress to {target} denied: {reason}\n"),
    );
    let logged = crate::lifecycle::off_runtime(move || {
        let log = crate::paths::checked_within(paths.root(), &paths.agent_log(&name))?;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&log)
            .map_err(|e| crate::Error::io(format!("cannot open {}", log.display()), e))?;
        file.write_all(line.as_bytes())
            .map_err(|e| crate::Error::io(format!("cannot write {}", log.display()), e))
    })
    .await;
    if let Err(e) = logged {
        tracing::warn!(%agent, error = %e, "cannot write an egress denial to the agent's log");
    }
    answer(StatusCode::FORBIDDEN, &format!("egress denied: {reason}"))
}

/// `text` cut to [`MAX_TARGET_SHOWN`] bytes (on a character boundary), control characters
/// escaped.
fn shown(text: &str) -> String {
    let mut out: String = text.chars().flat_map(char::escape_default).collect();
    if out.len() > MAX_TARGET_SHOWN {
        let mut end = MAX_TARGET_SHOWN;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

/// A plain-text answer a person (or curl's `-v`) can read.
fn answer(status: StatusCode, text: &str) -> Response<GatewayBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!("{text}\n")))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| e.to_string()).collect()
    }

    #[tokio::test]
    async fn only_listed_pairs_pass_and_names_must_resolve_to_public_addresses() {
        let l = list(&[
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:443",
            "169.254.169.254:80",
        ]);
        assert_eq!(
            decide(&l, "127.0.0.1:8080").await,
            Decision::Connect(vec!["127.0.0.1:8080".parse().unwrap()])
        );
        assert_eq!(
            decide(&l, "[::1]:443").await,
            Decision::Connect(vec!["[::1]:443".parse().unwrap()])
        );
        // Listed literally: even the metadata address.
        assert!(matches!(
            decide(&l, "169.254.169.254:80").await,
            Decision::Connect(_)
        ));
        for refused in [
            "127.0.0.1:8081",
            "169.254.169.254:443",
            "10.0.0.1:8080",
            "nohost",
            "a:b:1",
            ":80",
            "x:0",
        ] {
            assert!(
                matches!(decide(&l, refused).await, Decision::Deny(_)),
                "{refused}"
            );
        }
        // A name resolving to loopback is refused although it is listed.
        let Decision::Deny(why) = decide(&l, "localhost:8080").await else {
            panic!("localhost passed")
        };
        assert!(why.contains("listed literally"), "{why}");
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "140.82.112.3",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
