use lookit_status::ServiceState;
use serde::Serialize;

/// Progress of the stack, as it happens, for the CLI and the UI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StackEvent {
    /// One provisioning or start-up step and how it went.
    Step {
        service: String,
        step: String,
        outcome: StepOutcome,
        detail: Option<String>,
    },
    /// Image pull progress: bytes per layer and the overall fraction (when sizes are known).
    Pull {
        service: String,
        image: String,
        layers: Vec<LayerProgress>,
        fraction: Option<f64>,
    },
    /// A service changed state.
    State {
        service: String,
        state: ServiceState,
        message: Option<String>,
    },
    /// The configured port was taken, so another one is used.
    PortChanged {
        service: String,
        purpose: String,
        wanted: u16,
        chosen: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// The step changed something.
    Done,
    /// Nothing to do: it was already so.
    Unchanged,
    /// Cannot be done on this backend (e.g. an external server we may not administer).
    Skipped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerProgress {
    pub id: String,
    pub status: String,
    pub current: u64,
    pub total: Option<u64>,
}

/// Where a service reports its events: the stack's broadcast channel, tagged with the service.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub service: &'static str,
    pub events: tokio::sync::broadcast::Sender<StackEvent>,
}

impl Reporter {
    pub fn step(&self, step: &str, outcome: StepOutcome, detail: impl Into<Option<String>>) {
        let detail = detail.into();
        match outcome {
            StepOutcome::Failed => {
                tracing::warn!(service = self.service, step, ?detail, "step failed")
            }
            _ => tracing::info!(service = self.service, step, ?outcome, ?detail, "step"),
        }
        self.send(StackEvent::Step {
            service: self.service.into(),
            step: step.into(),
            outcome,
            detail,
        });
    }

    /// Sends an event; having no subscriber is normal (e.g. a headless run that only logs).
    pub fn send(&self, event: StackEvent) {
        let _ = self.events.send(event);
    }
}
