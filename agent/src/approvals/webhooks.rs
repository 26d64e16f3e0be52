//! `[[approvals.webhooks]]`: every request and decision is POSTed to each, from a thread
//! of its own, with bounded retries and backoff. A failing webhook is logged and counted;
//! it never blocks or decides a request.
use std::{
    sync::{
        Arc,
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::Duration,
};

use serde::Serialize;

use super::{ApprovalRecord, ApprovalState, metrics::ApprovalMetrics};
use crate::config::{WebhookConfig, WebhookFormat};

/// Notices waiting for the sender thread; more are dropped (and counted).
const QUEUE: usize = 1024;
/// Waits before the second, third and fourth attempt.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(4),
];
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a JSON webhook gets (docs/approvals.md).
#[derive(Serialize)]
struct Payload<'a> {
    /// `requested` or `decided`.
    event: &'a str,
    request: &'a ApprovalRecord,
}

pub(super) struct Webhooks {
    queue: Option<SyncSender<(&'static str, ApprovalRecord)>>,
    metrics: Arc<ApprovalMetrics>,
}

impl Webhooks {
    pub(super) fn start(hooks: &[WebhookConfig], metrics: Arc<ApprovalMetrics>) -> Self {
        if hooks.is_empty() {
            return Self {
                queue: None,
                metrics,
            };
        }
        let (queue, notices) = sync_channel(QUEUE);
        let (hooks, thread_metrics) = (hooks.to_vec(), metrics.clone());
        let spawned = std::thread::Builder::new()
            .name("tollgate-webhook".to_owned())
            .spawn(move || run(&hooks, &notices, &thread_metrics));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the approvals webhook thread");
            return Self {
                queue: None,
                metrics,
            };
        }
        Self {
            queue: Some(queue),
            metrics,
        }
    }

    /// Queues `record` for every webhook; never blocks.
    pub(super) fn notify(&self, event: &'static str, record: &ApprovalRecord) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.try_send((event, record.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.webhook("dropped");
                tracing::warn!(request = %record.id, "approvals webhook queue full: notice dropped");
            }
        }
    }
}

fn run(
    hooks: &[WebhookConfig],
    notices: &Receiver<(&'static str, ApprovalRecord)>,
    metrics: &ApprovalMetrics,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(true)
        .build()
        .into();
    while let Ok((event, record)) = notices.recv() {
        for hook in hooks {
            let body = body(hook.format, event, &record);
            match deliver(&agent, hook, &body) {
                Ok(()) => metrics.webhook("sent"),
                Err(error) => {
                    metrics.webhook("failed");
                    tracing::warn!(url = %hook.url, request = %record.id, %error, "approvals webhook failed");
                }
            }
        }
    }
}

fn body(format: WebhookFormat, event: &str, record: &ApprovalRecord) -> String {
    match format {
        WebhookFormat::Json => serde_json::to_string(&Payload {
            event,
            request: record,
        })
        .unwrap_or_default(),
        WebhookFormat::Slack => {
            serde_json::json!({ "text": slack_text(event, record) }).to_string()
        }
    }
}

fn slack_text(event: &str, record: &ApprovalRecord) -> String {
    let what = record
        .sql
        .as_deref()
        .or(record.destination.as_deref())
        .unwrap_or("-");
    let who = |name: &str| record.identity.get(name).map_or("-", String::as_str);
    let head = format!(
        "tollgate: {} `{what}` from {} {} (job {})",
        record.action,
        who("repository"),
        who("workflow"),
        record.job_id.as_deref().unwrap_or("-"),
    );
    match (event, record.state) {
        ("requested", _) | (_, None | Some(ApprovalState::Pending)) => format!(
            "{head} waits for approval: `tollgate approvals approve {}`",
            record.id
        ),
        (_, Some(state)) => format!(
            "{head}: {} {}{}",
            state.as_str(),
            record.reviewers.join(", "),
            record
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
    }
}

fn deliver(agent: &ureq::Agent, hook: &WebhookConfig, body: &str) -> Result<(), String> {
    let token = match &hook.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| format!("token_file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut last = String::new();
    for attempt in 0..=BACKOFF.len() {
        if attempt > 0 {
            std::thread::sleep(BACKOFF[attempt - 1]);
        }
        let mut request = agent
            .post(&hook.url)
            .header("Content-Type", "application/json");
        if let Some(token) = &token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        match request.send(body) {
            Ok(_) => return Ok(()),
            Err(error) => last = error.to_string(),
        }
    }
    Err(format!("after {} attempts: {last}", BACKOFF.len() + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_the_event_and_the_request() {
        let record = ApprovalRecord {
            id: "r1".to_owned(),
            action: "sql:ddl".to_owned(),
            sql: Some("ALTER TABLE t ADD c int".to_owned()),
            state: Some(ApprovalState::Denied),
            reviewers: vec!["ann".to_owned()],
            reason: Some("not today".to_owned()),
            ..ApprovalRecord::default()
        };
        let json: serde_json::Value =
            serde_json::from_str(&body(WebhookFormat::Json, "decided", &record)).unwrap();
        assert_eq!(json["event"], "decided");
        assert_eq!(json["request"]["id"], "r1");
        assert_eq!(json["request"]["state"], "denied");
        let slack: serde_json::Value =
            serde_json::from_str(&body(WebhookFormat::Slack, "decided", &record)).unwrap();
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("denied ann: not today"), "{text}");
    }
}
