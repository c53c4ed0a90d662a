//! The egress relay (DESIGN §16): a TCP listener on `127.0.0.1` inside the container that
//! passes each connection through unchanged to the agent's `gateway.sock`, so tools that know
//! only a TCP proxy (`HTTPS_PROXY`/`HTTP_PROXY`, set for claude and its commands) reach the
//! gateway's CONNECT. It decides nothing (the broker checks every target); it never listens on
//! anything but loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use tokio::net::{TcpListener, UnixStream};

static ADDRESS: OnceLock<SocketAddr> = OnceLock::new();

/// The proxy URL for the model's tools, once the relay listens.
pub fn proxy_url() -> Option<String> {
    ADDRESS.get().map(|a| format!("http://{a}"))
}

/// Listens on an ephemeral loopback port (free in a private network namespace and on a shared
/// host alike) and relays to `gateway` until the process ends.
pub async fn start(gateway: PathBuf) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let _ = ADDRESS.set(address);
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match UnixStream::connect(&gateway).await {
                    Ok(mut unix) => {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                    Err(e) => eprintln!(
                        "hive-agent: egress relay cannot reach {}: {e}",
                        gateway.display()
                    ),
                }
            });
        }
    });
    Ok(address)
}
