//! Fleet-wide approvals through the central store. Every request asked on this host is
//! written there, and kept up to date as it is settled. A reviewer on any host decides
//! through that host's agent, which authorizes them (its `[approvals] reviewers`), signs
//! the decision with its enrolled key and writes it with a `NOTIFY`. The asking host
//! hears it (or finds it on its next poll, every second), checks the signature against
//! the deciding host's enrolled key, applies it as its own reviewers' decisions are
//! applied (self-approval, the number of approvals, scope caps), and writes the outcome
//! back for the deciding host to report.
use std::{
    collections::VecDeque,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ring::signature::{self, UnparsedPublicKey};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Notification};

use super::{CentralError, Target, schema};
use crate::{
    approvals::{ApprovalError, ApprovalRecord, Approvals, Decider, FleetEvent, Verdict},
    record::{checkpoint::HostKey, now_ms},
};

/// The channel deciding hosts notify on (the payload is the asking host).
const CHANNEL: &str = "tollgate_approvals";
/// How often pending decisions are looked for without a notification.
const POLL: Duration = Duration::from_secs(1);
/// How long a deciding host waits for the asking host's outcome.
const OUTCOME_WAIT: Duration = Duration::from_secs(5);
/// Requests kept in memory while the store is unreachable.
const BACKLOG: usize = 10_000;

enum Command {
    Decide {
        decider: Decider,
        id: String,
        verdict: Verdict,
        reply: std::sync::mpsc::Sender<Result<ApprovalRecord, String>>,
    },
}

/// The running fleet link; dropping it writes what is left (for at most a few seconds)
/// and stops it.
pub struct FleetHandle {
    commands: Option<mpsc::UnboundedSender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl FleetHandle {
    /// Decides a request asked on another host (blocking: call off the runtime).
    pub fn decide(
        &self,
        decider: Decider,
        id: &str,
        verdict: Verdict,
    ) -> Result<ApprovalRecord, String> {
        let (reply, answer) = std::sync::mpsc::channel();
        let command = Command::Decide {
            decider,
            id: id.to_owned(),
            verdict,
            reply,
        };
        self.commands
            .as_ref()
            .ok_or("the fleet link is stopping")?
            .send(command)
            .map_err(|_| "the fleet link is not running".to_owned())?;
        answer
            .recv_timeout(OUTCOME_WAIT + Duration::from_secs(10))
            .map_err(|_| "no answer from the fleet link".to_owned())?
    }
}

impl Drop for FleetHandle {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the fleet approvals thread panicked");
        }
    }
}

pub fn spawn(
    target: Target,
    host: String,
    key: Arc<HostKey>,
    approvals: Arc<Approvals>,
) -> std::io::Result<FleetHandle> {
    let (events_tx, events) = mpsc::unbounded_channel();
    approvals.attach_fleet(events_tx);
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let fleet = Fleet {
        events,
        target,
        host,
        key,
        approvals,
        client: None,
        notices: None,
        backlog: VecDeque::new(),
        reconciled: false,
        last_error: None,
        refused_grants: Default::default(),
    };
    let thread =
        crate::runtime_thread::spawn("tollgate-fleet".into(), move || fleet.run(commands))?;
    Ok(FleetHandle {
        commands: Some(commands_tx),
        thread: Some(thread),
    })
}

struct Fleet {
    /// Requests asked and settled here, from the approvals registry.
    events: mpsc::UnboundedReceiver<FleetEvent>,
    target: Target,
    host: String,
    key: Arc<HostKey>,
    approvals: Arc<Approvals>,
    client: Option<Client>,
    notices: Option<mpsc::UnboundedReceiver<Notification>>,
    /// Requests to write, oldest first (kept while the store is down).
    backlog: VecDeque<FleetEvent>,
    /// This host's requests left pending by an earlier agent are marked abandoned once.
    reconciled: bool,
    last_error: Option<String>,
    /// Grants refused for their signature (logged once each).
    refused_grants: std::collections::HashSet<String>,
}

