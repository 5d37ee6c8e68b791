//! kfsql's `pg_catalog` schema: datafusion-pg-catalog's tables (built from the engine's catalogs for `pg_class`,
//! `pg_attribute`, `pg_namespace`, …, and from a PostgreSQL 15 export for the rest), with the column types PostgreSQL
//! has where clients depend on them:
//! - `int2vector` / `oidvector` and array columns (`pg_index.indkey`, `pg_constraint.conkey`, `pg_proc.proargtypes`,
//!   …) are stored by the crate as text (`"1 2"`, `"[2276]"`); here they are arrays of smallint / oid / text, so
//!   `unnest(indkey)`, `conkey[pos.n]` and `_pg_expandarray(indkey)` work as in PostgreSQL;
//! - `pg_settings` lists the settings kfsql reports (the crate's has one row);
//! - columns the crate leaves out (`pg_class.reloptions`, `pg_class.relacl`) exist, with PostgreSQL's types.
//!
//! Every other table and every column is the crate's, unchanged. Tables exported from PostgreSQL are converted once;
//! tables built from the engine's catalogs are converted each time a query reads them (they hold tens of rows).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int16Builder, Int32Builder, ListBuilder, RecordBatch, StringBuilder, new_null_array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

/// The element type of a converted array column.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Element {
    Int2,
    Oid,
    Text,
}

impl Element {
    fn data_type(self) -> DataType {
        match self {
            Element::Int2 => DataType::Int16,
            Element::Oid => DataType::Int32,
            Element::Text => DataType::Utf8,
        }
    }
}

/// What changes in one table: columns whose text becomes an array, and columns added (always NULL) with their type.
#[derive(Debug)]
struct Fix {
    arrays: &'static [(&'static str, Element)],
    added: &'static [(&'static str, Element)],
    /// Built from the engine's catalogs, so converted at every planning rather than once.
    dynamic: bool,
}

fn fix_for(table: &str) -> Option<Fix> {
    use Element::*;
    Some(match table {
        "pg_index" => Fix {
            arrays: &[("indkey", Int2), ("indcollation", Oid), ("indclass", Oid), ("indoption", Int2)],
            added: &[],
            dynamic: false,
        },
        "pg_constraint" => Fix {
            arrays: &[
                ("conkey", Int2),
                ("confkey", Int2),
                ("conpfeqop", Oid),
                ("conppeqop", Oid),
                ("conffeqop", Oid),
                ("conexclop", Oid),
                ("confdelsetcols", Int2),
            ],
            added: &[],
            dynamic: false,
        },
        "pg_proc" => Fix {
            arrays: &[
                ("proargtypes", Oid),
                ("proallargtypes", Oid),
                ("proargmodes", Text),
                ("proargnames", Text),
                ("proconfig", Text),
                ("proacl", Text),
            ],
            added: &[],
            dynamic: false,
        },
        "pg_statistic_ext" => Fix { arrays: &[("stxkind", Text), ("stxkeys", Int2)], added: &[], dynamic: false },
        "pg_type" => Fix { arrays: &[("typacl", Text)], added: &[], dynamic: false },
        "pg_namespace" => Fix { arrays: &[("nspacl", Text)], added: &[], dynamic: true },
        "pg_database" => Fix { arrays: &[("datacl", Text)], added: &[], dynamic: true },
        "pg_publication_rel" => Fix { arrays: &[("prattrs", Int2)], added: &[], dynamic: false },
        "pg_policy" => Fix { arrays: &[("polroles", Oid)], added: &[], dynamic: false },
        "pg_class" => Fix { arrays: &[], added: &[("relacl", Text), ("reloptions", Text)], dynamic: true },
        "pg_attribute" => Fix {
            arrays: &[("attacl", Text), ("attoptions", Text), ("attfdwoptions", Text)],
            added: &[],
            dynamic: true,
        },
        _ => return None,
    })
}

/// The `pg_catalog` schema provider wrapping datafusion-pg-catalog's.
#[derive(Debug)]
pub struct PgCatalog {
    inner: Arc<dyn SchemaProvider>,
    converted: Mutex<HashMap<String, Arc<dyn TableProvider>>>,
}

