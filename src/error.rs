//! The one error type of kfsql, and the SQLSTATE each kind of failure maps to on the wire.

use datafusion::error::DataFusionError;

/// A user-visible failure. Every variant knows its Postgres SQLSTATE so that clients can react to it.
#[derive(Debug, thiserror::Error)]
pub enum KfsqlError {
    /// SQL that does not parse (42601).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A table, schema or column that does not exist (42P01 / 42703).
    #[error("{0}")]
    UndefinedTable(String),
    #[error("{0}")]
    UndefinedColumn(String),
    /// CREATE of something that exists already (42P07).
    #[error("{0}")]
    DuplicateTable(String),
    /// A statement or option kfsql understands but does not support (0A000).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A bad option value or definition (22023 / 42P16).
    #[error("{0}")]
    InvalidParameter(String),
    /// The query ran past its time limit (57014).
    #[error("canceling statement due to statement timeout ({0:?})")]
    Timeout(std::time::Duration),
    /// Kafka could not be reached or answered an error (08006: the connection to the data source failed).
    #[error("kafka: {0}")]
    Kafka(String),
    /// A message that could not be decoded under `bad_messages = 'fail'` (22P02).
    #[error("{0}")]
    BadMessage(String),
    /// A NULL for a NOT NULL column (23502).
    #[error("{0}")]
    NotNullViolation(String),
    /// An object that is not ready yet, e.g. a latest view still loading (55000).
    #[error("{0}")]
    NotReady(String),
    /// Messages a query was reading were removed from Kafka under it (retention, DeleteRecords): PostgreSQL's
    /// "snapshot too old" (72000), since a bounded read's snapshot is its offset ranges.
    #[error("{0}")]
    HistoryGone(String),
    /// An object other objects depend on, e.g. a system schema (2BP01).
    #[error("{0}")]
    DependentObjects(String),
    /// The client is not allowed to do this (42501).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// FETCH or CLOSE of a cursor the connection has not declared (34000).
    #[error("cursor \"{0}\" does not exist")]
    UnknownCursor(String),
    /// A per-connection or per-statement limit reached: open cursors, a result too large to build (54000).
    #[error("{0}")]
    LimitExceeded(String),
    /// A statement too deeply nested to parse safely (54001, PostgreSQL's "stack depth limit exceeded").
    #[error("{0}")]
    TooComplex(String),
    /// EXECUTE or DEALLOCATE of a statement the connection has not prepared (26000).
    #[error("{0}")]
    UnknownPrepared(String),
    /// PREPARE of a name the connection already uses (42P05).
    #[error("{0}")]
    DuplicatePrepared(String),
    /// DECLARE of a cursor name the connection already uses (42P03).
    #[error("cursor \"{0}\" already exists")]
    DuplicateCursor(String),
    /// Anything the query engine raised (shown without DataFusion's "Error during planning:"-style prefixes).
    #[error("{}", df_message(.0))]
    DataFusion(#[from] DataFusionError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = KfsqlError> = std::result::Result<T, E>;

impl KfsqlError {
    /// The SQLSTATE a Postgres client understands for this failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            KfsqlError::Syntax(_) => "42601",
            KfsqlError::UnknownCursor(_) => "34000",
            KfsqlError::DuplicateCursor(_) => "42P03",
            KfsqlError::LimitExceeded(_) => "54000",
            KfsqlError::UnknownPrepared(_) => "26000",
            KfsqlError::DuplicatePrepared(_) => "42P05",
            KfsqlError::TooComplex(_) => "54001",
            KfsqlError::UndefinedTable(_) => "42P01",
            KfsqlError::UndefinedColumn(_) => "42703",
            KfsqlError::DuplicateTable(_) => "42P07",
            KfsqlError::Unsupported(_) => "0A000",
            KfsqlError::InvalidParameter(_) => "22023",
            KfsqlError::Timeout(_) => "57014",
            KfsqlError::Kafka(_) => "08006",
            KfsqlError::BadMessage(_) => "22P02",
            KfsqlError::PermissionDenied(_) => "42501",
            KfsqlError::DependentObjects(_) => "2BP01",
            KfsqlError::NotReady(_) => "55000",
            KfsqlError::HistoryGone(_) => "72000",
            KfsqlError::NotNullViolation(_) => "23502",
            KfsqlError::DataFusion(e) => datafusion_sqlstate(e),
            KfsqlError::Internal(_) => "XX000",
        }
    }

