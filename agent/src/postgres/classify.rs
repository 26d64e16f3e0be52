//! What a statement does, by PostgreSQL's own parser (libpg_query): its kind, the
//! tables it reads or writes and the functions it calls. Results are cached per thread,
//! by statement text and by shape (the text with its constants blanked, when that is
//! unambiguous; see [`shape`]): statements that differ only in constants share one
//! classification. Both keys are exact texts. (A cache keyed by libpg_query's 64-bit
//! fingerprint, an unkeyed non-cryptographic hash, would let a job that crafts a
//! colliding pair have a DROP classified as the harmless statement it primed the cache
//! with.)
pub(super) mod shape;

use std::{cell::RefCell, collections::HashMap, sync::Arc};

use pg_query::NodeEnum;
use serde::{Deserialize, Serialize};

/// Cached classifications per thread before the cache starts over.
const CACHE_CAPACITY: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Read,
    Write,
    Ddl,
    /// Roles, grants, server administration (DCL and maintenance).
    Admin,
    /// BEGIN/COMMIT/ROLLBACK/SAVEPOINT and session settings (SET, RESET, DISCARD, ...).
    Transaction,
    /// DO, CALL, EXECUTE, and functions that can write.
    Procedural,
    /// Would not parse: decided as `sql:unknown`, which no default permits.
    Unknown,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Ddl => "ddl",
            Kind::Admin => "admin",
            Kind::Transaction => "transaction",
            Kind::Procedural => "procedural",
            Kind::Unknown => "unknown",
        }
    }

    /// The policy action deciding this kind; transaction control is not decided (it is
    /// always allowed, and recorded). Procedural statements can write: `sql:write`.
    pub const fn action(self) -> Option<&'static str> {
        match self {
            Kind::Read => Some("sql:read"),
            Kind::Write | Kind::Procedural => Some("sql:write"),
            Kind::Ddl => Some("sql:ddl"),
            Kind::Admin => Some("sql:admin"),
            Kind::Unknown => Some("sql:unknown"),
            Kind::Transaction => None,
        }
    }
}

/// One statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's own text (one of several in a simple Query). Shared, as are the
    /// names: a statement's record and its cached decision take them without a copy.
    pub text: Arc<str>,
    pub kind: Kind,
    pub tables: Arc<[String]>,
    pub functions: Arc<[String]>,
    /// The parse error, for `Unknown`.
    pub error: Option<String>,
}

/// What a statement text does, without the text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    kind: Kind,
    tables: Arc<[String]>,
    functions: Arc<[String]>,
}

#[derive(Default)]
struct Cache {
    by_text: HashMap<String, Arc<Vec<Statement>>>,
    by_shape: HashMap<String, Verdict>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Classifies the statements of a query text (one Query message may hold several).
pub fn classify(sql: &str) -> Arc<Vec<Statement>> {
    if let Some(hit) = CACHE.with(|c| c.borrow().by_text.get(sql).cloned()) {
        return hit;
    }
    // Statements that differ only in constants share a shape: no parse at all, and no
    // text cache entry (the text will hardly come again; its shape will).
    let shape = shape::shape(sql);
    if let Some(shape) = &shape
        && let Some(verdict) = CACHE.with(|c| c.borrow().by_shape.get(shape).cloned())
    {
        return Arc::new(vec![statement(sql, verdict)]);
    }
    let statements = Arc::new(parse(sql, shape));
    CACHE.with(|c| {
        remember(
            &mut c.borrow_mut().by_text,
            sql.to_owned(),
            statements.clone(),
        )
    });
    statements
}

/// Inserts into a per-thread cache map, which starts over when it is full.
fn remember<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= CACHE_CAPACITY {
        map.clear();
    }
    map.insert(key, value);
}

/// Classifies by a full parse, and remembers a single statement's verdict by `shape`.
fn parse(sql: &str, shape: Option<String>) -> Vec<Statement> {
    let parsed = match pg_query::parse(sql, 0) {
        Ok(parsed) => parsed,
        Err(error) => return vec![unknown(sql, error.to_string())],
    };
    let raw: Vec<(Option<NodeEnum>, &str)> = parsed
        .protobuf
        .stmts
        .iter()
        .map(|raw| {
            let node = raw.stmt.as_ref().and_then(|s| s.node.clone());
            (node, statement_text(sql, raw.stmt_location, raw.stmt_len))
        })
        .collect();
    if raw.len() == 1 {
        let (node, _) = &raw[0];
        let verdict = verdict(node.as_ref(), &parsed);
        if let Some(shape) = shape {
            CACHE.with(|c| remember(&mut c.borrow_mut().by_shape, shape, verdict.clone()));
        }
        return vec![statement(sql, verdict)];
    }
    // Several statements: each on its own, for its own tables and functions.
    raw.into_iter()
        .filter(|(_, text)| !text.trim().is_empty())
        .map(|(node, text)| match pg_query::parse(text, 0) {
            Ok(one) => statement(text, verdict(node.as_ref(), &one)),
            Err(error) => unknown(text, error.to_string()),
        })
        .collect()
}

