//! The client's messages: each statement is classified, decided and recorded as it
//! arrives; a denied one goes to the server as a statement that fails to parse.
use std::{collections::VecDeque, sync::Arc};

use tollgate_pgwire::frontend;
use tollgate_policy::SqlContext;

use super::{
    DENIED_SQL, DENIED_STATEMENT, Described, ExecuteInfo, Flow, Pending, Portal, Prepared, Reply,
    Tracker, denial, needs_approval, params_of, scope,
};
use crate::{
    postgres::{
        classify::{self, Kind},
        decided::Decided,
        mask::plan::Plan,
        session::Context,
    },
    record::StatementRecord,
};

pub(super) fn handle(
    state: &mut Tracker,
    ctx: &Context,
    sql: &SqlContext,
    message: frontend::Message<'_>,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> Flow {
    match message {
        frontend::Message::Query(text) => {
            let (_, statements) = state.classify(text);
            let (decision, kind) = state.decide(ctx, sql, &statements);
            let Some((decision, link)) = state.approval(ctx, decision, &statements) else {
                return Flow::Hold;
            };
            let records = statements
                .iter()
                .map(|s| linked(state.record(ctx, s, &decision, "simple", Vec::new()), &link))
                .collect();
            run_or_deny(state, Reply::Query, (&decision, kind), records, raw, out);
        }
        frontend::Message::Parse {
            name, sql: text, ..
        } => {
            let (text, statements) = state.classify(text);
            let (decision, kind) = state.decide(ctx, sql, &statements);
            // One that needs approval is prepared: each Execute of it asks.
            if decision.blocks() && !needs_approval(&decision) {
                // It will never run: its record is written now, with the denial.
                let records = statements
                    .iter()
                    .map(|s| state.record(ctx, s, &decision, "extended", Vec::new()))
                    .collect();
                let denial = state.refusal(&decision, kind);
                state
                    .pending
                    .push_back(Pending::running(Reply::Parse, Some(denial), records));
                state.prepared.remove(name);
                out.extend_from_slice(&frontend::parse_message(name, DENIED_SQL));
            } else {
                state.prepared.insert(
                    name.to_owned(),
                    Prepared {
                        sql: text.into_owned(),
                        statements,
                        decision,
                        generation: state.generation(),
                        columns: None,
                    },
                );
                state.pending.push_back(Pending::new(Reply::Parse));
                out.extend_from_slice(raw);
            }
        }
        frontend::Message::Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        } => {
            state.portal_columns.remove(portal);
            state.portals.insert(
                portal.to_owned(),
                Portal {
                    statement: statement.to_owned(),
                    params: params_of(&params, &param_formats, &state.encoding),
                    formats: result_formats,
                },
            );
            state.pending.push_back(Pending::new(Reply::Bind));
            out.extend_from_slice(raw);
        }
        frontend::Message::Execute { portal, .. } => {
            if let Some(denied) = redecide_stale(state, ctx, sql, portal) {
                state.pending.push_back(denied);
                // A Parse the server rejects puts it into the state the client now
                // expects: an error, then everything skipped up to Sync.
                out.extend_from_slice(&frontend::parse_message(DENIED_STATEMENT, DENIED_SQL));
                return Flow::Continue;
            }
            let mut link = None;
            if let Some(prepared) = state
                .portals
                .get(portal)
                .and_then(|p| state.prepared.get(&p.statement))
                && needs_approval(&prepared.decision)
            {
                let (decided, statements) =
                    (prepared.decision.clone(), prepared.statements.clone());
                let Some((decided, approval)) = state.approval(ctx, decided, &statements) else {
                    return Flow::Hold;
                };
                if decided.blocks() {
                    let params = state.portals.get(portal).map(|p| p.params.clone());
                    let records = statements
                        .iter()
                        .map(|s| {
                            let params = params.clone().unwrap_or_default();
                            linked(
                                state.record(ctx, s, &decided, "extended", params),
                                &approval,
                            )
                        })
                        .collect();
                    let kind = statements.first().map_or(Kind::Unknown, |s| s.kind);
                    let reply = Reply::Execute {
                        plan: None,
                        late: None,
                    };
                    let denial = state.refusal(&decided, kind);
                    state
                        .pending
                        .push_back(Pending::running(reply, Some(denial), records));
                    out.extend_from_slice(&frontend::parse_message(DENIED_STATEMENT, DENIED_SQL));
                    return Flow::Continue;
                }
                link = approval;
            }
            let mut records = VecDeque::new();
            let mut plan = None;
            if let Some(Portal {
                statement,
                params,
                formats,
            }) = state.portals.get(portal).cloned()
                && let Some(prepared) = state.prepared.get(&statement)
            {
                if !state.exempt {
                    let columns = state
                        .portal_columns
                        .get(portal)
                        .map(|c| (c.clone(), c.iter().map(|c| c.format).collect()))
                        .or_else(|| prepared.columns.clone().map(|c| (c, formats.clone())));
                    let tables: Vec<String> = prepared
                        .statements
                        .iter()
                        .flat_map(|s| s.tables.iter().cloned())
                        .collect();
                    plan = columns.and_then(|(columns, formats)| {
                        Plan::new(
                            &state.masking,
                            state.detect_results,
                            &scope(ctx, sql),
                            &tables,
                            &columns,
                            &formats,
                        )
                    });
                }
                let statements = prepared.statements.clone();
                let decision = prepared.decision.clone();
                let sql_text = prepared.sql.clone();
                let decision = match &link {
                    Some(_) => {
                        let mut allowed = decision.decision.clone();
                        allowed.effect = tollgate_policy::Effect::Allow;
                        if let Some(outcome) = &state.applied {
                            allowed.reason = outcome.reason();
                        }
                        Decided::new(allowed)
                    }
                    None => decision,
                };
                for s in statements.iter() {
                    let mut record = state.record(ctx, s, &decision, "extended", params.clone());
                    record.approval.clone_from(&link);
                    if statements.len() == 1 {
                        let text = sql_text.trim().trim_end_matches(';').trim_end();
                        record.sql = state.masking.redact(text).into();
                    }
                    records.push_back(record);
                }
            }
            let late = state.portals.get(portal).map(|bound| {
                let (statement, formats) = (&bound.statement, &bound.formats);
                let tables = state
                    .prepared
                    .get(statement)
                    .map(|p| {
                        p.statements
                            .iter()
                            .flat_map(|s| s.tables.iter().cloned())
                            .collect()
                    })
                    .unwrap_or_default();
                ExecuteInfo {
                    portal: portal.to_owned(),
                    statement: statement.clone(),
                    formats: formats.clone(),
                    tables,
                }
            });
            let reply = Reply::Execute { plan, late };
            state
                .pending
                .push_back(Pending::running(reply, None, records));
            out.extend_from_slice(raw);
        }
        frontend::Message::Describe { kind, name } => {
            let described = if kind == b'S' {
                Described::Statement(name.to_owned())
            } else {
                Described::Portal(name.to_owned())
            };
            state
                .pending
                .push_back(Pending::new(Reply::Describe(described)));
            out.extend_from_slice(raw);
        }
        frontend::Message::Close { kind, name } => {
            if kind == b'S' {
                state.prepared.remove(name);
            } else {
                state.portals.remove(name);
            }
            state.pending.push_back(Pending::new(Reply::Close));
            out.extend_from_slice(raw);
        }
        frontend::Message::Sync => {
            state.pending.push_back(Pending::new(Reply::Sync));
            out.extend_from_slice(raw);
        }
        frontend::Message::FunctionCall { oid } => {
            let statement = classify::Statement {
                text: format!("(function call, oid {oid})").into(),
                kind: Kind::Procedural,
                tables: Arc::default(),
                functions: Arc::from([oid.to_string()]),
                error: None,
            };
            let statements = std::slice::from_ref(&statement);
            let (decision, _) = state.decide(ctx, sql, statements);
            let Some((decision, link)) = state.approval(ctx, decision, statements) else {
                return Flow::Hold;
            };
            let record = state.record(ctx, &statement, &decision, "function", Vec::new());
            let decided = (&*decision, Kind::Procedural);
            let records = [linked(record, &link)].into();
            run_or_deny(state, Reply::Function, decided, records, raw, out);
        }
        frontend::Message::Flush
        | frontend::Message::Terminate
        | frontend::Message::CopyData(_)
        | frontend::Message::CopyDone
        | frontend::Message::CopyFail(_)
        | frontend::Message::Auth(_) => out.extend_from_slice(raw),
    }
    Flow::Continue
}

