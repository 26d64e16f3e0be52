//! Human and JSON output of the CLI.
use std::time::{Duration, UNIX_EPOCH};

use crate::{
    central::query::Hosted,
    jobs::Job,
    record::DecisionLabel,
    record::{AuditRecord, ConnectionRecord, DnsRecord, EventRecord, UdpFlowRecord},
};

pub fn time(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn jobs(jobs: &[Job], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(jobs)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<16}  {:<11}  {:>8}  {:<24}  {:<13}  {:<40}  LABELS",
        "JOB", "NAME", "KIND", "OWNER", "STARTED", "ASSURANCE", "IDENTITY"
    );
    for job in jobs {
        println!(
            "{:<36}  {:<16}  {:<11}  {:>8}  {:<24}  {:<13}  {:<40}  {}",
            job.id,
            job.name.as_deref().unwrap_or("-"),
            job.kind.as_str(),
            job.owner_pid,
            time(job.started_at),
            job.assurance.as_str(),
            job.identity.summary(),
            labels(&job.labels)
        );
    }
    Ok(())
}

pub fn sessions(sessions: &[ConnectionRecord], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(sessions)?);
        return Ok(());
    }
    println!("{}", session_header());
    for s in sessions {
        println!("{}", session_line(s));
    }
    Ok(())
}

/// Sessions read from the central store, each with its host.
pub fn fleet_sessions(sessions: &[Hosted<ConnectionRecord>], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(sessions)?);
        return Ok(());
    }
    println!("{:<20}  {}", "HOST", session_header());
    for s in sessions {
        println!("{:<20}  {}", s.host, session_line(&s.record));
    }
    Ok(())
}

fn session_header() -> String {
    format!(
        "{:<36}  {:<24}  {:<36}  {:<40}  {:<13}  {:>7}  {:<15}  {:<28}  {:<12}  {:>9}  {:>9}",
        "SESSION",
        "STARTED",
        "JOB",
        "IDENTITY",
        "ASSURANCE",
        "PID",
        "COMM",
        "DESTINATION",
        "DECISION",
        "UP",
        "DOWN"
    )
}

fn session_line(s: &ConnectionRecord) -> String {
    format!(
        "{:<36}  {:<24}  {:<36}  {:<40}  {:<13}  {:>7}  {:<15}  {:<28}  {:<12}  {:>9}  {:>9}",
        s.id,
        time(s.started_at),
        s.job_id.as_deref().unwrap_or("-"),
        s.job_identity.summary(),
        s.assurance.map_or("-", |a| a.as_str()),
        s.pid.map_or("-".to_owned(), |p| p.to_string()),
        s.comm.as_deref().unwrap_or("-"),
        s.destination.as_deref().unwrap_or("-"),
        s.decision,
        s.bytes_up,
        s.bytes_down
    )
}

/// One session read from the central store.
pub fn fleet_session(s: &Hosted<ConnectionRecord>, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!("host:        {}", s.host);
    session(&s.record, false)
}

pub fn session(s: &ConnectionRecord, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    println!("session:     {}", s.id);
    println!("job:         {}", opt(s.job_id.clone()));
    if let Some(name) = &s.job_name {
        println!("job name:    {name}");
    }
    println!("job labels:  {}", labels(&s.job_labels));
    for (field, value) in s.job_identity.fields() {
        if !value.is_empty() {
            println!("{:<13}{value}", format!("{field}:"));
        }
    }
    println!("assurance:   {}", s.assurance.map_or("-", |a| a.as_str()));
    println!("attributed:  {}", s.attributed);
    println!(
        "process:     pid {} (tid {}) uid {} gid {} comm {} exe {}",
        opt(s.pid.map(|v| v.to_string())),
        opt(s.tid.map(|v| v.to_string())),
        opt(s.uid.map(|v| v.to_string())),
        opt(s.gid.map(|v| v.to_string())),
        opt(s.comm.clone()),
        opt(s.exe.clone())
    );
    println!("cgroup id:   {}", opt(s.cgroup_id.map(|v| v.to_string())));
    println!("source:      {}", s.source);
    println!("destination: {}", opt(s.destination.clone()));
    println!("target:      {}", opt(s.target.clone()));
    println!("decision:    {} ({})", s.decision, s.reason);
    if !s.policy_ids.is_empty() {
        println!("policies:    {}", s.policy_ids.join(", "));
    }
    println!("bytes:       {} up, {} down", s.bytes_up, s.bytes_down);
    println!("started:     {}", time(s.started_at));
    println!(
        "connected:   {}",
        opt(s.connect_us.map(|us| format!("{us} µs after accept")))
    );
    println!(
        "ended:       {}",
        s.ended_at.map_or_else(|| "(open)".to_owned(), time)
    );
    println!("error:       {}", opt(s.error.clone()));
    if let Some(protocol) = &s.protocol {
        let tls = |on: Option<bool>| match on {
            Some(true) => "tls",
            Some(false) => "plaintext",
            None => "-",
        };
        println!(
            "{protocol}:    user {} database {} application {} (client {}, server {})",
            opt(s.db_user.clone()),
            opt(s.db_name.clone()),
            opt(s.application_name.clone()),
            tls(s.client_tls),
            tls(s.server_tls)
        );
    }
    if !s.statements.is_empty() {
        println!("statements:");
        println!(
            "  {:>4}  {:<24}  {:>9}  {:<11}  {:<16}  {:>6}  {:<7}  SQL",
            "SEQ", "STARTED", "MICROS", "KIND", "DECISION", "ROWS", "STATE"
        );
        for st in &s.statements {
            println!(
                "  {:>4}  {:<24}  {:>9}  {:<11}  {:<16}  {:>6}  {:<7}  {}",
                st.seq,
                time(st.started_at),
                st.duration_us.map_or("-".to_owned(), |d| d.to_string()),
                st.kind,
                st.decision,
                st.rows.map_or("-".to_owned(), |r| r.to_string()),
                st.sqlstate.as_deref().unwrap_or("-"),
                one_line(&st.sql),
            );
            if !st.params.is_empty() {
                println!("{:>58}params: {}", "", st.params.join(", "));
            }
            if let Some(mcp) = &st.mcp {
                if let Some(arguments) = &mcp.arguments {
                    println!("{:>58}arguments: {}", "", one_line(arguments));
                }
                if let Some(bytes) = mcp.result_bytes {
                    let failed = if mcp.is_error {
                        " (the tool reported an error)"
                    } else {
                        ""
                    };
                    println!("{:>58}result: {bytes} bytes{failed}", "");
                }
                if mcp.changed {
                    println!("{:>58}the tool changed within its session", "");
                }
                if !mcp.hidden.is_empty() {
                    println!("{:>58}hidden: {}", "", mcp.hidden.join(", "));
                }
                for change in &mcp.changes {
                    println!("{:>58}changed: {change}", "");
                }
            }
            if st.decision != DecisionLabel::Allow {
                println!("{:>58}{} ({})", "", st.reason, st.policy_ids.join(", "));
            }
        }
    }
    Ok(())
}

