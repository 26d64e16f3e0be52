//! Re-adoption at startup: the jobs an earlier agent left running.
use std::{path::PathBuf, sync::Arc};

use serde::Serialize;

use super::{Job, JobError, JobRegistry, KILL_TIMEOUT};
use crate::{
    cgroup,
    metrics::JobEndLabel,
    record::{RecordEvent, Store, now_ms},
};

/// What re-adoption at startup found.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct AdoptReport {
    pub adopted: Vec<String>,
    /// Recorded as running, but their cgroup was gone.
    pub lost: Vec<String>,
    /// Cgroups with no record: killed and removed.
    pub unknown_removed: Vec<String>,
}

impl JobRegistry {
    /// At startup: adopt recorded jobs whose cgroups still exist, close the records of
    /// those whose cgroups are gone, and remove cgroups nobody recorded.
    pub fn adopt(&self, store: &Store) -> Result<AdoptReport, JobError> {
        let mut report = AdoptReport::default();
        let existing = self.tree.list_jobs()?;
        let records = store.open_jobs().unwrap_or_else(|error| {
            tracing::error!(%error, "reading open jobs from the recording store");
            Vec::new()
        });
        let mut adopted = Vec::new();
        for record in records {
            match existing.iter().find(|(id, _, _)| *id == record.id) {
                Some((_, path, cgroup_id)) => {
                    adopted.push(
                        Job {
                            id: record.id.clone(),
                            name: record.name,
                            labels: record.labels,
                            cgroup_id: *cgroup_id,
                            cgroup_path: path.clone(),
                            owner_pid: record.owner_pid,
                            owner_start: record.owner_start,
                            owner_uid: record.owner_uid,
                            started_at: record.started_at,
                            kind: record.kind,
                            identity: record.identity,
                            assurance: record.assurance,
                            origin_cgroup: record.origin_cgroup.map(PathBuf::from),
                            principal: Arc::default(),
                            revision: 0,
                        }
                        .finish(),
                    );
                    report.adopted.push(record.id);
                }
                None => {
                    self.recorder.record(RecordEvent::JobEnded {
                        id: record.id.clone(),
                        ended_at: now_ms(),
                        exit: None,
                        reason: JobEndLabel::Lost.as_str().to_owned(),
                    });
                    self.metrics.ended(JobEndLabel::Lost);
                    report.lost.push(record.id);
                }
            }
        }
        for (id, path, _) in &existing {
            if !report.adopted.contains(id) {
                tracing::warn!(job = %id, "job cgroup has no record; killing and removing it");
                cgroup::kill_and_remove(path, KILL_TIMEOUT)?;
                report.unknown_removed.push(id.clone());
            }
        }
        for job in &adopted {
            // Their processes' sockets from before the restart are taken as their own.
            self.brought.note_all(&job.cgroup_path);
        }
        self.update(|jobs| {
            for job in adopted {
                jobs.insert(job.cgroup_id, job);
            }
        });
        Ok(report)
    }
}