/// A statement's record, linked to the approval request or grant that decided it.
fn linked(mut record: StatementRecord, link: &Option<String>) -> StatementRecord {
    record.approval.clone_from(link);
    record
}

/// Decides a portal's prepared statement again when a reload came after its Parse. Keeps
/// the new decision; when it blocks, returns the pending denial (with the statements'
/// records) that takes the Execute's place.
fn redecide_stale(
    state: &mut Tracker,
    ctx: &Context,
    sql: &SqlContext,
    portal: &[u8],
) -> Option<Pending> {
    let Portal {
        statement, params, ..
    } = state.portals.get(portal)?;
    let prepared = state.prepared.get(statement)?;
    if prepared.generation == state.generation() {
        return None;
    }
    let (statement, params) = (statement.clone(), params.clone());
    let statements = prepared.statements.clone();
    let (decision, kind) = state.decide(ctx, sql, &statements);
    let generation = state.generation();
    if let Some(prepared) = state.prepared.get_mut(&statement) {
        prepared.decision = decision.clone();
        prepared.generation = generation;
    }
    if !decision.blocks() || needs_approval(&decision) {
        return None;
    }
    let records = statements
        .iter()
        .map(|s| state.record(ctx, s, &decision, "extended", params.clone()))
        .collect();
    let reply = Reply::Execute {
        plan: None,
        late: None,
    };
    let denial = denial(&decision, kind, &state.encoding);
    Some(Pending::running(reply, Some(denial), records))
}

/// A Query or a FunctionCall, whose answer ends with ReadyForQuery: it goes to the
/// server as it is, or, when `decided` blocks it, as a query that fails to parse, its
/// error then replaced with Tollgate's.
fn run_or_deny(
    state: &mut Tracker,
    reply: Reply,
    (decided, kind): (&Decided, Kind),
    records: VecDeque<StatementRecord>,
    raw: &[u8],
    out: &mut Vec<u8>,
) {
    let blocked = decided.blocks();
    let denial = blocked.then(|| state.refusal(decided, kind));
    state
        .pending
        .push_back(Pending::running(reply, denial, records));
    if blocked {
        out.extend_from_slice(&frontend::query(DENIED_SQL));
    } else {
        out.extend_from_slice(raw);
    }
}
