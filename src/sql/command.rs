//! One typed command per statement: what a client's statement is, decided once, right after parsing, and carried
//! from there to whatever runs it.
//!
//! The server routes a [`Command`] by its variant — the connection's own session state (settings, transaction
//! status, cursors, prepared statements), `COPY … TO STDOUT`, or the engine — and checks rights on it once
//! ([`Command::writes`]); the engine runs its variants (kfsql's own statements: Kafka tables, materialized views,
//! `SHOW TABLES`; everything else planned by DataFusion). Nothing downstream looks at the SQL syntax tree again to
//! find out what a statement is.

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    CloseCursor, CopyLegacyOption, CopyOption, CopySource, CopyTarget, CreateView, Expr, FetchDirection, ObjectType,
    Query, Set, Statement, Value,
};

use crate::error::{KfsqlError, Result};

/// What a statement is.
#[derive(Debug, Clone)]
pub enum Command {
    /// Settings and transaction control: the connection's own state, never the engine's.
    Session(SessionCommand),
    /// `PREPARE name AS statement`: the whole statement (the engine plans it) and what the prepared one is.
    Prepare { statement: DFStatement, inner: Box<Command> },
    /// `EXECUTE name [(values)]` (the engine plans the values).
    Execute(DFStatement),
    /// `DEALLOCATE name`, or every prepared statement (`ALL`) when None.
    Deallocate(Option<String>),
    /// `DECLARE name CURSOR [WITH HOLD] FOR query`.
    Declare { name: String, hold: bool, query: Box<Query> },
    /// `FETCH … FROM name`.
    Fetch { name: String, direction: FetchDirection },
    /// `CLOSE name | ALL`.
    Close(CloseCursor),
    /// `COPY (query) TO STDOUT …`: rows streamed to the client.
    CopyOut(CopyOut),
    /// `DROP TABLE`: Kafka tables leave the catalog; system schemas are refused.
    DropTables { names: Vec<String>, if_exists: bool },
    /// `DROP MATERIALIZED VIEW`: the pipeline stops and the view leaves the catalog.
    DropMaterializedViews { names: Vec<String>, if_exists: bool },
    /// `CREATE MATERIALIZED VIEW name WITH (…) AS SELECT …`: a pipeline into a feature topic.
    CreateMaterializedView(Box<CreateView>),
    /// `SHOW TABLES`: kfsql's tables.
    ShowTables,
    /// `SHOW MATERIALIZED VIEWS`: the pipelines.
    ShowMaterializedViews,
    /// A statement that only reads, planned by DataFusion: SELECT / VALUES, EXPLAIN (without ANALYZE),
    /// `SHOW datafusion.*`, `SHOW COLUMNS`.
    Query(DFStatement),
    /// Any other statement DataFusion plans: CREATE EXTERNAL TABLE, INSERT, `COPY … TO 'file'`, EXPLAIN ANALYZE, …
    Statement(DFStatement),
}

/// What a session statement does.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    Set {
        name: String,
        value: String,
    },
    Show(String),
    Reset(String),
    Begin,
    Commit,
    Rollback,
    /// `ROLLBACK TO SAVEPOINT`: the transaction goes on (and is usable again after an error).
    RollbackToSavepoint,
    /// `DISCARD ALL`: the connection's cursors, prepared statements and settings go.
    Discard,
    /// Accepted and answered with this tag, nothing else to do (SAVEPOINT, RELEASE, SET ROLE …).
    NoOp(&'static str),
}

/// `COPY (query) TO STDOUT` and how its rows are written.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyOut {
    pub query: Box<Query>,
    pub csv: bool,
    /// PostgreSQL's binary COPY format (psycopg 3's `copy.read_row()` with binary types, pg_dump-style loaders).
    pub binary: bool,
    pub header: bool,
    pub delimiter: Option<char>,
    pub null: Option<String>,
}

