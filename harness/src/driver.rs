//! The model drivers behind the one type the turn loop drives (DESIGN §11): the claude CLI
//! (`claude.rs`: warm between turns, or one process per turn) or an OpenAI-compatible endpoint
//! (`openai.rs`). It only dispatches; what a turn does is each driver's.

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::claude::{Answered, Claude, Failure};
use crate::openai::OpenAi;

pub enum Driver {
    Claude(Box<Claude>),
    OpenAi(Box<OpenAi>),
}

impl Driver {
    /// Runs one turn with `prompt`, every event to `events`.
    pub async fn turn(
        &mut self,
        prompt: &str,
        events: &UnboundedSender<Value>,
    ) -> Result<Answered, Failure> {
        match self {
            Self::Claude(d) => d.turn(prompt, events).await,
            Self::OpenAi(d) => d.turn(prompt, events).await,
        }
    }

    /// A separate one-shot answer beside the conversation: no tools, nothing kept.
    pub async fn one_shot(
        &mut self,
        system: &str,
        prompt: &str,
        events: &UnboundedSender<Value>,
    ) -> Result<String, Failure> {
        match self {
            Self::Claude(d) => d.one_shot(system, prompt, events).await,
            Self::OpenAi(d) => d.one_shot(system, prompt, events).await,
        }
    }

    /// When an idle model process should be stopped (claude only).
    pub fn idle_deadline(&self) -> Option<Instant> {
        match self {
            Self::Claude(d) => d.idle_deadline(),
            Self::OpenAi(_) => None,
        }
    }

    /// Stops what runs for the model (it comes back at the next turn).
    pub async fn stop(&mut self) {
        match self {
            Self::Claude(d) => d.stop().await,
            Self::OpenAi(d) => d.stop().await,
        }
    }

    /// Forgets the conversation: the next turn starts a fresh one.
    pub async fn start_fresh(&mut self) {
        match self {
            Self::Claude(d) => d.start_fresh().await,
            Self::OpenAi(d) => d.start_fresh().await,
        }
    }

    /// Kills what runs at once (a cancelled turn); the conversation is kept.
    pub async fn kill(&mut self) {
        match self {
            Self::Claude(d) => d.kill().await,
            Self::OpenAi(d) => d.stop().await,
        }
    }

    /// The model asked for, `None` for the endpoint's or the CLI's default.
    pub fn model(&self) -> Option<&str> {
        match self {
            Self::Claude(d) => d.model(),
            Self::OpenAi(d) => d.model(),
        }
    }

    /// The agent config's model.
    pub fn configured_model(&self) -> Option<String> {
        match self {
            Self::Claude(d) => d.configured_model(),
            Self::OpenAi(d) => d.configured_model(),
        }
    }

    /// Sets the model for the next turn (the caller stops what runs).
    pub fn set_model(&mut self, model: Option<String>) {
        match self {
            Self::Claude(d) => d.set_model(model),
            Self::OpenAi(d) => d.set_model(model),
        }
    }
}