/// A statement's text as recorded: without surrounding space and trailing semicolons.
fn tidy(text: &str) -> Arc<str> {
    Arc::from(text.trim().trim_end_matches(';').trim_end())
}

fn statement(text: &str, verdict: Verdict) -> Statement {
    Statement {
        text: tidy(text),
        kind: verdict.kind,
        tables: verdict.tables,
        functions: verdict.functions,
        error: None,
    }
}

fn unknown(text: &str, error: String) -> Statement {
    Statement {
        text: tidy(text),
        kind: Kind::Unknown,
        tables: Arc::default(),
        functions: Arc::default(),
        error: Some(error),
    }
}

/// A statement's text from its location and length (0 = to the end).
fn statement_text(sql: &str, location: i32, len: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0).min(sql.len());
    let end = if len <= 0 {
        sql.len()
    } else {
        start.saturating_add(len as usize).min(sql.len())
    };
    sql.get(start..end).unwrap_or(sql)
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names.dedup();
    names
}

fn verdict(node: Option<&NodeEnum>, parsed: &pg_query::ParseResult) -> Verdict {
    let functions = sorted(parsed.functions());
    let kind = kind_of(node, parsed, &functions);
    Verdict {
        kind,
        tables: sorted(parsed.tables()).into(),
        functions: functions.into(),
    }
}

