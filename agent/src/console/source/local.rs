//! This host's store, read-only: each question opens the database afresh on a blocking
//! thread (SQLite readers do not block the agent's writer, which uses WAL).
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use super::{Approvals, HostAudit, JOB_STATEMENTS, JobView, SourceError};
use crate::{
    approvals::ApprovalRecord,
    central::query::Hosted,
    record::{
        AuditRecord, ConnectionRecord, Store, checkpoint,
        search::{SessionQuery, SessionSummary},
        text_index,
        verify::Report,
    },
};

pub struct LocalSource {
    db: PathBuf,
    host: String,
    /// The host key, whose public half verifies the chain's checkpoints.
    key: PathBuf,
    /// The store's text index, which [`LocalSource::keep_text_index`] keeps.
    index: PathBuf,
}

/// How often the text index takes in new statements.
const INDEX_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl LocalSource {
    pub fn new(db: PathBuf, host: String, key: PathBuf) -> Self {
        let index = text_index::path_for(&db);
        Self {
            db,
            host,
            key,
            index,
        }
    }

    /// Keeps the store's text index up to date on a thread of its own, for as long as
    /// the console runs. Says once on stdout when it first is (scripts wait for it).
    /// Without it (a store directory the console may not write), text search scans.
    pub fn keep_text_index(&self) {
        let (db, index) = (self.db.clone(), self.index.clone());
        let spawned = std::thread::Builder::new()
            .name("tollgate-text-index".into())
            .spawn(move || {
                let (mut ready, mut failing) = (false, false);
                let mut indexer = None;
                loop {
                    let started = std::time::Instant::now();
                    let caught_up = match indexer.as_mut() {
                        Some(indexer) => Ok(indexer),
                        None => text_index::Indexer::open(&db, &index)
                            .map(|opened| indexer.insert(opened)),
                    }
                    .and_then(text_index::Indexer::catch_up);
                    if caught_up.is_err() {
                        // Opened afresh next time (the store may come later).
                        indexer = None;
                    }
                    match caught_up {
                        Ok(progress) => {
                            failing = false;
                            if progress.added > 0 || progress.dropped > 0 {
                                tracing::info!(
                                    added = progress.added,
                                    dropped = progress.dropped,
                                    upto = progress.upto,
                                    took_ms = started.elapsed().as_millis() as u64,
                                    "text index updated"
                                );
                            }
                            if !ready {
                                ready = true;
                                // A reader that went away is no failure of the index.
                                let _ = writeln!(
                                    std::io::stdout(),
                                    "console text index ready at statement {}",
                                    progress.upto
                                );
                            }
                        }
                        Err(error) if !failing => {
                            failing = true;
                            tracing::warn!(%error, index = %index.display(), "the text index cannot be kept: text search scans the store");
                        }
                        Err(_) => {}
                    }
                    std::thread::sleep(INDEX_EVERY);
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "no text index thread: text search scans the store");
        }
    }

    pub fn path(&self) -> &Path {
        &self.db
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn hosted<T>(&self, record: T) -> Hosted<T> {
        Hosted {
            host: self.host.clone(),
            record,
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, SourceError> + Send + 'static,
    ) -> Result<T, SourceError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let store = Store::open(&db)?;
            f(&store)
        })
        .await?
    }

    fn not_here(&self, host: &str) -> Result<(), SourceError> {
        if host == self.host {
            Ok(())
        } else {
            Err(SourceError::NotFound(format!(
                "this console reads the store of host `{}`, not `{host}`",
                self.host
            )))
        }
    }

    pub async fn sessions(
        &self,
        host: Option<&str>,
        query: SessionQuery,
    ) -> Result<Vec<Hosted<SessionSummary>>, SourceError> {
        if host.is_some_and(|h| h != self.host) {
            return Ok(Vec::new());
        }
        let index = self.index.clone();
        let rows = self
            .read(move |store| Ok(store.search_sessions(&query, Some(&index))?))
            .await?;
        Ok(rows.into_iter().map(|r| self.hosted(r)).collect())
    }

    pub async fn session(
        &self,
        host: &str,
        id: &str,
    ) -> Result<Hosted<ConnectionRecord>, SourceError> {
        self.not_here(host)?;
        let id = id.to_owned();
        let session = self
            .read(move |store| match store.connection_exact(&id)? {
                Some(mut session) => {
                    session.statements = store.statements(&session.id)?;
                    Ok(session)
                }
                None => Err(SourceError::NotFound(format!("no session {id}"))),
            })
            .await?;
        Ok(self.hosted(session))
    }

    pub async fn job(&self, host: &str, id: &str) -> Result<JobView, SourceError> {
        self.not_here(host)?;
        let id = id.to_owned();
        let host = self.host.clone();
        self.read(move |store| {
            let job = store
                .job(&id)?
                .ok_or_else(|| SourceError::NotFound(format!("no job {id}")))?;
            let sessions = store.search_sessions(
                &SessionQuery {
                    job_id: Some(id.clone()),
                    limit: 10_000,
                    ..SessionQuery::default()
                },
                None,
            )?;
            // Oldest session first, as the timeline reads.
            let mut statements = Vec::new();
            let mut statements_truncated = false;
            for session in sessions.iter().rev() {
                if statements.len() >= JOB_STATEMENTS as usize {
                    statements_truncated = true;
                    break;
                }
                statements.extend(store.statements(&session.session.id)?);
            }
            if statements.len() > JOB_STATEMENTS as usize {
                statements.truncate(JOB_STATEMENTS as usize);
                statements_truncated = true;
            }
            Ok(JobView {
                host,
                sessions,
                statements,
                statements_truncated,
                dns: store.dns(Some(&id), 10_000)?,
                udp_flows: store.udp_flows(Some(&id), 10_000)?,
                unix: store.unix_connects(Some(&id), 10_000)?,
                events: store.events(Some(&id), 10_000)?,
                approvals: store.approvals_of_job(&id)?,
                job,
            })
        })
        .await
    }

    pub async fn approvals(&self, pending: bool, limit: u32) -> Result<Approvals, SourceError> {
        let rows = self
            .read(move |store| Ok(store.approvals(pending, limit)?))
            .await?;
        Ok(rows.into_iter().map(|r| self.hosted(r)).collect())
    }

    pub async fn approval(&self, id: &str) -> Result<Hosted<ApprovalRecord>, SourceError> {
        let id = id.to_owned();
        let record = self
            .read(move |store| {
                store
                    .approval(&id)?
                    .ok_or_else(|| SourceError::NotFound(format!("no approval request {id}")))
            })
            .await?;
        Ok(self.hosted(record))
    }

    pub async fn approvals_version(&self) -> Result<String, SourceError> {
        self.read(|store| Ok(store.approvals_version()?)).await
    }

    pub async fn audit(&self, limit: u32) -> Result<Vec<Hosted<AuditRecord>>, SourceError> {
        let rows = self.read(move |store| Ok(store.audit(limit)?)).await?;
        Ok(rows.into_iter().map(|r| self.hosted(r)).collect())
    }

    pub async fn verify(&self) -> Result<Vec<HostAudit>, SourceError> {
        let (db, key, host) = (self.db.clone(), self.key.clone(), self.host.clone());
        let audit = tokio::task::spawn_blocking(move || {
            let public = match checkpoint::HostKey::load(&key) {
                Ok(key) => key.public().to_vec(),
                Err(error) => {
                    return Ok(HostAudit {
                        report: Report::unchecked(&host),
                        checkpoint_at: None,
                        error: Some(format!("cannot verify without the host key: {error}")),
                    });
                }
            };
            let report = crate::record::verify::local::verify(&db, &host, &public, None)?;
            let checkpoint_at = Store::open(&db)?.latest_checkpoint()?.map(|c| c.at);
            Ok::<_, SourceError>(HostAudit {
                report,
                checkpoint_at,
                error: None,
            })
        })
        .await??;
        Ok(vec![audit])
    }
}