    /// Unwrap errors that travelled through DataFusion (e.g. raised inside a scan) back to kfsql's own kind.
    pub fn from_datafusion(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::External(inner) => {
                if let Some(k) = inner.downcast_ref::<KfsqlError>() {
                    return k.clone_shallow();
                }
                KfsqlError::DataFusion(e)
            }
            DataFusionError::Plan(msg) => match missing_table_name(msg) {
                Some(name) => KfsqlError::UndefinedTable(format!("relation \"{name}\" does not exist")),
                None => KfsqlError::DataFusion(e),
            },
            _ => KfsqlError::DataFusion(e),
        }
    }

    fn clone_shallow(&self) -> Self {
        let msg = self.to_string();
        match self {
            KfsqlError::Kafka(m) => KfsqlError::Kafka(m.clone()),
            KfsqlError::BadMessage(m) => KfsqlError::BadMessage(m.clone()),
            KfsqlError::Timeout(d) => KfsqlError::Timeout(*d),
            KfsqlError::InvalidParameter(m) => KfsqlError::InvalidParameter(m.clone()),
            KfsqlError::UndefinedTable(m) => KfsqlError::UndefinedTable(m.clone()),
            KfsqlError::Unsupported(m) => KfsqlError::Unsupported(m.clone()),
            KfsqlError::NotReady(m) => KfsqlError::NotReady(m.clone()),
            KfsqlError::NotNullViolation(m) => KfsqlError::NotNullViolation(m.clone()),
            KfsqlError::HistoryGone(m) => KfsqlError::HistoryGone(m.clone()),
            KfsqlError::Syntax(m) => KfsqlError::Syntax(m.clone()),
            KfsqlError::UndefinedColumn(m) => KfsqlError::UndefinedColumn(m.clone()),
            KfsqlError::DuplicateTable(m) => KfsqlError::DuplicateTable(m.clone()),
            KfsqlError::PermissionDenied(m) => KfsqlError::PermissionDenied(m.clone()),
            KfsqlError::DependentObjects(m) => KfsqlError::DependentObjects(m.clone()),
            KfsqlError::UnknownCursor(m) => KfsqlError::UnknownCursor(m.clone()),
            KfsqlError::DuplicateCursor(m) => KfsqlError::DuplicateCursor(m.clone()),
            KfsqlError::LimitExceeded(m) => KfsqlError::LimitExceeded(m.clone()),
            KfsqlError::UnknownPrepared(m) => KfsqlError::UnknownPrepared(m.clone()),
            KfsqlError::DuplicatePrepared(m) => KfsqlError::DuplicatePrepared(m.clone()),
            KfsqlError::TooComplex(m) => KfsqlError::TooComplex(m.clone()),
            // every variant is listed, so a new one cannot lose its SQLSTATE here unnoticed
            KfsqlError::Internal(m) => KfsqlError::Internal(m.clone()),
            KfsqlError::DataFusion(_) => KfsqlError::Internal(msg),
        }
    }

    /// A panic in the server's code, answered to the statement it happened in (XX000); the panic itself is in the
    /// server's log and counted in `kfsql_panics_total`.
    pub fn panicked() -> Self {
        KfsqlError::Internal("the statement failed inside the server (a bug: see the server's log)".into())
    }

    /// Wrap into a DataFusionError so it can cross DataFusion APIs and be recovered by [`Self::from_datafusion`].
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

fn df_message(e: &DataFusionError) -> String {
    match e.find_root() {
        DataFusionError::Plan(m) | DataFusionError::Execution(m) => m.clone(),
        DataFusionError::NotImplemented(m) => format!("not supported: {m}"),
        DataFusionError::SchemaError(inner, _) => inner.to_string(),
        // a kernel's failure in PostgreSQL's words where it has them, else arrow's, without "Arrow error:"
        DataFusionError::ArrowError(inner, _) => match inner.as_ref() {
            datafusion::arrow::error::ArrowError::ArithmeticOverflow(m) => m.clone(),
            datafusion::arrow::error::ArrowError::DivideByZero => "division by zero".into(),
            other => other.to_string(),
        },
        root => root.to_string(),
    }
}

fn datafusion_sqlstate(e: &DataFusionError) -> &'static str {
    let root = e.find_root();
    let text = root.to_string();
    if text.contains("has null but schema specifies non-nullable") || text.contains("non-nullable but contains null") {
        return "23502"; // DataFusion's and Arrow's checks of rows written into a table
    }
    match root {
        DataFusionError::SQL(_, _) => "42601",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::Plan(_) | DataFusionError::SchemaError(_, _) if is_missing_table(&text) => "42P01",
        DataFusionError::SchemaError(_, _) => "42703",
        DataFusionError::Plan(m) if m.contains("Placeholder") || m.contains("placeholder") => "42P02",
        DataFusionError::Plan(_) => "42000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::ArrowError(inner, _) => arrow_sqlstate(inner),
        DataFusionError::Execution(m) => execution_sqlstate(m),
        _ => "XX000",
    }
}

/// A compute kernel's failure: the data exception (class 22) PostgreSQL raises for the same input.
fn arrow_sqlstate(e: &datafusion::arrow::error::ArrowError) -> &'static str {
    use datafusion::arrow::error::ArrowError;
    match e {
        ArrowError::DivideByZero => "22012",
        ArrowError::ArithmeticOverflow(_) => "22003",
        ArrowError::InvalidArgumentError(_) => "22023",
        ArrowError::ParseError(_) => "22P02",
        ArrowError::CastError(m) if m.contains("overflow") || m.contains("out of range") => "22003",
        ArrowError::CastError(_) => "22P02",
        _ => "22000",
    }
}

/// An error raised while a statement ran. Those are caused by the statement or its data (a function's argument out
/// of range, a prepared statement that does not exist), so the default is a data exception (22000), refined where
/// PostgreSQL has a code of its own.
fn execution_sqlstate(m: &str) -> &'static str {
    let lower = m.to_ascii_lowercase();
    if lower.contains("placeholder") {
        "42P02" // a parameter $n without a value
    } else if lower.contains("prepared statement") && lower.contains("does not exist") {
        "26000"
    } else if lower.contains("prepared statement") && lower.contains("already exists") {
        "42P05"
    } else if lower.contains("divide by zero") || lower.contains("division by zero") {
        "22012"
    } else if lower.contains("overflow") {
        "22003"
    } else if lower.contains("out of range")
        && ["year", "month", "day", "date", "time", "hour", "minute", "second"].iter().any(|w| lower.contains(w))
    {
        "22008"
    } else if lower.contains("out of range") {
        "22003"
    } else {
        "22000"
    }
}

/// The table name in DataFusion's "table 'catalog.schema.name' not found".
fn missing_table_name(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("table '")?;
    let qualified = rest.strip_suffix("' not found")?;
    qualified.rsplit('.').next()
}

fn is_missing_table(msg: &str) -> bool {
    msg.contains("table") && (msg.contains("not found") || msg.contains("does not exist"))
}
