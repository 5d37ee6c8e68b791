//! `INSERT INTO <kafka table>`: rows become JSON messages keyed by the table's key (its value as text, placed by the
//! producer's murmur2 partitioner like Java clients, so key pushdown finds them), sent through the idempotent,
//! `acks=all` producer. Every row is checked before the first message is sent: a NOT NULL column without a value
//! or a row that cannot be encoded fails the statement with nothing written. The statement returns once every
//! message is acknowledged, with the count.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::sink::DataSink;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::error::KfsqlError;
use crate::kafka::{await_deliveries, send_with_retry};

/// Writes rows to a Kafka table's topic.
pub struct KafkaSink {
    pub table: String,
    pub topic: String,
    /// The table's full schema (payload columns, then metadata columns, which Kafka assigns).
    pub schema: SchemaRef,
    pub payload_columns: usize,
    /// Payload columns declared NOT NULL.
    pub not_null: Vec<usize>,
    pub key_index: Option<usize>,
    pub producer: FutureProducer,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("KafkaSink").field("table", &self.table).field("topic", &self.topic).finish()
    }
}

impl DisplayAs for KafkaSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "KafkaSink: topic={}", self.topic)
    }
}

impl KafkaSink {
    /// JSON payload and key of every row of `batch`, or the first reason a row cannot be written.
    fn encode(&self, batch: &RecordBatch, first_row: usize) -> Result<Vec<(Option<String>, Vec<u8>)>, KfsqlError> {
        for &c in &self.not_null {
            let col = batch.column(c);
            if col.null_count() > 0 {
                let row = (0..col.len()).find(|&i| col.is_null(i)).unwrap_or(0);
                return Err(KfsqlError::NotNullViolation(format!(
                    "null value in column \"{}\" of relation \"{}\" violates not-null constraint (row {}); nothing was written",
                    self.schema.field(c).name(),
                    self.table,
                    first_row + row + 1
                )));
            }
        }
        let payload = batch
            .project(&(0..self.payload_columns).collect::<Vec<_>>())
            .map_err(|e| KfsqlError::Internal(e.to_string()))?;
        let mut lines = Vec::new();
        {
            let mut w = arrow_json::LineDelimitedWriter::new(&mut lines);
            w.write(&payload).map_err(|e| {
                KfsqlError::InvalidParameter(format!("cannot encode rows of {} as JSON: {e}", self.table))
            })?;
            w.finish().map_err(|e| KfsqlError::Internal(e.to_string()))?;
        }
        let keys = match self.key_index {
            Some(k) => Some(cast(batch.column(k), &DataType::Utf8).map_err(|e| KfsqlError::Internal(e.to_string()))?),
            None => None,
        };
        let keys = keys.as_ref().map(|k| k.as_string::<i32>());
        let rows: Vec<&[u8]> = lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        if rows.len() != batch.num_rows() {
            return Err(KfsqlError::Internal(format!("{} rows encoded to {} messages", batch.num_rows(), rows.len())));
        }
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, json)| {
                let key = keys.and_then(|k| (!k.is_null(i)).then(|| k.value(i).to_string()));
                (key, json.to_vec())
            })
            .collect())
    }
}

#[async_trait]
impl DataSink for KafkaSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(&self, mut data: SendableRecordBatchStream, _context: &Arc<TaskContext>) -> DfResult<u64> {
        // everything is read and checked before anything is sent
        let mut messages = Vec::new();
        while let Some(batch) = data.next().await {
            let batch = batch?;
            let encoded = self.encode(&batch, messages.len()).map_err(KfsqlError::into_datafusion)?;
            messages.extend(encoded);
        }
        let mut acks = Vec::with_capacity(messages.len());
        for (key, payload) in &messages {
            let mut record: FutureRecord<'_, String, Vec<u8>> = FutureRecord::to(&self.topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            let ack = send_with_retry(&self.producer, record)
                .await
                .map_err(|e| KfsqlError::Kafka(format!("producing to {}: {e}", self.topic)).into_datafusion())?;
            acks.push(ack);
        }
        await_deliveries(&self.topic, acks).await.map_err(KfsqlError::into_datafusion)?;
        Ok(messages.len() as u64)
    }
}