impl Command {
    /// The command's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Session(_) => "session",
            Command::Prepare { .. } => "prepare",
            Command::Execute(_) => "execute",
            Command::Deallocate(_) => "deallocate",
            Command::Declare { .. } => "declare",
            Command::Fetch { .. } => "fetch",
            Command::Close(_) => "close",
            Command::CopyOut(_) => "copy_out",
            Command::DropTables { .. } => "drop_tables",
            Command::DropMaterializedViews { .. } => "drop_materialized_views",
            Command::CreateMaterializedView(_) => "create_materialized_view",
            Command::ShowTables => "show_tables",
            Command::ShowMaterializedViews => "show_materialized_views",
            Command::Query(_) => "query",
            Command::Statement(_) => "statement",
        }
    }

    /// Classify a parsed statement. Fails for forms kfsql recognises but cannot run (a COPY TO STDOUT option it
    /// does not write, a DECLARE of something other than a cursor).
    pub fn classify(stmt: DFStatement) -> Result<Command> {
        if let Some(cmd) = session(&stmt) {
            return Ok(Command::Session(cmd));
        }
        let s = match stmt {
            DFStatement::Statement(s) => s,
            DFStatement::Explain(e) if !e.options.analyze => return Ok(Command::Query(DFStatement::Explain(e))),
            other => return Ok(Command::Statement(other)),
        };
        Ok(match *s {
            Statement::Prepare { ref statement, .. } => {
                let inner = Box::new(Command::classify(DFStatement::Statement(statement.clone()))?);
                Command::Prepare { statement: DFStatement::Statement(s), inner }
            }
            Statement::Execute { .. } => Command::Execute(DFStatement::Statement(s)),
            Statement::Deallocate { ref name, .. } => {
                let all = name.value.eq_ignore_ascii_case("all") && name.quote_style.is_none();
                Command::Deallocate((!all).then(|| name.value.clone()))
            }
            Statement::Declare { ref stmts } => {
                let declared = match stmts.as_slice() {
                    [d] => d.names.first().zip(d.for_query.as_ref()).map(|(n, q)| (n.value.clone(), d.hold, q.clone())),
                    _ => None,
                };
                let Some((name, hold, query)) = declared else {
                    return Err(KfsqlError::Unsupported("DECLARE other than a cursor for a query".into()));
                };
                Command::Declare { name, hold: hold.unwrap_or(false), query }
            }
            Statement::Fetch { name, direction, .. } => Command::Fetch { name: name.value, direction },
            Statement::Close { cursor } => Command::Close(cursor),
            Statement::Copy {
                source: CopySource::Query(query),
                to: true,
                target: CopyTarget::Stdout,
                options,
                legacy_options,
                ..
            } => Command::CopyOut(CopyOut::new(query, &options, &legacy_options).map_err(KfsqlError::Unsupported)?),
            Statement::Drop { object_type: ObjectType::Table, if_exists, ref names, .. } => {
                Command::DropTables { names: names.iter().map(|n| n.to_string()).collect(), if_exists }
            }
            Statement::Drop { object_type: ObjectType::MaterializedView, if_exists, ref names, .. } => {
                Command::DropMaterializedViews { names: names.iter().map(|n| n.to_string()).collect(), if_exists }
            }
            Statement::CreateView(view) if view.materialized => Command::CreateMaterializedView(Box::new(view)),
            Statement::ShowTables { .. } => Command::ShowTables,
            Statement::ShowViews { materialized: true, .. } => Command::ShowMaterializedViews,
            Statement::Query(_)
            | Statement::Explain { analyze: false, .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowColumns { .. } => Command::Query(DFStatement::Statement(s)),
            _ => Command::Statement(DFStatement::Statement(s)),
        })
    }

    /// Whether running it changes something (DDL, INSERT, COPY to a file, EXPLAIN ANALYZE of a write): the one
    /// rights check, made before a command runs or is prepared. Session statements and cursors only touch the
    /// connection's own state.
    pub fn writes(&self) -> bool {
        match self {
            Command::Prepare { inner, .. } => inner.writes(),
            Command::DropTables { .. }
            | Command::DropMaterializedViews { .. }
            | Command::CreateMaterializedView(_)
            | Command::Statement(_) => true,
            Command::Session(_)
            | Command::Execute(_)
            | Command::Deallocate(_)
            | Command::Declare { .. }
            | Command::Fetch { .. }
            | Command::Close(_)
            | Command::CopyOut(_)
            | Command::ShowTables
            | Command::ShowMaterializedViews
            | Command::Query(_) => false,
        }
    }

    /// The query whose rows the command returns and whose shape is known before it runs: planned once at an
    /// extended-protocol Parse (a query, an EXPLAIN, a cursor's query).
    pub fn query_to_plan(&self) -> Option<DFStatement> {
        match self {
            Command::Query(stmt) => match stmt {
                DFStatement::Statement(s) if matches!(s.as_ref(), Statement::Query(_)) => Some(stmt.clone()),
                DFStatement::Explain(_) => Some(stmt.clone()),
                _ => None,
            },
            Command::Statement(stmt @ DFStatement::Explain(_)) => Some(stmt.clone()),
            Command::Declare { query, .. } => Some(DFStatement::Statement(Box::new(Statement::Query(query.clone())))),
            _ => None,
        }
    }
}

