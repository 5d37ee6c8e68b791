//! kfsql errors → Postgres ErrorResponses with a SQLSTATE.

use datafusion::error::DataFusionError;
use pgwire::error::{ErrorInfo, PgWireError};

use crate::error::KfsqlError;

pub fn to_pg(e: KfsqlError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), e.sqlstate().into(), e.to_string())))
}

pub fn df_to_pg(e: DataFusionError) -> PgWireError {
    to_pg(KfsqlError::from_datafusion(e))
}
