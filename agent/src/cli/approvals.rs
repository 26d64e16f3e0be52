//! `tollgate approvals …`: list, show, approve, deny and revoke, over the control
//! socket (the agent checks that the caller is a reviewer).
use std::{path::Path, process::ExitCode};

use clap::Subcommand;

use super::{call, output::time as format_ms};
use crate::{
    approvals::{ApprovalRecord, ApprovalState, Grant, Verdict},
    control::{Request, Response},
};

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// Approval requests, newest first, and the grants in force.
    List {
        /// Only the requests waiting for a decision.
        #[arg(long)]
        pending: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
        /// Every host's requests, from the central store.
        #[command(flatten)]
        fleet: super::central::FleetArgs,
    },
    /// One request.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: super::central::FleetArgs,
    },
    /// Approve a pending request. One asked on another host is decided through the
    /// central store (this host's agent must ship to it), signed by this host.
    Approve {
        id: String,
        /// once (this request), job (the same statement shape for the rest of the job),
        /// or a duration such as 30m (the same shape and target for the repository and
        /// workflow).
        #[arg(long, default_value = "once")]
        scope: String,
        #[arg(long)]
        reason: Option<String>,
        /// Look the request up in this central store first (any host's).
        #[command(flatten)]
        fleet: super::central::FleetArgs,
    },
    /// Deny a pending request.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        fleet: super::central::FleetArgs,
    },
    /// End a grant.
    Revoke {
        #[arg(value_name = "GRANT_ID")]
        id: String,
    },
}

pub fn run(socket: &Path, command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApprovalsCommand::List {
            pending,
            limit,
            json,
            fleet,
        } if fleet.is_central() => {
            let requests = super::central::approvals(&fleet, pending, limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&requests)?);
            } else {
                for r in &requests {
                    println!("{:<20}  {}", r.host, line(&r.record));
                }
            }
        }
        ApprovalsCommand::Show { id, json, fleet } if fleet.is_central() => {
            let request = super::central::approval(&fleet, &id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&request)?);
            } else {
                println!("host {}", request.host);
                print(&request.record, false)?;
            }
        }
        ApprovalsCommand::List {
            pending,
            limit,
            json,
            ..
        } => {
            let request = Request::ListApprovals { pending, limit };
            let Response::Approvals { approvals, grants } = call(socket, &request)? else {
                anyhow::bail!("unexpected reply");
            };
            if json {
                let all = serde_json::json!({ "approvals": approvals, "grants": grants });
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for record in &approvals {
                    println!("{}", line(record));
                }
                for grant in &grants {
                    println!("{}", grant_line(grant));
                }
            }
        }
        ApprovalsCommand::Show { id, json, .. } => {
            let Response::Approval(record) = call(socket, &Request::ShowApproval { id })? else {
                anyhow::bail!("unexpected reply");
            };
            print(&record, json)?;
        }
        ApprovalsCommand::Approve {
            id,
            scope,
            reason,
            fleet,
        } => {
            let verdict = Verdict::Approve {
                scope: Some(scope),
                reason,
            };
            decide(socket, id, verdict, &fleet)?;
        }
        ApprovalsCommand::Deny { id, reason, fleet } => {
            decide(socket, id, Verdict::Deny { reason }, &fleet)?
        }
        ApprovalsCommand::Revoke { id } => {
            let Response::Grant(grant) = call(socket, &Request::RevokeGrant { id })? else {
                anyhow::bail!("unexpected reply");
            };
            println!("revoked {}", grant_line(&grant));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn decide(
    socket: &Path,
    id: String,
    verdict: Verdict,
    fleet: &super::central::FleetArgs,
) -> anyhow::Result<()> {
    if fleet.is_central() {
        // A clear error for a request the store does not hold, before the agent is asked.
        let request = super::central::approval(fleet, &id)?;
        if request
            .record
            .state
            .is_some_and(|s| s != ApprovalState::Pending)
        {
            anyhow::bail!(
                "request {id} (host {}) is {}, not pending",
                request.host,
                request.record.state.map_or("pending", |s| s.as_str())
            );
        }
    }
    let Response::Approval(record) = call(socket, &Request::DecideApproval { id, verdict })? else {
        anyhow::bail!("unexpected reply");
    };
    println!("{}", line(&record));
    Ok(())
}

fn print(record: &ApprovalRecord, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(record)?);
        return Ok(());
    }
    println!("{}", line(record));
    let field = |name: &str, value: Option<&str>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            println!("  {name:<12} {value}");
        }
    };
    field("job", record.job_id.as_deref());
    for (name, value) in &record.identity {
        field(name, Some(value));
    }
    let process = record
        .pid
        .map(|pid| format!("{pid} {}", record.comm.as_deref().unwrap_or("-")));
    field("process", process.as_deref());
    field("exe", record.exe.as_deref());
    field("target", record.target.as_deref());
    field("destination", record.destination.as_deref());
    field("kind", record.kind.as_deref());
    field("sql", record.sql.as_deref());
    field("tables", Some(&record.tables.join(", ")));
    field("policies", Some(&record.policy_ids.join(", ")));
    field("asked", Some(&format_ms(record.asked_at)));
    field("decided", record.decided_at.map(format_ms).as_deref());
    field("reviewers", Some(&record.reviewers.join(", ")));
    field("reason", record.reason.as_deref());
    field("scope", record.scope.as_deref());
    field("scope cap", record.scope_cap.as_deref());
    field("grant", record.grant_id.as_deref());
    Ok(())
}

fn line(record: &ApprovalRecord) -> String {
    let state = record.state.unwrap_or(ApprovalState::Pending);
    format!(
        "{}  {:<9}  {}  job {}  {}: {}",
        record.id,
        state.as_str(),
        format_ms(record.asked_at),
        record.job_id.as_deref().unwrap_or("-"),
        record.action,
        record
            .sql
            .as_deref()
            .or(record.destination.as_deref())
            .unwrap_or("-"),
    )
}

fn grant_line(grant: &Grant) -> String {
    format!(
        "grant {}  {}  by {}  ({})",
        grant.id,
        grant.scope,
        grant.approved_by.join(", "),
        grant.describe()
    )
}