/// The bytes a deciding host signs.
fn message(request: &str, by_host: &str, decider: &str, verdict: &str, at: i64) -> Vec<u8> {
    format!(
        "tollgate-approval-decision-v1\nrequest {request}\nhost {by_host}\ndecider {decider}\n\
         verdict {verdict}\nat {at}\n"
    )
    .into_bytes()
}

/// The bytes a granting host signs.
fn grant_message(host: &str, grant: &str) -> Vec<u8> {
    format!("tollgate-approval-grant-v1\nhost {host}\ngrant {grant}\n").into_bytes()
}

impl Fleet {
    fn client(&self) -> Result<&Client, CentralError> {
        self.client
            .as_ref()
            .ok_or_else(|| CentralError::Url("not connected to the central store".into()))
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => self.work().await,
                event = self.events.recv() => {
                    if let Some(event) = event {
                        self.queue(event);
                        self.work().await;
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Decide { decider, id, verdict, reply }) => {
                        let result = self.decide(decider, &id, verdict).await;
                        let _ = reply.send(result);
                    }
                    None => break,
                },
                notice = next(&mut self.notices) => {
                    if notice.is_none() {
                        self.client = None;
                        self.notices = None;
                    }
                    self.work().await;
                }
            }
        }
        // The last updates, if the store takes them now.
        let _ = tokio::time::timeout(Duration::from_secs(3), self.work()).await;
    }

    /// Connects if needed, writes what is waiting and applies decisions made elsewhere.
    async fn work(&mut self) {
        let result = async {
            self.connect().await?;
            self.flush().await?;
            self.apply().await?;
            self.grants().await
        }
        .await;
        match result {
            Ok(()) => {
                if self.last_error.take().is_some() {
                    tracing::info!("fleet approvals: central store reachable again");
                }
            }
            Err(error) => {
                let text = error.to_string();
                if self.last_error.as_deref() != Some(&text) {
                    tracing::error!(error = %text, "fleet approvals: the central store failed; retrying");
                    self.last_error = Some(text);
                }
                self.client = None;
                self.notices = None;
            }
        }
    }

    async fn connect(&mut self) -> Result<(), CentralError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let (client, notices) = self.target.connect_listening().await?;
            schema::check(&client).await?;
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            if !self.reconciled {
                let live: Vec<String> =
                    self.approvals.pending().into_iter().map(|r| r.id).collect();
                let abandoned = client
                    .execute(
                        "UPDATE tollgate.approval_requests SET state = 'abandoned', \
                         updated_at = now() WHERE host = $1 AND state = 'pending' \
                         AND NOT (id = ANY($2))",
                        &[&self.host, &live],
                    )
                    .await?;
                if abandoned > 0 {
                    tracing::warn!(
                        abandoned,
                        "fleet approvals: requests left pending by an earlier agent are abandoned"
                    );
                }
                self.reconciled = true;
            }
            self.client = Some(client);
            self.notices = Some(notices);
        }
        Ok(())
    }

    fn queue(&mut self, event: FleetEvent) {
        if self.backlog.len() >= BACKLOG {
            self.backlog.pop_front();
            tracing::error!("fleet approvals: backlog full; the oldest request update is dropped");
        }
        self.backlog.push_back(event);
    }

    /// Writes the requests asked and settled here.
    async fn flush(&mut self) -> Result<(), CentralError> {
        while let Ok(event) = self.events.try_recv() {
            self.queue(event);
        }
        while let Some(event) = self.backlog.front() {
            let client = self.client()?;
            match event {
                FleetEvent::Asked(record) | FleetEvent::Settled(record) => {
                    let state = record.state.map_or("pending", |s| s.as_str());
                    let body = serde_json::to_string(record).unwrap_or_default();
                    client
                        .execute(
                            "INSERT INTO tollgate.approval_requests (id, host, state, asked_at, \
                             record) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
                             state = EXCLUDED.state, record = EXCLUDED.record, updated_at = now()",
                            &[&record.id, &self.host, &state, &record.asked_at, &body],
                        )
                        .await?;
                }
                FleetEvent::Granted(grant) => {
                    let body = serde_json::to_string(grant).unwrap_or_default();
                    let signature = self.key.sign(&grant_message(&self.host, &body));
                    client
                        .execute(
                            "INSERT INTO tollgate.approval_grants (id, host, record, expires_at, \
                             signature) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                            &[
                                &grant.id,
                                &self.host,
                                &body,
                                &grant.expires_at.unwrap_or_default(),
                                &signature,
                            ],
                        )
                        .await?;
                }
                FleetEvent::Revoked(id) => {
                    client
                        .execute(
                            "UPDATE tollgate.approval_grants SET revoked = true WHERE id = $1",
                            &[id],
                        )
                        .await?;
                }
            }
            self.backlog.pop_front();
        }
        Ok(())
    }

    /// Takes in the grants other hosts made (signed by their enrolled keys), and drops
    /// those revoked.
    async fn grants(&mut self) -> Result<(), CentralError> {
        let client = self.client()?;
        let rows = client
            .query(
                "SELECT g.id, g.host, g.record, g.signature, g.revoked, h.public_key \
                 FROM tollgate.approval_grants g LEFT JOIN tollgate.hosts h ON h.host = g.host \
                 WHERE g.host <> $1 AND g.expires_at > $2",
                &[&self.host, &now_ms()],
            )
            .await?;
        for row in rows {
            let (id, host, body): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let (signature, revoked): (Vec<u8>, bool) = (row.get(3), row.get(4));
            let key: Option<Vec<u8>> = row.get(5);
            if revoked {
                self.approvals.drop_grant(&id);
                continue;
            }
            let signed = key.is_some_and(|key| {
                UnparsedPublicKey::new(&signature::ED25519, key)
                    .verify(&grant_message(&host, &body), &signature)
                    .is_ok()
            });
            match serde_json::from_str(&body) {
                Ok(grant) if signed => self.approvals.adopt_grant(grant),
                _ => {
                    if self.refused_grants.insert(id.clone()) {
                        tracing::error!(grant = %id, host, "fleet approvals: a grant not signed by its host's enrolled key is ignored");
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies the decisions other hosts made on this host's requests.
    async fn apply(&mut self) -> Result<(), CentralError> {
        let client = self.client()?;
        let rows = client
            .query(
                "SELECT d.id, d.request_id, d.by_host, d.decider, d.verdict, d.at, d.signature, \
                 h.public_key FROM tollgate.approval_decisions d \
                 JOIN tollgate.approval_requests r ON r.id = d.request_id \
                 LEFT JOIN tollgate.hosts h ON h.host = d.by_host \
                 WHERE r.host = $1 AND d.outcome IS NULL ORDER BY d.id",
                &[&self.host],
            )
            .await?;
        for row in rows {
            let id: i64 = row.get(0);
            let request: String = row.get(1);
            let by_host: String = row.get(2);
            let decider_text: String = row.get(3);
            let verdict_text: String = row.get(4);
            let at: i64 = row.get(5);
            let signature: Vec<u8> = row.get(6);
            let key: Option<Vec<u8>> = row.get(7);
            let outcome = self.apply_one(
                &request,
                &by_host,
                &decider_text,
                &verdict_text,
                at,
                &signature,
                key.as_deref(),
            );
            // The request's settled record goes first: the deciding host reads it with
            // the outcome.
            self.flush().await?;
            let client = self.client()?;
            client
                .execute(
                    "UPDATE tollgate.approval_decisions SET outcome = $2, outcome_at = now() \
                     WHERE id = $1",
                    &[&id, &outcome],
                )
                .await?;
        }
        Ok(())
    }

    #[expect(clippy::too_many_arguments, reason = "one decision row's columns")]
    fn apply_one(
        &self,
        request: &str,
        by_host: &str,
        decider: &str,
        verdict: &str,
        at: i64,
        signature: &[u8],
        key: Option<&[u8]>,
    ) -> String {
        let Some(key) = key else {
            return format!("refused: host {by_host:?} is not enrolled");
        };
        let signed = message(request, by_host, decider, verdict, at);
        if UnparsedPublicKey::new(&signature::ED25519, key)
            .verify(&signed, signature)
            .is_err()
        {
            tracing::error!(
                request,
                by_host,
                "fleet approvals: a decision's signature does not verify; refused"
            );
            return format!("refused: the decision is not signed by {by_host}'s enrolled key");
        }
        let (Ok(decider), Ok(verdict)) = (
            serde_json::from_str::<Decider>(decider),
            serde_json::from_str::<Verdict>(verdict),
        ) else {
            return "refused: the decision does not parse".to_owned();
        };
        if !decider.key.ends_with(&format!("@{by_host}")) {
            return format!("refused: {by_host} may only sign its own reviewers' decisions");
        }
        match self.approvals.decide_from_fleet(&decider, request, verdict) {
            Ok(record) => format!("ok: {}", record.state.map_or("pending", |s| s.as_str())),
            Err(error) => format!("refused: {error}"),
        }
    }

    /// A decision on another host's request: signed, written, announced, and reported
    /// once that host applied it.
    async fn decide(
        &mut self,
        decider: Decider,
        id: &str,
        verdict: Verdict,
    ) -> Result<ApprovalRecord, String> {
        self.connect().await.map_err(|e| e.to_string())?;
        let client = self.client.as_ref().ok_or("not connected")?;
        let row = client
            .query_opt(
                "SELECT host, state FROM tollgate.approval_requests WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(|e| CentralError::from(e).to_string())?;
        let Some(row) = row else {
            return Err(ApprovalError::NotPending(id.to_owned()).to_string());
        };
        let (host, state): (String, String) = (row.get(0), row.get(1));
        if state != "pending" || host == self.host {
            return Err(format!(
                "request {id} (host {host}) is {state}, not pending"
            ));
        }
        let decider = decider.on_host(&self.host);
        let decider_text = serde_json::to_string(&decider).map_err(|e| e.to_string())?;
        let verdict_text = serde_json::to_string(&verdict).map_err(|e| e.to_string())?;
        let at = now_ms();
        let signature = self
            .key
            .sign(&message(id, &self.host, &decider_text, &verdict_text, at));
        let decision: i64 = client
            .query_one(
                "INSERT INTO tollgate.approval_decisions (request_id, by_host, decider, verdict, \
                 at, signature) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &id,
                    &self.host,
                    &decider_text,
                    &verdict_text,
                    &at,
                    &signature,
                ],
            )
            .await
            .map_err(|e| CentralError::from(e).to_string())?
            .get(0);
        client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &host])
            .await
            .map_err(|e| CentralError::from(e).to_string())?;
        let until = Instant::now() + OUTCOME_WAIT;
        loop {
            let row = client
                .query_one(
                    "SELECT d.outcome, r.record FROM tollgate.approval_decisions d \
                     JOIN tollgate.approval_requests r ON r.id = d.request_id WHERE d.id = $1",
                    &[&decision],
                )
                .await
                .map_err(|e| CentralError::from(e).to_string())?;
            let outcome: Option<String> = row.get(0);
            match outcome {
                Some(outcome) => {
                    if let Some(why) = outcome.strip_prefix("refused: ") {
                        return Err(format!("host {host}: {why}"));
                    }
                    let record: String = row.get(1);
                    let mut record: ApprovalRecord =
                        serde_json::from_str(&record).map_err(|e| e.to_string())?;
                    if record.reviewers.is_empty() {
                        record.reviewers = vec![decider.shown.clone()];
                    }
                    return Ok(record);
                }
                None if Instant::now() >= until => {
                    return Err(format!(
                        "host {host} has not applied the decision within {} s; it stays in the \
                         central store and is applied when that host is back",
                        OUTCOME_WAIT.as_secs()
                    ));
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// The next notification, or never when there is no connection.
async fn next(notices: &mut Option<mpsc::UnboundedReceiver<Notification>>) -> Option<Notification> {
    match notices {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
