//! The server's messages: answers are matched to the client's requests, statements
//! complete with their rows or errors, results are masked, and Tollgate's error takes
//! the place of the server's for a denied statement.
use tollgate_pgwire::backend;
use tollgate_policy::SqlContext;

use super::{DENIED_SQLSTATE, Described, ExecuteInfo, Reply, Tracker, scope};
use crate::{
    postgres::{
        encoding::ClientEncoding,
        mask::plan::{ColumnInfo, Plan},
        session::Context,
    },
    record::StatementRecord,
};

pub(super) fn handle(
    state: &mut Tracker,
    ctx: &Context,
    sql: &SqlContext,
    message: backend::Message<'_>,
    raw: &[u8],
    out: &mut Vec<u8>,
    finished: &mut Vec<StatementRecord>,
) {
    match message {
        backend::Message::Error(fields) => {
            let sqlstate = backend::field(&fields, b'C').map(|v| state.encoding.lossy(v));
            let text = backend::field(&fields, b'M').map(|v| state.encoding.lossy(v));
            let Some(head) = state.pending.front_mut() else {
                // An error outside any request (e.g. during authentication, or FATAL).
                out.extend_from_slice(raw);
                return;
            };
            if let Some(denial) = head.denial.take() {
                out.extend_from_slice(&denial);
                for mut record in head.records.drain(..) {
                    if record.decision.refused() {
                        record.sqlstate = Some(DENIED_SQLSTATE.to_owned());
                        record.error = Some("denied by policy".to_owned());
                    } else {
                        record.error = Some(
                            "not executed: another statement of the query was denied".to_owned(),
                        );
                    }
                    finished.push(record);
                }
            } else {
                out.extend_from_slice(raw);
                if let Some(mut record) = head.records.pop_front() {
                    record.sqlstate = sqlstate;
                    record.error = text;
                    finished.push(record);
                }
                for mut record in head.records.drain(..) {
                    record.error = Some("not executed: an earlier statement failed".to_owned());
                    finished.push(record);
                }
            }
            if !head.reply.ends_with_ready() {
                // Extended protocol: the server discards messages up to Sync.
                state.pending.pop_front();
                while let Some(next) = state.pending.front() {
                    if matches!(next.reply, Reply::Sync) {
                        break;
                    }
                    if let Some(skipped) = state.pending.pop_front() {
                        for mut record in skipped.records {
                            record.error =
                                Some("not executed: an earlier message failed".to_owned());
                            finished.push(record);
                        }
                    }
                }
                state.skipping = true;
            }
        }
        backend::Message::ReadyForQuery(_) => {
            state.skipping = false;
            state.plan = None;
            state.copy_out_text = false;
            // Ends a Query, a FunctionCall or a Sync.
            if let Some(head) = state.pending.pop_front() {
                for record in head.records {
                    finished.push(record);
                }
            }
            out.extend_from_slice(raw);
        }
        backend::Message::CommandComplete(tag) => {
            state.plan = None;
            if let Some(head) = state.pending.front_mut() {
                if let Some(mut record) = head.records.pop_front() {
                    record.rows = backend::rows_of(tag);
                    finished.push(record);
                }
                if matches!(head.reply, Reply::Execute { .. }) {
                    state.pending.pop_front();
                }
            }
            out.extend_from_slice(raw);
        }
        backend::Message::EmptyQuery => {
            if let Some(head) = state.pending.front_mut() {
                if let Some(record) = head.records.pop_front() {
                    finished.push(record);
                }
                if matches!(head.reply, Reply::Execute { .. }) {
                    state.pending.pop_front();
                }
            }
            out.extend_from_slice(raw);
        }
        backend::Message::ParameterStatus { name, value } => {
            // The server says which encoding the session's text is in, at startup and
            // after every change (`SET client_encoding`).
            if name == b"client_encoding"
                && let Some(encoding) = ClientEncoding::from_name(value)
            {
                state.encoding = encoding;
            }
            out.extend_from_slice(raw);
        }
        backend::Message::Other(b'H') => {
            // CopyOutResponse: overall format 0 is text or CSV. COPY says nothing of
            // its columns' types, so the detectors read its rows only when the session's
            // results are detected, and leave every bare number as it is.
            state.copy_out_text = raw.get(5) == Some(&0) && state.detect_results && !state.exempt;
            out.extend_from_slice(raw);
        }
        backend::Message::Other(b'd') if state.copy_out_text => {
            let row = raw.get(5..).unwrap_or_default();
            match state.masking.redact_copy_row(row, &state.encoding) {
                std::borrow::Cow::Owned(masked) => {
                    ctx.metrics.masked_rows.inc();
                    out.push(b'd');
                    out.extend_from_slice(&((masked.len() + 4) as i32).to_be_bytes());
                    out.extend_from_slice(&masked);
                }
                std::borrow::Cow::Borrowed(_) => out.extend_from_slice(raw),
            }
        }
        backend::Message::Other(b'c') => {
            state.copy_out_text = false;
            out.extend_from_slice(raw);
        }
        backend::Message::Other(tag) => {
            if state.pending.front().is_some_and(|p| p.reply.ended_by(tag))
                && let Some(head) = state.pending.pop_front()
            {
                for record in head.records {
                    finished.push(record);
                }
            }
            out.extend_from_slice(raw);
        }
        backend::Message::RowDescription(columns) => {
            let columns: Vec<ColumnInfo> = columns
                .iter()
                .map(|c| ColumnInfo {
                    name: state.encoding.lossy(c.name),
                    type_oid: c.type_oid,
                    format: c.format,
                })
                .collect();
            match state.pending.front() {
                // Describe (statement or portal) ends with RowDescription or NoData.
                Some(head) if matches!(head.reply, Reply::Describe(_)) => {
                    if let Some(head) = state.pending.pop_front()
                        && let Reply::Describe(described) = head.reply
                    {
                        match described {
                            Described::Statement(name) => {
                                if let Some(prepared) = state.prepared.get_mut(&name) {
                                    prepared.columns = Some(columns);
                                }
                            }
                            Described::Portal(name) => {
                                state.portal_columns.insert(name, columns);
                            }
                        }
                    }
                }
                Some(head) if matches!(head.reply, Reply::Query) && !state.exempt => {
                    let tables = head
                        .records
                        .front()
                        .map(|r| r.tables.clone())
                        .unwrap_or_default();
                    let formats: Vec<i16> = columns.iter().map(|c| c.format).collect();
                    state.plan = Plan::new(
                        &state.masking,
                        state.detect_results,
                        &scope(ctx, sql),
                        &tables,
                        &columns,
                        &formats,
                    );
                }
                _ => {}
            }
            out.extend_from_slice(raw);
        }
        backend::Message::DataRow(values) => {
            // The first row of an Execute whose columns were described after it was sent.
            let late = match state.pending.front().map(|head| &head.reply) {
                Some(Reply::Execute {
                    plan: None,
                    late: Some(info),
                }) if !state.exempt => late_plan(state, ctx, sql, info),
                _ => None,
            };
            let plan = match state.pending.front_mut().map(|head| &mut head.reply) {
                Some(Reply::Execute { plan, .. }) => {
                    if late.is_some() {
                        *plan = late;
                    }
                    plan.as_ref()
                }
                _ => state.plan.as_ref(),
            };
            match plan.and_then(|plan| plan.apply(&values, &state.encoding)) {
                Some(masked) => {
                    ctx.metrics.masked_rows.inc();
                    out.extend_from_slice(&masked);
                }
                None => out.extend_from_slice(raw),
            }
        }
        backend::Message::Authentication { code, data }
            if code == backend::AUTH_SASL && state.client_tls =>
        {
            // The client's TLS ends here: it cannot bind to the server's channel, so it
            // is not offered SCRAM-SHA-256-PLUS.
            match backend::sasl_mechanisms(data) {
                Ok(mechanisms) if mechanisms.iter().any(|m| m.ends_with("-PLUS")) => {
                    let kept: Vec<&str> = mechanisms
                        .into_iter()
                        .filter(|m| !m.ends_with("-PLUS"))
                        .collect();
                    out.extend_from_slice(&backend::authentication_sasl(&kept));
                }
                _ => out.extend_from_slice(raw),
            }
        }
        backend::Message::Authentication { .. } | backend::Message::Notice(_) => {
            out.extend_from_slice(raw)
        }
    }
}

/// The masking plan of an Execute whose columns a Describe answered after it was sent:
/// its portal's, else its statement's.
fn late_plan(state: &Tracker, ctx: &Context, sql: &SqlContext, info: &ExecuteInfo) -> Option<Plan> {
    let (columns, formats) = match state.portal_columns.get(&info.portal) {
        Some(columns) => (columns.clone(), columns.iter().map(|c| c.format).collect()),
        None => (
            state.prepared.get(&info.statement)?.columns.clone()?,
            info.formats.clone(),
        ),
    };
    Plan::new(
        &state.masking,
        state.detect_results,
        &scope(ctx, sql),
        &info.tables,
        &columns,
        &formats,
    )
}
