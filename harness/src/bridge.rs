//! `hive-agent mcp`: a byte bridge between standard input/output and a unix socket. It knows
//! nothing of MCP: bytes from stdin go to the socket, bytes from the socket go to stdout. When
//! stdin ends, the socket's write side is shut so the hive finishes what is in flight; when the
//! socket ends, the bridge exits.

use std::path::Path;

use anyhow::Context;
use tokio::io::{AsyncWriteExt, copy};
use tokio::net::UnixStream;

pub async fn run(socket: &Path) -> anyhow::Result<()> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot connect to the hive at {}", socket.display()))?;
    let (mut from_hive, mut to_hive) = stream.into_split();
    let upstream = async move {
        let mut stdin = tokio::io::stdin();
        let copied = copy(&mut stdin, &mut to_hive).await;
        let _ = to_hive.shutdown().await;
        copied
    };
    let downstream = async move {
        let mut stdout = tokio::io::stdout();
        let copied = copy(&mut from_hive, &mut stdout).await;
        let _ = stdout.flush().await;
        copied
    };
    tokio::pin!(downstream);
    tokio::select! {
        // The hive hung up: nothing more can be answered.
        done = &mut downstream => { done.context("reading from the hive")?; }
        // Our client hung up: let the hive answer what it has, then go.
        sent = upstream => {
            sent.context("writing to the hive")?;
            downstream.await.context("reading from the hive")?;
        }
    }
    Ok(())
}