impl CopyOut {
    fn new(
        query: Box<Query>,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> std::result::Result<Self, String> {
        let mut out = CopyOut { query, csv: false, binary: false, header: false, delimiter: None, null: None };
        for o in options {
            match o {
                CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                    "csv" => (out.csv, out.binary) = (true, false),
                    "text" => (out.csv, out.binary) = (false, false),
                    "binary" => (out.csv, out.binary) = (false, true),
                    other => {
                        return Err(format!("COPY TO STDOUT: format {other} is not supported (text, csv, binary)"));
                    }
                },
                CopyOption::Header(h) => out.header = *h,
                CopyOption::Delimiter(c) => out.delimiter = Some(*c),
                CopyOption::Null(s) => out.null = Some(s.clone()),
                other => return Err(format!("COPY TO STDOUT: option {other} is not supported")),
            }
        }
        for o in legacy {
            match o {
                CopyLegacyOption::Csv(_) => out.csv = true,
                CopyLegacyOption::Binary => out.binary = true,
                CopyLegacyOption::Delimiter(c) => out.delimiter = Some(*c),
                CopyLegacyOption::Null(s) => out.null = Some(s.clone()),
                other => return Err(format!("COPY TO STDOUT: option {other} is not supported")),
            }
        }
        if out.binary && (out.csv || out.header || out.delimiter.is_some() || out.null.is_some()) {
            return Err("COPY TO STDOUT: FORMAT binary takes no CSV, HEADER, DELIMITER or NULL options".into());
        }
        Ok(out)
    }
}

/// A session statement, if `stmt` is one. `SHOW datafusion.*` is left to the engine (it reads); `SET
/// datafusion.*` is a session statement that the session's check refuses.
fn session(stmt: &DFStatement) -> Option<SessionCommand> {
    let s = match stmt {
        DFStatement::Statement(s) => s,
        DFStatement::Reset(r) => {
            return Some(SessionCommand::Reset(normalize(r.to_string().trim_start_matches("RESET "))));
        }
        _ => return None,
    };
    match s.as_ref() {
        Statement::Set(Set::SingleAssignment { variable, values, .. }) => {
            let name = normalize(&variable.to_string());
            let value = values.iter().map(value_text).collect::<Vec<_>>().join(", ");
            Some(SessionCommand::Set { name, value })
        }
        Statement::Set(Set::SetTimeZone { value, .. }) => {
            Some(SessionCommand::Set { name: "timezone".into(), value: value_text(value) })
        }
        Statement::Set(Set::SetNames { charset_name, .. }) => {
            Some(SessionCommand::Set { name: "client_encoding".into(), value: charset_name.to_string() })
        }
        Statement::Set(Set::SetTransaction { .. })
        | Statement::Set(Set::SetSessionParam(_))
        | Statement::Set(Set::SetRole { .. }) => Some(SessionCommand::NoOp("SET")),
        Statement::ShowVariable { variable } => {
            // `SHOW datafusion.execution.batch_size` arrives as the words datafusion, execution, batch_size
            if variable.first().is_some_and(|i| i.value.eq_ignore_ascii_case("datafusion")) {
                return None;
            }
            let name = normalize(&variable.iter().map(|i| i.value.clone()).collect::<Vec<_>>().join(" "));
            Some(SessionCommand::Show(name))
        }
        Statement::StartTransaction { .. } => Some(SessionCommand::Begin),
        Statement::Commit { .. } => Some(SessionCommand::Commit),
        Statement::Rollback { savepoint: Some(_), .. } => Some(SessionCommand::RollbackToSavepoint),
        Statement::Rollback { .. } => Some(SessionCommand::Rollback),
        // psycopg 3 wraps statements in savepoints inside transactions; nothing kfsql does needs undoing
        Statement::Savepoint { .. } => Some(SessionCommand::NoOp("SAVEPOINT")),
        Statement::ReleaseSavepoint { .. } => Some(SessionCommand::NoOp("RELEASE")),
        Statement::Discard { .. } => Some(SessionCommand::Discard),
        _ => None,
    }
}

fn normalize(name: &str) -> String {
    let n = name.trim().trim_matches('"').to_ascii_lowercase();
    match n.as_str() {
        "transaction isolation level" => "transaction_isolation".into(),
        "time zone" => "timezone".into(),
        _ => n,
    }
}

