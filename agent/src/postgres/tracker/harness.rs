//! One tracker with everything it needs around it (an enforcer over a policy file, a
//! recorder, masking of `ssn` columns), fed whole messages from either side: the unit
//! tests' session and the `tracker` fuzz target's.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tollgate_pgwire::{WireError, backend, frontend};
use tollgate_policy::{Mode, Principal, Process, SqlContext};

use super::Tracker;
use crate::{
    enforce::{Enforcer, Settings},
    metrics::Metrics,
    postgres::{
        encoding::ClientEncoding,
        mask::{ColumnRule, MaskingConfig, ResultsMasking},
        session::Context,
        tls::Tls,
    },
    record::{StatementRecord, writer::WriterHandle},
};

/// A tracker in a session of job `job` to `127.0.0.1:5432`, database `app`, user `ci`.
pub struct Harness {
    pub(super) ctx: Context,
    sql: SqlContext,
    pub(super) tracker: Tracker,
    finished: Vec<StatementRecord>,
    policy: PathBuf,
    /// The policy text in force.
    in_force: String,
    _writer: WriterHandle,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A session under the Cedar `policy`; `ssn` columns are masked, and results by
    /// detection too when `detect`.
    pub fn new(policy: &str, detect: bool) -> anyhow::Result<Self> {
        let results = if detect {
            ResultsMasking::Detect
        } else {
            ResultsMasking::Rules
        };
        let dir = tempfile::tempdir().context("a scratch directory")?;
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies)?;
        let policy_file = policies.join("policy.cedar");
        std::fs::write(&policy_file, policy)?;
        let masking = MaskingConfig {
            results,
            rules: vec![ColumnRule {
                columns: vec!["ssn".to_owned()],
                targets: Vec::new(),
                databases: Vec::new(),
                tables: Vec::new(),
            }],
            ..MaskingConfig::default()
        };
        let metrics = Metrics::new();
        let settings = Settings {
            mode: Mode::Enforce,
            targets: Vec::new(),
            masking: Arc::new(masking),
            http_headers: Vec::new(),
        };
        let enforcer = Enforcer::load(&policies, None, settings, metrics.policy.clone())?;
        let (recorder, writer) = crate::record::writer::spawn(
            &dir.path().join("records.db"),
            crate::record::writer::WriterOptions {
                capacity: 1024,
                batch_size: 64,
                flush_interval: Duration::from_millis(50),
                ..Default::default()
            },
            metrics.record.clone(),
        )?;
        let approvals = Arc::new(crate::approvals::Approvals::new(
            &crate::config::ApprovalsConfig::default(),
            recorder.clone(),
            metrics.approvals.clone(),
        ));
        let ctx = Context {
            approvals,
            enforcer: Arc::new(enforcer),
            recorder,
            principal: Arc::new(Principal {
                job_id: "job".to_owned(),
                ..Principal::default()
            }),
            process: Process::default(),
            destination: std::net::SocketAddr::from(([127, 0, 0, 1], 5432)),
            connection_id: "connection".into(),
            job_id: Some("job".into()),
            max_message: 1 << 20,
            tls: Arc::new(Tls::load(dir.path(), Default::default())?),
            metrics: metrics.postgres.clone(),
            target: "db".to_owned(),
            direct_tls: false,
            hostname: None,
        };
        let sql = SqlContext {
            database: "app".to_owned(),
            user: "ci".to_owned(),
            tables: Vec::new(),
        };
        let tracker = Tracker::new(&ctx, &sql, ClientEncoding::default(), false);
        Ok(Self {
            ctx,
            sql,
            tracker,
            finished: Vec::new(),
            policy: policy_file,
            in_force: policy.to_owned(),
            _writer: writer,
            _dir: dir,
        })
    }

    /// The client sends one whole message `raw`; what goes on to the server is appended
    /// to `out`. Bytes that are no frontend message are refused, as the relay refuses
    /// them.
    pub fn client(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let message = frontend::parse(raw)?;
        self.tracker
            .frontend(&self.ctx, &self.sql, message, raw, out);
        Ok(())
    }

    /// The server sends one whole message `raw`; what goes on to the client is appended
    /// to `out`.
    pub fn server(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let message = backend::parse(raw)?;
        self.tracker
            .backend(&self.ctx, &self.sql, message, raw, out, &mut self.finished);
        Ok(())
    }

    /// A new policy, taken up as the relay does between two messages.
    pub fn reload(&mut self, policy: &str) -> anyhow::Result<()> {
        std::fs::write(&self.policy, policy)?;
        self.ctx.enforcer.reload()?;
        policy.clone_into(&mut self.in_force);
        self.tracker.refresh(&self.ctx, &self.sql);
        Ok(())
    }

    /// A new session under `policy`, on the same enforcer and recorder (what a fuzz
    /// target does between two inputs instead of building everything again).
    /// The policy is loaded again only when another is in force: parsing and validating
    /// it is most of what an input would cost.
    pub fn restart(&mut self, policy: &str) -> anyhow::Result<()> {
        if self.in_force != policy {
            self.reload(policy)?;
        }
        self.tracker = Tracker::new(&self.ctx, &self.sql, ClientEncoding::default(), false);
        self.finished.clear();
        Ok(())
    }

    /// The statements that completed since the last call.
    pub fn finished(&mut self) -> Vec<StatementRecord> {
        std::mem::take(&mut self.finished)
    }

    /// The statements still waiting for the server (what the session flushes when it
    /// ends).
    pub fn unanswered(&mut self) -> Vec<StatementRecord> {
        self.tracker.take_unanswered()
    }
}