fn kind_of(node: Option<&NodeEnum>, parsed: &pg_query::ParseResult, functions: &[String]) -> Kind {
    let reads_or_calls = || {
        if !parsed.dml_tables().is_empty() {
            // A data-modifying CTE: WITH d AS (DELETE ...) SELECT ...
            Kind::Write
        } else if functions.iter().any(|f| !read_only_function(f)) {
            Kind::Procedural
        } else {
            Kind::Read
        }
    };
    let inner = |query: Option<&pg_query::protobuf::Node>| {
        kind_of(query.and_then(|q| q.node.as_ref()), parsed, functions)
    };
    let Some(node) = node else {
        return Kind::Unknown;
    };
    match node {
        NodeEnum::SelectStmt(select) if select.into_clause.is_some() => Kind::Ddl,
        NodeEnum::SelectStmt(_) => reads_or_calls(),
        NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::MergeStmt(_)
        | NodeEnum::LockStmt(_)
        | NodeEnum::NotifyStmt(_) => Kind::Write,
        NodeEnum::CopyStmt(copy) if copy.is_program => Kind::Admin,
        NodeEnum::CopyStmt(copy) if copy.is_from => Kind::Write,
        NodeEnum::CopyStmt(copy) => match &copy.query {
            Some(query) => inner(Some(query)),
            None => Kind::Read,
        },
        NodeEnum::ExplainStmt(explain) => {
            let analyze = explain.options.iter().any(|o| {
                matches!(&o.node, Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze"))
            });
            if analyze {
                inner(explain.query.as_deref())
            } else {
                Kind::Read
            }
        }
        NodeEnum::PrepareStmt(prepare) => inner(prepare.query.as_deref()),
        NodeEnum::DeclareCursorStmt(cursor) => inner(cursor.query.as_deref()),
        NodeEnum::FetchStmt(_) | NodeEnum::ClosePortalStmt(_) | NodeEnum::VariableShowStmt(_) => {
            Kind::Read
        }
        NodeEnum::VariableSetStmt(set)
            if matches!(
                set.name.as_str(),
                "role" | "session_authorization" | "session_replication_role"
            ) =>
        {
            Kind::Admin
        }
        NodeEnum::TransactionStmt(_)
        | NodeEnum::VariableSetStmt(_)
        | NodeEnum::DiscardStmt(_)
        | NodeEnum::DeallocateStmt(_)
        | NodeEnum::ListenStmt(_)
        | NodeEnum::UnlistenStmt(_)
        | NodeEnum::ConstraintsSetStmt(_) => Kind::Transaction,
        NodeEnum::DoStmt(_) | NodeEnum::CallStmt(_) | NodeEnum::ExecuteStmt(_) => Kind::Procedural,
        NodeEnum::GrantStmt(_)
        | NodeEnum::GrantRoleStmt(_)
        | NodeEnum::CreateRoleStmt(_)
        | NodeEnum::AlterRoleStmt(_)
        | NodeEnum::AlterRoleSetStmt(_)
        | NodeEnum::DropRoleStmt(_)
        | NodeEnum::AlterDefaultPrivilegesStmt(_)
        | NodeEnum::ReassignOwnedStmt(_)
        | NodeEnum::DropOwnedStmt(_)
        | NodeEnum::AlterSystemStmt(_)
        | NodeEnum::VacuumStmt(_)
        | NodeEnum::ClusterStmt(_)
        | NodeEnum::ReindexStmt(_)
        | NodeEnum::CheckPointStmt(_)
        | NodeEnum::LoadStmt(_)
        | NodeEnum::CreatedbStmt(_)
        | NodeEnum::DropdbStmt(_)
        | NodeEnum::AlterDatabaseStmt(_)
        | NodeEnum::AlterDatabaseSetStmt(_)
        | NodeEnum::CreateTableSpaceStmt(_)
        | NodeEnum::DropTableSpaceStmt(_)
        | NodeEnum::CreateSubscriptionStmt(_)
        | NodeEnum::AlterSubscriptionStmt(_)
        | NodeEnum::DropSubscriptionStmt(_)
        | NodeEnum::CreatePublicationStmt(_)
        | NodeEnum::AlterPublicationStmt(_) => Kind::Admin,
        // CREATE, ALTER, DROP, TRUNCATE, COMMENT, RENAME, indexes, views, ...
        _ => Kind::Ddl,
    }
}

/// Built-in functions that only compute: a SELECT calling anything else is
/// `procedural` (it may write, or act on the server).
fn read_only_function(name: &str) -> bool {
    let name = name.strip_prefix("pg_catalog.").unwrap_or(name);
    const PREFIXES: [&str; 12] = [
        "to_", "json", "array_", "string_", "regexp_", "date_", "st_", "num", "text", "int",
        "float", "bool",
    ];
    const NAMES: &[&str] = &[
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "abs",
        "ceil",
        "ceiling",
        "floor",
        "round",
        "trunc",
        "sqrt",
        "power",
        "mod",
        "random",
        "greatest",
        "least",
        "coalesce",
        "nullif",
        "lower",
        "upper",
        "length",
        "char_length",
        "octet_length",
        "substr",
        "substring",
        "trim",
        "btrim",
        "ltrim",
        "rtrim",
        "lpad",
        "rpad",
        "replace",
        "concat",
        "concat_ws",
        "split_part",
        "position",
        "strpos",
        "left",
        "right",
        "reverse",
        "repeat",
        "format",
        "md5",
        "sha256",
        "encode",
        "decode",
        "now",
        "current_date",
        "current_time",
        "current_timestamp",
        "localtime",
        "localtimestamp",
        "clock_timestamp",
        "statement_timestamp",
        "transaction_timestamp",
        "age",
        "extract",
        "date_part",
        "make_date",
        "make_interval",
        "make_timestamp",
        "generate_series",
        "unnest",
        "row_number",
        "rank",
        "dense_rank",
        "lag",
        "lead",
        "first_value",
        "last_value",
        "ntile",
        "percent_rank",
        "cume_dist",
        "bool_and",
        "bool_or",
        "every",
        "stddev",
        "variance",
        "percentile_cont",
        "percentile_disc",
        "mode",
        "version",
        "current_user",
        "session_user",
        "current_schema",
        "current_schemas",
        "current_database",
        "current_setting",
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "pg_backend_pid",
        "pg_typeof",
        "format_type",
        "pg_get_userbyid",
        "pg_table_is_visible",
        "pg_get_expr",
        "pg_get_indexdef",
        "pg_get_constraintdef",
        "pg_relation_size",
        "pg_total_relation_size",
        "pg_size_pretty",
        "pg_database_size",
        "pg_encoding_to_char",
        "obj_description",
        "col_description",
        "quote_ident",
        "quote_literal",
        "quote_nullif",
        "gen_random_uuid",
        "uuid_generate_v4",
        "exists",
        "isfinite",
        "width_bucket",
        "initcap",
        "chr",
        "ascii",
        "translate",
        "overlay",
        "starts_with",
        "cardinality",
        "hstore",
        "row_to_json",
    ];
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<Kind> {
        classify(sql).iter().map(|s| s.kind).collect()
    }

    #[test]
    fn statements_of_one_shape_share_a_classification_but_keep_their_text() {
        let first = classify("select note from shaped_orders where id = 1");
        let second = classify("select note from shaped_orders where id = 987654");
        assert_eq!(*first[0].tables, ["shaped_orders"]);
        assert_eq!(*second[0].tables, ["shaped_orders"]);
        assert_eq!(second[0].kind, Kind::Read);
        assert_eq!(
            &*second[0].text,
            "select note from shaped_orders where id = 987654"
        );
        // A different table is a different shape.
        let other = classify("select note from other_orders where id = 2");
        assert_eq!(*other[0].tables, ["other_orders"]);
        // Comments hide nothing: this goes to the parser and is seen as two statements.
        let hidden =
            classify("select note from shaped_orders where id = 3 /* ' */; drop table x; /* ' */");
        assert_eq!(hidden.len(), 2);
        assert_eq!(hidden[1].kind, Kind::Ddl);
    }

    #[test]
    fn kinds_by_effect() {
        #[rustfmt::skip]
        let table: &[(&str, Kind)] = &[
            ("select * from orders where id = 1", Kind::Read),
            ("select count(*), lower(name) from customers", Kind::Read),
            ("select pg_terminate_backend(42)", Kind::Procedural),
            ("select my_func()", Kind::Procedural),
            ("select * into archive from orders", Kind::Ddl),
            ("with d as (delete from orders returning *) select * from d", Kind::Write),
            ("insert into orders values (1)", Kind::Write),
            ("update orders set paid = true", Kind::Write),
            ("delete from orders", Kind::Write),
            ("copy orders from stdin", Kind::Write),
            ("copy orders to stdout", Kind::Read),
            ("copy orders to program 'sh'", Kind::Admin),
            ("create table t (id int)", Kind::Ddl),
            ("drop table orders", Kind::Ddl),
            ("truncate orders", Kind::Ddl),
            ("alter table orders add column x int", Kind::Ddl),
            ("grant select on orders to bob", Kind::Admin),
            ("create role bob", Kind::Admin),
            ("vacuum orders", Kind::Admin),
            ("set role admin", Kind::Admin),
            ("begin", Kind::Transaction),
            ("commit", Kind::Transaction),
            ("set search_path = public", Kind::Transaction),
            ("do $$ begin perform 1; end $$", Kind::Procedural),
            ("call do_things()", Kind::Procedural),
            ("explain select 1", Kind::Read),
            ("explain analyze delete from orders", Kind::Write),
            ("prepare p as delete from orders", Kind::Write),
            ("show search_path", Kind::Read),
            ("selec 1", Kind::Unknown),
        ];
        for (sql, kind) in table {
            assert_eq!(kinds(sql), vec![*kind], "{sql}");
        }
    }

    #[test]
    fn several_statements_each_with_their_tables() {
        let statements = classify("BEGIN; DROP TABLE orders; SELECT * FROM customers; COMMIT");
        let summary: Vec<(Kind, &str, Vec<String>)> = statements
            .iter()
            .map(|s| (s.kind, &*s.text, s.tables.to_vec()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Kind::Transaction, "BEGIN", vec![]),
                (Kind::Ddl, "DROP TABLE orders", vec!["orders".to_owned()]),
                (
                    Kind::Read,
                    "SELECT * FROM customers",
                    vec!["customers".to_owned()]
                ),
                (Kind::Transaction, "COMMIT", vec![]),
            ]
        );
    }

    #[test]
    fn statements_differing_in_constants_share_a_verdict() {
        let a = classify("select * from public.accounts where id = 1");
        let b = classify("select * from public.accounts where id = 2");
        assert_eq!(*a[0].tables, ["public.accounts"]);
        assert_eq!(b[0].tables, a[0].tables);
        assert_eq!(&*b[0].text, "select * from public.accounts where id = 2");
        let unknown = &classify("selec 1")[0];
        assert!(
            unknown
                .error
                .as_deref()
                .is_some_and(|e| e.contains("syntax error"))
        );
    }
}
