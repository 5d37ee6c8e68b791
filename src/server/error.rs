//! kfsql errors → Postgres ErrorResponses with a SQLSTATE.

use datafusion::error::DataFusionError;
use pgwire::error::{ErrorInfo, PgWireError};

use crate::error::KfsqlError;

pub fn to_pg(e: KfsqlError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), e.sqlstate().into(), e.to_string())))
}

/// arrow-pg answers a column type it cannot encode (nested lists past PostgreSQL's array shapes …) with XX000:
/// that is the client's query asking for an unsupported type, 0A000.
pub fn encoding_error(e: PgWireError) -> PgWireError {
    match e {
        PgWireError::UserError(info) if info.code == "XX000" && info.message.starts_with("Unsupported") => {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "0A000".into(),
                format!("not supported: {} (as a PostgreSQL result column)", info.message),
            )))
        }
        other => other,
    }
}

pub fn df_to_pg(e: DataFusionError) -> PgWireError {
    to_pg(KfsqlError::from_datafusion(e))
}
