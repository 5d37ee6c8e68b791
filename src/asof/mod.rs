//! Point-in-time joins: `l ASOF JOIN r MATCH_CONDITION (l.t >= r.t) ON l.k = r.k` (Snowflake's syntax).
//!
//! Every left row is kept once; its right side is the row with equal keys whose time is the greatest satisfying the
//! condition (ties: greatest `_offset`, then greatest `_partition` when the right side has them), or NULLs. With a
//! `ttl` on a Kafka right table, a right row further than the TTL from the left row counts as no match. `>`, `<=`,
//! `<` mirror this (see DESIGN.md "ASOF join").
//!
//! When the right side reads Kafka partitions whose earlier messages are gone, the join counts the left rows that
//! found nothing while history they might have matched is missing (`left_without_history` in EXPLAIN ANALYZE); a
//! right side that carries a BOOLEAN column named [`HISTORY_COLUMN`] gets it filled per output row with that verdict
//! (`ASOF JOIN (SELECT *, NULL::BOOLEAN AS _history_gone FROM features) f …`).
//!
//! How it plugs into DataFusion, which parses but cannot plan ASOF joins:
//! 1. [`rewrite`]: an AST pass wraps every FROM item that contains an ASOF join in parentheses (a `NestedJoin`),
//!    because DataFusion's relation planners see nested joins but not top-level join operators;
//! 2. [`AsofRelationPlanner`] plans such a nested join: its ASOF joins become the [`AsofJoin`] logical extension
//!    node, its other joins ordinary joins;
//! 3. [`AsofQueryPlanner`] turns [`AsofJoin`] into [`AsofJoinExec`], visible in EXPLAIN, which joins partition by
//!    partition when both sides are Kafka tables co-partitioned by the join key ([`copartition`]).

mod copartition;
pub use copartition::KeepCopartitioned;
mod exec;
mod node;
mod plan;
mod pushdown;

pub use exec::{AsofJoinExec, HISTORY_COLUMN};
pub use node::{AsofJoin, AsofOp};
pub use plan::{AsofQueryPlanner, AsofRelationPlanner, rewrite};
pub use pushdown::AsofFilterPushdown;
