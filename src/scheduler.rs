//! Where a statement runs: two runtimes, so online lookups and catalog reads never queue behind a heavy scan.
//!
//! - The **query runtime** (one worker per core) runs scans, joins, pipelines: everything that reads Kafka or may
//!   compute for long.
//! - The **interactive runtime** (its own [`INTERACTIVE_WORKERS`] threads) runs statements that read only memory:
//!   point lookups and scans of `latest.*`, the system schemas (`pg_catalog`, `information_schema`, `kfsql`) and
//!   statements without relations (`SELECT 1`, `SELECT version()`). Its threads are the operating system's to
//!   schedule next to the query runtime's, so a statement that holds every query worker without yielding delays a
//!   lookup by a time slice, not by its own run time.
//!
//! Under load the operating system arbitrates: the query runtime's threads and the scan threads run at a lower
//! priority ([`QUERY_NICENESS`]) than the interactive runtime and the connections' runtime.
//!
//! A statement is classified before it runs, on its AST (simple protocol) or its plan (extended protocol). Anything
//! not known to be light is [`Lane::Query`].

use std::ops::ControlFlow;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Query, Statement, TableFactor, Visit, Visitor};

/// Threads of the interactive runtime.
pub const INTERACTIVE_WORKERS: usize = 2;

/// Schemas whose tables live in the server's memory.
const IN_MEMORY_SCHEMAS: &[&str] = &["latest", "pg_catalog", "information_schema", "kfsql"];

/// Which runtime runs a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Query,
    Interactive,
}

impl Lane {
    pub fn runtime(self) -> &'static tokio::runtime::Runtime {
        match self {
            Lane::Query => query_runtime(),
            Lane::Interactive => interactive_runtime(),
        }
    }

    /// A query whose FROM items are all tables of in-memory schemas (or subqueries over them): no CTE (which may
    /// recurse), no table function or UNNEST (which may expand without bound).
    pub fn of_statement(stmt: &DFStatement) -> Lane {
        let DFStatement::Statement(s) = stmt else { return Lane::Query };
        if !matches!(s.as_ref(), Statement::Query(_)) {
            return Lane::Query;
        }
        if s.visit(&mut InMemoryOnly).is_continue() { Lane::Interactive } else { Lane::Query }
    }

    /// A planned statement: a latest point lookup, or a plan of relational operators whose scans all read
    /// in-memory schemas.
    pub fn of_plan(plan: &LogicalPlan) -> Lane {
        if crate::latest::lookup::Lookup::from_plan(plan).is_some() {
            return Lane::Interactive;
        }
        let mut light = true;
        let _ = plan.apply_with_subqueries(|node| {
            light &= match node {
                LogicalPlan::TableScan(scan) => scan
                    .table_name
                    .schema()
                    .is_some_and(|s| IN_MEMORY_SCHEMAS.contains(&s.to_ascii_lowercase().as_str())),
                LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Join(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::SubqueryAlias(_)
                | LogicalPlan::Subquery(_)
                | LogicalPlan::Union(_)
                | LogicalPlan::Distinct(_)
                | LogicalPlan::Values(_)
                | LogicalPlan::EmptyRelation(_) => true,
                _ => false,
            };
            Ok(if light { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
        });
        if light { Lane::Interactive } else { Lane::Query }
    }
}

/// Breaks at anything that is not a read of in-memory tables.
struct InMemoryOnly;

impl Visitor for InMemoryOnly {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if query.with.is_some() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table { name, args: None, .. } => {
                let parts = &name.0;
                let schema = (parts.len() >= 2).then(|| parts[parts.len() - 2].to_string().to_ascii_lowercase());
                match schema {
                    Some(s) if IN_MEMORY_SCHEMAS.contains(&s.trim_matches('"')) => ControlFlow::Continue(()),
                    _ => ControlFlow::Break(()),
                }
            }
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    }
}

/// The process-wide runtime that plans and executes queries (one worker per core). Never dropped.
pub fn query_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        runtime("kfsql-query", workers, QUERY_NICENESS)
    })
}

/// The runtime of lookups and catalog reads. Never dropped.
pub fn interactive_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| runtime("kfsql-interactive", INTERACTIVE_WORKERS, 0))
}

/// How much lower the operating system ranks the query runtime's threads (and the scan threads they start) than
/// every other thread of the server: when all cores are busy with scans, a lookup's or a connection's thread that
/// wakes up runs first instead of waiting for a time slice (Linux nice values: at 10 a busy thread gets about a tenth of the CPU share of one at 0).
pub const QUERY_NICENESS: i32 = 10;

/// Lower the calling thread's scheduling priority by `niceness` (Linux; a no-op elsewhere). Raising one's own
/// niceness needs no privilege.
pub fn lower_priority(niceness: i32) {
    #[cfg(target_os = "linux")]
    if niceness > 0 {
        // SAFETY: gettid and setpriority on the calling thread only read their arguments.
        unsafe {
            let tid = libc::gettid();
            let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (now + niceness).min(19));
        }
    }
}

fn runtime(name: &str, workers: usize, niceness: i32) -> tokio::runtime::Runtime {
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .on_thread_start(move || lower_priority(niceness))
        .enable_all()
        .build();
    match built {
        Ok(rt) => rt,
        // Creating a runtime only fails when the OS refuses threads; nothing can run then.
        Err(e) => {
            eprintln!("kfsql: cannot start the {name} runtime: {e}");
            std::process::abort()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(sql: &str) -> Lane {
        Lane::of_statement(&crate::sql::parse(sql).expect("parse")[0])
    }

    #[test]
    fn statements_reading_only_memory_are_interactive() {
        assert_eq!(lane("SELECT 1"), Lane::Interactive);
        assert_eq!(lane("SELECT * FROM latest.transactions WHERE user_id = 'u1'"), Lane::Interactive);
        assert_eq!(
            lane("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON true"),
            Lane::Interactive
        );
        assert_eq!(lane("SELECT * FROM kfsql.freshness"), Lane::Interactive);
        assert_eq!(lane("SELECT * FROM transactions"), Lane::Query);
        assert_eq!(lane("SELECT * FROM public.transactions"), Lane::Query);
        assert_eq!(lane("SELECT * FROM latest.transactions l JOIN transactions t ON true"), Lane::Query);
        assert_eq!(lane("SELECT * FROM latest.t WHERE x IN (SELECT x FROM transactions)"), Lane::Query);
        assert_eq!(
            lane("WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT * FROM r"),
            Lane::Query
        );
        assert_eq!(lane("SELECT 1 UNION ALL SELECT 2"), Lane::Interactive);
        assert_eq!(lane("SELECT count(*) FROM generate_series(1, 10000000000)"), Lane::Query);
        assert_eq!(lane("SELECT count(*) FROM unnest(range(1, 1000))"), Lane::Query);
        assert_eq!(lane("SELECT * FROM (SELECT * FROM pg_catalog.pg_class) c"), Lane::Interactive);
        assert_eq!(lane("SELECT * FROM (SELECT * FROM transactions) c"), Lane::Query);
        assert_eq!(lane("INSERT INTO t VALUES (1)"), Lane::Query);
    }
}
