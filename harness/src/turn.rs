//! The turn loop: lease the next message (`next_turn`, a long poll the hive's send wakes), wake the
//! model with it, stream every event to `turn_events`, and end the turn: `finish_turn` when the
//! model answered, `release_turn` (delivered again later, flagged) when it could not. It owns the
//! order of harness calls and the turn state the hive shows; it never reads the store or decides
//! who may write to whom (the hive does).

use std::time::Duration;

use anyhow::{Context, bail};
use proto::Usage;
use proto::tools::{LeasedTurn, MAX_EVENTS_PER_CALL, TurnState};
use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RoleClient};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::claude::Failure;
use crate::driver::Driver;
use crate::prompt;

/// How long one `next_turn` waits for a message before it is asked again.
pub const WAIT_SECONDS: u64 = 60;
/// How long the model is left alone after it said it needs a login before a message is tried
/// again.
const LOGIN_RETRY: Duration = Duration::from_secs(60);
/// The longest pause after the model died on consecutive turns.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Calls a harness tool; a tool error is an error naming the tool.
async fn call(peer: &Peer<RoleClient>, tool: &str, args: Value) -> anyhow::Result<String> {
    let params = CallToolRequestParams::new(tool.to_owned())
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let result = peer
        .call_tool(params)
        .await
        .with_context(|| format!("the hive did not answer {tool}"))?;
    let text: String = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    if result.is_error == Some(true) {
        bail!("{tool}: {text}");
    }
    Ok(text)
}

/// Tells the hive what the model is doing; a refusal is only logged (the turn goes on).
async fn report(peer: &Peer<RoleClient>, state: TurnState) {
    if let Err(e) = call(peer, "report_state", json!({"state": state})).await {
        eprintln!("hive-agent: cannot report state {}: {e:#}", state.as_str());
    }
}

/// Sends the events of `turn` as they come, at most [`MAX_EVENTS_PER_CALL`] a call.
async fn forward(peer: Peer<RoleClient>, turn: i64, mut events: mpsc::UnboundedReceiver<Value>) {
    let mut batch = Vec::with_capacity(MAX_EVENTS_PER_CALL);
    while events.recv_many(&mut batch, MAX_EVENTS_PER_CALL).await > 0 {
        let sent = std::mem::take(&mut batch);
        if let Err(e) = call(&peer, "turn_events", json!({"turn": turn, "events": sent})).await {
            eprintln!("hive-agent: events of turn {turn} lost: {e:#}");
        }
    }
}

/// Runs turns until the hive goes away (an error) — the caller races it against stop signals.
pub async fn run(peer: Peer<RoleClient>, mut model: Driver) -> anyhow::Result<()> {
    report(&peer, TurnState::Idle).await;
    let mut died_in_a_row = 0u32;
    loop {
        let next = call(&peer, "next_turn", json!({"wait_seconds": WAIT_SECONDS}));
        tokio::pin!(next);
        let text = loop {
            let idle = model.idle_deadline();
            tokio::select! {
                text = &mut next => break text?,
                _ = tokio::time::sleep_until(idle.unwrap_or_else(tokio::time::Instant::now)), if idle.is_some() => {
                    eprintln!("hive-agent: claude idle; stopping it until the next message");
                    model.stop().await;
                }
            }
        };
        let Some(turn) = serde_json::from_str::<Option<LeasedTurn>>(&text)
            .with_context(|| format!("next_turn answered something unexpected: {text}"))?
        else {
            continue;
        };
        report(&peer, TurnState::Thinking).await;
        let end = one_turn(&peer, &mut model, &turn).await?;
        match end {
            End::Finished => {
                died_in_a_row = 0;
                report(&peer, TurnState::Idle).await;
            }
            End::NeedsLogin => {
                report(&peer, TurnState::NeedsLogin).await;
                tokio::time::sleep(LOGIN_RETRY).await;
                report(&peer, TurnState::Idle).await;
            }
            End::Died => {
                report(&peer, TurnState::Idle).await;
                // The first restart is at once; a model that keeps dying is not restarted hot.
                if died_in_a_row > 0 {
                    let pause = Duration::from_secs(1 << died_in_a_row.min(6)).min(MAX_BACKOFF);
                    tokio::time::sleep(pause).await;
                }
                died_in_a_row += 1;
            }
        }
    }
}

enum End {
    Finished,
    NeedsLogin,
    Died,
}

async fn one_turn(
    peer: &Peer<RoleClient>,
    model: &mut Driver,
    turn: &LeasedTurn,
) -> anyhow::Result<End> {
    let (tx, rx) = mpsc::unbounded_channel();
    let forwarder = tokio::spawn(forward(peer.clone(), turn.turn, rx));
    let prompt = prompt::wake(turn);
    let mut attempt = model.turn(&prompt, &tx).await;
    if let Err(Failure::PromptTooLong(why)) = &attempt {
        let _ = tx.send(json!({"type": "harness", "subtype": "fresh_session", "message": format!("{why}; starting a fresh session and trying once more")}));
        model.start_fresh().await;
        attempt = model.turn(&prompt, &tx).await;
    }
    let end = match attempt {
        Ok(answered) => {
            if let Some(error) = &answered.error {
                let _ = tx.send(json!({"type": "harness", "subtype": "error", "message": error}));
            }
            Ok((if answered.ok { "ok" } else { "error" }, answered.usage))
        }
        Err(Failure::PromptTooLong(why)) => {
            let message =
                format!("the message does not fit the model even in a fresh session: {why}");
            let _ = tx.send(json!({"type": "harness", "subtype": "error", "message": message}));
            Ok(("error", Usage::default()))
        }
        Err(Failure::NeedsLogin(why)) => {
            let _ = tx.send(json!({"type": "harness", "subtype": "needs_login", "message": why}));
            Err(End::NeedsLogin)
        }
        Err(Failure::Died(why) | Failure::CannotResume(why)) => {
            let _ = tx.send(json!({"type": "harness", "subtype": "model_died", "message": why}));
            Err(End::Died)
        }
    };
    // Every event is stored before the turn ends (finish refuses events after it).
    drop(tx);
    let _ = forwarder.await;
    match end {
        Ok((outcome, usage)) => {
            call(
                peer,
                "finish_turn",
                json!({"turn": turn.turn, "outcome": outcome, "usage": usage}),
            )
            .await?;
            Ok(End::Finished)
        }
        Err(end) => {
            call(peer, "release_turn", json!({"turn": turn.turn})).await?;
            Ok(end)
        }
    }
}
