//! `COPY (query) TO STDOUT [WITH (FORMAT text | csv | binary, HEADER, DELIMITER 'c', NULL 's')]`: the query's rows
//! streamed to the client as CopyData in PostgreSQL's text, CSV or binary format (psycopg's `cursor.copy()`, psql's
//! `\copy … to`, pandas / dbt bulk reads). `COPY … TO 'file'` is DataFusion's and writes on the server instead.

use std::sync::Arc;

use arrow_pg::datatypes::arrow_schema_to_pg_fields;
use arrow_pg::encoder::encode_value;
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use futures::{StreamExt, stream};
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions, Response};
use pgwire::error::PgWireResult;
use pgwire::messages::copy::CopyData;

use super::error;
use crate::sql::command::CopyOut;

/// The rows of `copy`'s query as a CopyOut response, written as it says.
pub fn response(copy: &CopyOut, rows: SendableRecordBatchStream) -> PgWireResult<Response> {
    let schema = rows.schema();
    let format = if copy.binary { Format::UnifiedBinary } else { Format::UnifiedText };
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &format, None).map_err(super::error::encoding_error)?);
    let columns = fields.len();
    let delimiter = |default| copy.delimiter.map(|d| d.to_string().into()).unwrap_or(default);
    let null = |default| copy.null.as_deref().map(Into::into).unwrap_or(default);
    let mut encoder = if copy.binary {
        CopyEncoder::new_binary(fields.clone())
    } else if copy.csv {
        let d = CopyCsvOptions::default();
        let o =
            CopyCsvOptions { delimiter: delimiter(d.delimiter.clone()), null_string: null(d.null_string.clone()), ..d };
        CopyEncoder::new_csv(fields.clone(), o)
    } else {
        let d = CopyTextOptions::default();
        CopyEncoder::new_text(
            fields.clone(),
            CopyTextOptions { delimiter: delimiter(d.delimiter), null_string: null(d.null_string) },
        )
    };
    let header = (copy.csv && copy.header).then(|| {
        let d = copy.delimiter.unwrap_or(',').to_string();
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
    if !copy.binary {
        let data = stream::iter(header).chain(data);
        return Ok(Response::CopyOut(CopyResponse::new(0, columns, data)));
    }
    // binary: the signature and header go in the first row's message (the encoder writes them), or, with no rows,
    // in one message with the trailer: clients parse the header together with what follows it, as PostgreSQL sends it
    let rows_sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = rows_sent.clone();
    let end = stream::once(async move {
        let trailer = if rows_sent.load(std::sync::atomic::Ordering::Relaxed) {
            Bytes::from_static(&[0xFF, 0xFF])
        } else {
            Bytes::from_iter(BINARY_HEADER.iter().chain(&[0xFF, 0xFF]).copied())
        };
        Ok(CopyData::new(trailer))
    });
    let data = data.inspect(move |_| seen.store(true, std::sync::atomic::Ordering::Relaxed)).chain(end);
    // built as text and marked binary: pgwire's binary constructor would add a trailer of its own
    let mut response = CopyResponse::new(0, columns, data);
    response.format = 1;
    Ok(Response::CopyOut(response))
}

/// PostgreSQL's binary COPY signature, flags (none) and header extension length (0).
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}