impl PgCatalog {
    pub fn new(inner: Arc<dyn SchemaProvider>) -> Self {
        Self { inner, converted: Mutex::new(HashMap::new()) }
    }
}

/// A context used only to read the crate's in-memory tables.
static READER: LazyLock<SessionContext> = LazyLock::new(SessionContext::new);

/// Catalog relations for objects kfsql does not have; [`PgCatalog::empty_relations`] checks that they hold no rows.
const NEVER_POPULATED: &[&str] = &[
    "pg_publication",
    "pg_publication_rel",
    "pg_publication_namespace",
    "pg_policy",
    "pg_trigger",
    "pg_statistic_ext",
    "pg_inherits",
    "pg_sequence",
    "pg_foreign_table",
    "pg_partitioned_table",
];

impl PgCatalog {
    /// The catalog relations that hold no rows (of those describing objects kfsql does not have), read once.
    pub async fn empty_relations(&self) -> std::collections::HashSet<String> {
        let mut empty = std::collections::HashSet::new();
        for name in NEVER_POPULATED {
            let Ok(Some(table)) = self.table(name).await else { continue };
            let Ok(plan) = table.scan(&READER.state(), None, &[], None).await else { continue };
            if let Ok(batches) = datafusion::physical_plan::collect(plan, READER.task_ctx()).await
                && batches.iter().all(|b| b.num_rows() == 0)
            {
                empty.insert(name.to_string());
            }
        }
        empty
    }
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name == "pg_settings"
            && let Some(crate_settings) = self.inner.table(name).await?
        {
            return Ok(Some(settings(crate_settings.schema())?));
        }
        let Some(fix) = fix_for(name) else { return self.inner.table(name).await };
        if let Some(done) = self.converted.lock().map_err(|_| poisoned())?.get(name) {
            return Ok(Some(done.clone()));
        }
        let Some(table) = self.inner.table(name).await? else { return Ok(None) };
        let converted: Arc<dyn TableProvider> = Arc::new(Converted {
            schema: converted_schema(&table.schema(), &fix),
            inner: table,
            fix,
            rows: tokio::sync::OnceCell::new(),
        });
        self.converted.lock().map_err(|_| poisoned())?.insert(name.to_string(), converted.clone());
        Ok(Some(converted))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// `pg_settings` (the crate's columns): one row per setting kfsql reports, see [`super::pg_functions::SETTINGS`].
fn settings(schema: SchemaRef) -> Result<Arc<dyn TableProvider>> {
    let all = super::pg_functions::SETTINGS;
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "name" => {
                    Arc::new(datafusion::arrow::array::StringArray::from_iter_values(all.iter().map(|(n, _)| *n)))
                }
                "setting" | "reset_val" => {
                    Arc::new(datafusion::arrow::array::StringArray::from_iter_values(all.iter().map(|(_, v)| *v)))
                }
                _ => new_null_array(f.data_type(), all.len()),
            }
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn poisoned() -> DataFusionError {
    DataFusionError::Internal("pg_catalog cache lock poisoned".into())
}

/// One of the crate's tables with its columns converted. Rows are read from the crate's table when a query runs
/// (not when it is looked up: building `pg_class` looks up every table, this one included).
#[derive(Debug)]
struct Converted {
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
    fix: Fix,
    /// The converted rows of a table exported from PostgreSQL, read once.
    rows: tokio::sync::OnceCell<Arc<MemTable>>,
}

impl Converted {
    async fn read(&self) -> Result<Arc<MemTable>> {
        let state = READER.state();
        let plan = self.inner.scan(&state, None, &[], None).await?;
        let batches = datafusion::physical_plan::collect(plan, READER.task_ctx()).await?;
        let batches = batches.iter().map(|b| convert_batch(b, &self.schema, &self.fix)).collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(MemTable::try_new(self.schema.clone(), vec![batches])?))
    }
}