/// A statement on one line, shortened.
fn one_line(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 200 {
        format!("{}…", flat.chars().take(200).collect::<String>())
    } else {
        flat
    }
}

pub fn audit(entries: &[AuditRecord], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(entries)?);
        return Ok(());
    }
    println!("{}", audit_header());
    for e in entries {
        println!("{}", audit_line(e));
    }
    Ok(())
}

/// Audit entries read from the central store, each with its host.
pub fn fleet_audit(entries: &[Hosted<AuditRecord>], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(entries)?);
        return Ok(());
    }
    println!("{:<20}  {}", "HOST", audit_header());
    for e in entries {
        println!("{:<20}  {}", e.host, audit_line(&e.record));
    }
    Ok(())
}

fn audit_header() -> String {
    format!(
        "{:<24}  {:<20}  {:<8}  {:>7}  {:>7}  {:<36}  DETAIL",
        "AT", "ACTION", "OUTCOME", "PID", "UID", "JOB"
    )
}

fn audit_line(e: &AuditRecord) -> String {
    format!(
        "{:<24}  {:<20}  {:<8}  {:>7}  {:>7}  {:<36}  {}",
        time(e.at),
        e.action,
        e.outcome,
        e.caller_pid,
        e.caller_uid,
        e.job_id.as_deref().unwrap_or("-"),
        e.detail
    )
}

pub fn events(events: &[EventRecord], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(events)?);
        return Ok(());
    }
    println!(
        "{:<24}  {:<16}  {:<8}  {:>7}  {:>6}  {:<16}  {:<36}  DETAIL",
        "AT", "KIND", "ACTION", "PID", "UID", "COMM", "JOB"
    );
    for e in events {
        println!(
            "{:<24}  {:<16}  {:<8}  {:>7}  {:>6}  {:<16}  {:<36}  {}",
            time(e.at),
            e.kind,
            e.action,
            e.pid,
            e.uid,
            e.comm,
            e.job_id.as_deref().unwrap_or("-"),
            e.detail
        );
    }
    Ok(())
}

pub fn dns(queries: &[DnsRecord], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(queries)?);
        return Ok(());
    }
    println!(
        "{:<24}  {:<36}  {:<40}  {:<6}  {:<9}  {:<8}  ANSWERS",
        "AT", "JOB", "NAME", "TYPE", "RCODE", "DECISION"
    );
    for q in queries {
        println!(
            "{:<24}  {:<36}  {:<40}  {:<6}  {:<9}  {:<8}  {}",
            time(q.at),
            q.job_id.as_deref().unwrap_or("-"),
            q.name,
            q.qtype,
            q.rcode,
            q.decision,
            q.answers.join(", ")
        );
    }
    Ok(())
}

pub fn unix_connects(rows: &[crate::record::UnixRecord], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<24}  {:<36}  {:<16}  {:<40}  {:<10}  {:>8}  REASON",
        "LAST", "JOB", "COMM", "PATH", "DECISION", "CONNECTS"
    );
    for u in rows {
        println!(
            "{:<24}  {:<36}  {:<16}  {:<40}  {:<10}  {:>8}  {}",
            time(u.last_at),
            u.job_id.as_deref().unwrap_or("-"),
            u.comm,
            u.path,
            u.decision,
            u.connects,
            u.reason
        );
    }
    Ok(())
}

pub fn udp_flows(flows: &[UdpFlowRecord], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(flows)?);
        return Ok(());
    }
    println!(
        "{:<24}  {:<36}  {:<16}  {:<46}  {:<8}  {:<6}  {:>15}  {:>15}  REASON",
        "FIRST", "JOB", "COMM", "DESTINATION", "DECISION", "BY", "OUT pkts/bytes", "IN pkts/bytes"
    );
    for f in flows {
        let dst = match &f.hostname {
            Some(name) => format!("{} ({name})", f.dst),
            None => f.dst.clone(),
        };
        println!(
            "{:<24}  {:<36}  {:<16}  {:<46}  {:<8}  {:<6}  {:>15}  {:>15}  {}",
            time(f.first_at),
            f.job_id.as_deref().unwrap_or("-"),
            f.comm,
            dst,
            f.decision,
            f.enforced_by,
            format!("{}/{}", f.packets_out, f.bytes_out),
            format!("{}/{}", f.packets_in, f.bytes_in),
            f.reason
        );
    }
    Ok(())
}