fn value_text(e: &Expr) -> String {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsed as the engine does: kfsql's dialect, else plain PostgreSQL (`COPY (query) TO STDOUT`).
    fn parse(sql: &str) -> DFStatement {
        use datafusion::sql::sqlparser::{dialect::PostgreSqlDialect, parser::Parser};
        match crate::sql::parse(sql) {
            Ok(mut stmts) => stmts.pop_front().expect("one statement"),
            Err(_) => DFStatement::Statement(Box::new(
                Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parses").remove(0),
            )),
        }
    }

    fn cmd(sql: &str) -> Command {
        Command::classify(parse(sql)).expect("classifies")
    }

    fn session_cmd(sql: &str) -> Option<SessionCommand> {
        match cmd(sql) {
            Command::Session(s) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn recognises_client_session_statements() {
        assert_eq!(
            session_cmd("SET extra_float_digits = 3"),
            Some(SessionCommand::Set { name: "extra_float_digits".into(), value: "3".into() })
        );
        assert_eq!(
            session_cmd("SET application_name = 'PostgreSQL JDBC Driver'"),
            Some(SessionCommand::Set { name: "application_name".into(), value: "PostgreSQL JDBC Driver".into() })
        );
        assert_eq!(
            session_cmd("SHOW transaction isolation level"),
            Some(SessionCommand::Show("transaction_isolation".into()))
        );
        assert_eq!(
            session_cmd("show standard_conforming_strings"),
            Some(SessionCommand::Show("standard_conforming_strings".into()))
        );
        assert_eq!(session_cmd("BEGIN"), Some(SessionCommand::Begin));
        assert_eq!(session_cmd("COMMIT"), Some(SessionCommand::Commit));
        assert_eq!(session_cmd("ROLLBACK"), Some(SessionCommand::Rollback));
        assert_eq!(session_cmd("DISCARD ALL"), Some(SessionCommand::Discard));
        assert_eq!(
            session_cmd("SET datafusion.execution.batch_size = 100"),
            Some(SessionCommand::Set { name: "datafusion.execution.batch_size".into(), value: "100".into() })
        );
        assert_eq!(session_cmd("SELECT 1"), None);
        assert_eq!(session_cmd("SHOW datafusion.execution.batch_size"), None);
    }

    #[test]
    fn the_rights_check_knows_what_writes() {
        for read in [
            "SELECT 1",
            "EXPLAIN SELECT 1",
            "EXPLAIN INSERT INTO t VALUES (1)",
            "SHOW TABLES",
            "SHOW MATERIALIZED VIEWS",
            "SHOW datafusion.execution.batch_size",
            "COPY (SELECT 1) TO STDOUT",
            "DECLARE c CURSOR FOR SELECT 1",
            "FETCH 10 FROM c",
            "CLOSE c",
            "SET statement_timeout = 100",
            "PREPARE p AS SELECT $1",
            "EXECUTE p(1)",
            "DEALLOCATE p",
        ] {
            assert!(!cmd(read).writes(), "{read} only reads");
        }
        for write in [
            "INSERT INTO t VALUES (1)",
            "CREATE EXTERNAL TABLE t (a INT) STORED AS KAFKA LOCATION 't'",
            "DROP TABLE t",
            "DROP MATERIALIZED VIEW v",
            "CREATE MATERIALIZED VIEW v AS SELECT 1",
            "COPY t TO '/tmp/x.csv'",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "PREPARE p AS INSERT INTO t VALUES ($1)",
            "CREATE SCHEMA s",
        ] {
            assert!(cmd(write).writes(), "{write} writes");
        }
    }

    #[test]
    fn cursors_copy_and_prepared_statements_are_read_once() {
        match cmd("DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1") {
            Command::Declare { name, hold, query } => {
                assert_eq!((name.as_str(), hold, query.to_string().as_str()), ("c", true, "SELECT 1"))
            }
            other => panic!("{other:?}"),
        }
        match cmd("COPY (SELECT 1) TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';')") {
            Command::CopyOut(c) => assert_eq!((c.csv, c.header, c.delimiter), (true, true, Some(';'))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(cmd("DEALLOCATE ALL"), Command::Deallocate(None)));
        assert!(matches!(cmd("DEALLOCATE \"all\""), Command::Deallocate(Some(n)) if n == "all"));
        let err = Command::classify(parse("COPY (SELECT 1) TO STDOUT WITH (FORMAT parquet)"));
        assert_eq!(err.map_err(|e| e.sqlstate()).err(), Some("0A000"));
        assert!(matches!(cmd("COPY (SELECT 1) TO STDOUT (FORMAT binary)"), Command::CopyOut(c) if c.binary && !c.csv));
        assert!(matches!(cmd("COPY (SELECT 1) TO STDOUT BINARY"), Command::CopyOut(c) if c.binary));
        let err = Command::classify(parse("COPY (SELECT 1) TO STDOUT (FORMAT binary, HEADER)"));
        assert_eq!(err.map_err(|e| e.sqlstate()).err(), Some("0A000"));
        assert!(cmd("SELECT 1").query_to_plan().is_some());
        assert!(cmd("DECLARE c CURSOR FOR SELECT 1").query_to_plan().is_some());
        assert!(cmd("INSERT INTO t VALUES (1)").query_to_plan().is_none());
    }
}