#[async_trait]
impl TableProvider for Converted {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rows = if self.fix.dynamic {
            self.read().await?
        } else {
            self.rows.get_or_try_init(|| self.read()).await?.clone()
        };
        rows.scan(state, projection, filters, limit).await
    }
}

fn list_type(element: Element) -> DataType {
    DataType::List(Arc::new(Field::new("item", element.data_type(), true)))
}

fn converted_schema(schema: &SchemaRef, fix: &Fix) -> SchemaRef {
    let mut fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match fix.arrays.iter().find(|(c, _)| c == f.name()) {
            Some((_, element)) if f.data_type() == &DataType::Utf8 => Field::new(f.name(), list_type(*element), true),
            _ => f.as_ref().clone(),
        })
        .collect();
    for (column, element) in fix.added {
        if schema.field_with_name(column).is_err() {
            fields.push(Field::new(*column, list_type(*element), true));
        }
    }
    Arc::new(Schema::new(fields))
}

fn convert_batch(batch: &RecordBatch, schema: &SchemaRef, fix: &Fix) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let element = fix.arrays.iter().chain(fix.added).find(|(c, _)| c == field.name()).map(|(_, e)| *e);
            match (batch.column_by_name(field.name()), element) {
                (Some(column), Some(element)) if column.data_type() == &DataType::Utf8 => {
                    Ok(parse_arrays(column.as_string::<i32>(), element))
                }
                (Some(column), _) => Ok(column.clone()),
                (None, _) => Ok(new_null_array(field.data_type(), batch.num_rows())),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `"1 2"` (int2vector, oidvector), `"{1,2}"` / `"[1, 2]"` (arrays) and `"['v', 'o']"` → arrays; NULL stays NULL.
fn parse_arrays(text: &datafusion::arrow::array::StringArray, element: Element) -> ArrayRef {
    fn items(s: &str) -> impl Iterator<Item = &str> {
        let inner = s.trim().trim_start_matches(['{', '[']).trim_end_matches(['}', ']']);
        inner
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(|t| t.trim().trim_matches(['\'', '"']))
            .filter(|t| !t.is_empty())
    }
    match element {
        Element::Int2 | Element::Oid => {
            let mut int2 = ListBuilder::new(Int16Builder::new());
            let mut oid = ListBuilder::new(Int32Builder::new());
            for value in text.iter() {
                match value {
                    Some(s) => {
                        for item in items(s) {
                            int2.values().append_option(item.parse::<i16>().ok());
                            oid.values().append_option(item.parse::<i32>().ok());
                        }
                        int2.append(true);
                        oid.append(true);
                    }
                    None => {
                        int2.append(false);
                        oid.append(false);
                    }
                }
            }
            if element == Element::Int2 { Arc::new(int2.finish()) } else { Arc::new(oid.finish()) }
        }
        Element::Text => {
            let mut out = ListBuilder::new(StringBuilder::new());
            for value in text.iter() {
                match value {
                    Some(s) => {
                        for item in items(s) {
                            out.values().append_value(item);
                        }
                        out.append(true);
                    }
                    None => out.append(false),
                }
            }
            Arc::new(out.finish())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int16Array, StringArray};

    #[test]
    fn vectors_and_arrays_become_lists() {
        let text = StringArray::from(vec![Some("1 2"), None, Some("[3, 4]"), Some("{5}"), Some("")]);
        let out = parse_arrays(&text, Element::Int2);
        let list = out.as_list::<i32>();
        let first = list.value(0);
        assert_eq!(first.as_any().downcast_ref::<Int16Array>().unwrap().values(), &[1, 2]);
        assert!(list.is_null(1));
        assert_eq!(list.value(2).len(), 2);
        assert_eq!(list.value(3).len(), 1);
        assert_eq!(list.value(4).len(), 0);
        let names = parse_arrays(&StringArray::from(vec![Some("['i', 'o']")]), Element::Text);
        let names = names.as_list::<i32>().value(0);
        assert_eq!(names.as_string::<i32>().iter().flatten().collect::<Vec<_>>(), vec!["i", "o"]);
    }
}
