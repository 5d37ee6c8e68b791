//! `COPY (query) TO STDOUT [WITH (FORMAT text | csv, HEADER, DELIMITER 'c', NULL 's')]`: the query's rows streamed to
//! the client as CopyData in PostgreSQL's text or CSV format (psycopg's `cursor.copy()`, psql's `\copy … to`,
//! pandas / dbt bulk reads). `COPY … TO 'file'` is DataFusion's and writes on the server instead.

use std::sync::Arc;

use arrow_pg::datatypes::arrow_schema_to_pg_fields;
use arrow_pg::encoder::encode_value;
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::{CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement};
use futures::{StreamExt, stream};
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions, Response};
use pgwire::error::PgWireResult;
use pgwire::messages::copy::CopyData;

use super::error;

/// How the rows are written.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyOut {
    pub query: Box<datafusion::sql::sqlparser::ast::Query>,
    csv: bool,
    header: bool,
    delimiter: Option<char>,
    null: Option<String>,
}

impl CopyOut {
    /// `COPY (query) TO STDOUT …`, if `stmt` is one.
    pub fn recognise(stmt: &Statement) -> Option<Result<CopyOut, String>> {
        let Statement::Copy {
            source: CopySource::Query(query),
            to: true,
            target: CopyTarget::Stdout,
            options,
            legacy_options,
            ..
        } = stmt
        else {
            return None;
        };
        let mut out = CopyOut { query: query.clone(), csv: false, header: false, delimiter: None, null: None };
        for o in options {
            match o {
                CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                    "csv" => out.csv = true,
                    "text" => out.csv = false,
                    other => return Some(Err(format!("COPY TO STDOUT: format {other} is not supported (text, csv)"))),
                },
                CopyOption::Header(h) => out.header = *h,
                CopyOption::Delimiter(c) => out.delimiter = Some(*c),
                CopyOption::Null(s) => out.null = Some(s.clone()),
                other => return Some(Err(format!("COPY TO STDOUT: option {other} is not supported"))),
            }
        }
        for o in legacy_options {
            match o {
                CopyLegacyOption::Csv(_) => out.csv = true,
                CopyLegacyOption::Delimiter(c) => out.delimiter = Some(*c),
                CopyLegacyOption::Null(s) => out.null = Some(s.clone()),
                other => return Some(Err(format!("COPY TO STDOUT: option {other} is not supported"))),
            }
        }
        Some(Ok(out))
    }

    /// The rows as a CopyOut response.
    pub fn response(&self, rows: SendableRecordBatchStream) -> PgWireResult<Response> {
        let schema = rows.schema();
        let fields = Arc::new(
            arrow_schema_to_pg_fields(&schema, &Format::UnifiedText, None).map_err(super::error::encoding_error)?,
        );
        let columns = fields.len();
        let delimiter = |default| self.delimiter.map(|d| d.to_string().into()).unwrap_or(default);
        let null = |default| self.null.as_deref().map(Into::into).unwrap_or(default);
        let mut encoder = if self.csv {
            let d = CopyCsvOptions::default();
            let o = CopyCsvOptions {
                delimiter: delimiter(d.delimiter.clone()),
                null_string: null(d.null_string.clone()),
                ..d
            };
            CopyEncoder::new_csv(fields.clone(), o)
        } else {
            let d = CopyTextOptions::default();
            CopyEncoder::new_text(
                fields.clone(),
                CopyTextOptions { delimiter: delimiter(d.delimiter), null_string: null(d.null_string) },
            )
        };
        let header = (self.csv && self.header).then(|| {
            let d = self.delimiter.unwrap_or(',').to_string();
            let names: Vec<String> = schema.fields().iter().map(|f| csv_quote(f.name())).collect();
            Ok(CopyData::new(Bytes::from(format!("{}\n", names.join(&d)))))
        });
        let data = rows
            .map(move |batch| -> Vec<PgWireResult<CopyData>> {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => return vec![Err(error::df_to_pg(e))],
                };
                let schema = batch.schema();
                let mut out = Vec::with_capacity(batch.num_rows());
                for row in 0..batch.num_rows() {
                    for (i, col) in batch.columns().iter().enumerate() {
                        if let Err(e) = encode_value(&mut encoder, col, row, schema.field(i), &fields[i]) {
                            return vec![Err(e)];
                        }
                    }
                    out.push(Ok(encoder.take_copy()));
                }
                out
            })
            .flat_map(stream::iter);
        let data = stream::iter(header).chain(data);
        Ok(Response::CopyOut(CopyResponse::new(0, columns, data)))
    }
}

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}
