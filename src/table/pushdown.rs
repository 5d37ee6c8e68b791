//! Which filters a Kafka scan can use to read less, and what they mean in Kafka terms: `_partition` = / IN / ranges
//! (`>= a AND < b`, as Spark's JDBC `partitionColumn` writes them, `OR _partition IS NULL` included),
//! `_offset` ranges, `_timestamp` lower bounds (→ offsets_for_times), and key-column (or `_key`) equality / IN
//! (→ the partitions those keys hash to). Every such filter is `Inexact`: DataFusion still applies it to the rows, so
//! a broker that answers loosely (or a key found in the wrong partition) never changes a result.

use std::collections::BTreeSet;

use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;

use super::definition::{META_KEY, META_OFFSET, META_PARTITION, META_TIMESTAMP};

/// What a scan's filters allow it to skip.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanBounds {
    /// Only these partitions (None: all).
    pub partitions: Option<BTreeSet<i32>>,
    /// Only partitions in `[lo, hi)` (None: all).
    pub partition_range: Option<(i64, i64)>,
    /// Only messages whose key (as text) is one of these (None: any); used to pick partitions.
    pub keys: Option<BTreeSet<String>>,
    /// Offsets >= this.
    pub offset_min: Option<i64>,
    /// Offsets < this.
    pub offset_end: Option<i64>,
    /// Arrival timestamps (ms) >= this.
    pub timestamp_min_ms: Option<i64>,
    /// A filter that no message can satisfy (e.g. `_partition = 1 AND _partition = 2`).
    pub empty: bool,
}

/// One filter the scan understands.
#[derive(Debug, Clone, PartialEq)]
enum Constraint {
    Partitions(BTreeSet<i32>),
    /// Partitions in `[lo, hi)`.
    PartitionRange(i64, i64),
    Keys(BTreeSet<String>),
    OffsetMin(i64),
    OffsetEnd(i64),
    TimestampMinMs(i64),
}

/// Whether `expr` is a filter the scan can use. `key_column` is the table's declared key, if any.
pub fn is_supported(expr: &Expr, key_column: Option<&str>) -> bool {
    classify(expr, key_column).is_some()
}

/// DataFusion's view of `filters`: the usable ones `Inexact` (still applied to rows), the others `Unsupported`.
pub fn pushdown_kinds(
    filters: &[&Expr],
    key_column: Option<&str>,
) -> Vec<datafusion::logical_expr::TableProviderFilterPushDown> {
    use datafusion::logical_expr::TableProviderFilterPushDown;
    filters
        .iter()
        .map(|f| {
            if is_supported(f, key_column) {
                TableProviderFilterPushDown::Inexact
            } else {
                TableProviderFilterPushDown::Unsupported
            }
        })
        .collect()
}

/// Fold every usable filter into [`ScanBounds`].
pub fn bounds(filters: &[Expr], key_column: Option<&str>) -> ScanBounds {
    let mut b = ScanBounds::default();
    for c in filters.iter().filter_map(|f| classify(f, key_column)).flatten() {
        match c {
            Constraint::Partitions(p) => {
                b.partitions = Some(match b.partitions.take() {
                    Some(prev) => prev.intersection(&p).copied().collect(),
                    None => p,
                })
            }
            Constraint::PartitionRange(lo, hi) => {
                b.partition_range = Some(match b.partition_range {
                    Some((l, h)) => (l.max(lo), h.min(hi)),
                    None => (lo, hi),
                })
            }
            Constraint::Keys(k) => {
                b.keys = Some(match b.keys.take() {
                    Some(prev) => prev.intersection(&k).cloned().collect(),
                    None => k,
                })
            }
            Constraint::OffsetMin(o) => b.offset_min = Some(b.offset_min.map_or(o, |p| p.max(o))),
            Constraint::OffsetEnd(o) => b.offset_end = Some(b.offset_end.map_or(o, |p| p.min(o))),
            Constraint::TimestampMinMs(t) => b.timestamp_min_ms = Some(b.timestamp_min_ms.map_or(t, |p| p.max(t))),
        }
    }
    if b.partitions.as_ref().is_some_and(|p| p.is_empty()) || b.keys.as_ref().is_some_and(|k| k.is_empty()) {
        b.empty = true;
    }
    if let (Some(lo), Some(hi)) = (b.offset_min, b.offset_end)
        && lo >= hi
    {
        b.empty = true;
    }
    if b.partition_range.is_some_and(|(lo, hi)| lo >= hi) {
        b.empty = true;
    }
    b
}

fn classify(expr: &Expr, key_column: Option<&str>) -> Option<Vec<Constraint>> {
    match expr {
        // `k = a OR k = b` (how small IN lists arrive): the union of the two sets.
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => {
            match (classify(left, key_column)?.as_slice(), classify(right, key_column)?.as_slice()) {
                ([Constraint::Keys(a)], [Constraint::Keys(b)]) => {
                    Some(vec![Constraint::Keys(a.union(b).cloned().collect())])
                }
                ([Constraint::Partitions(a)], [Constraint::Partitions(b)]) => {
                    Some(vec![Constraint::Partitions(a.union(b).copied().collect())])
                }
                // `… OR _partition IS NULL`: the second half never holds
                (other, [Constraint::Partitions(none)]) | ([Constraint::Partitions(none)], other)
                    if none.is_empty() =>
                {
                    Some(other.to_vec())
                }
                _ => None,
            }
        }
        // `_partition` is never NULL
        Expr::IsNull(e) if column_name(e).as_deref() == Some(META_PARTITION) => {
            Some(vec![Constraint::Partitions(BTreeSet::new())])
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (col, op, value) = match (column_name(left), column_name(right)) {
                (Some(c), None) => (c, *op, literal(right)?),
                (None, Some(c)) => (c, op.swap()?, literal(left)?),
                _ => return None,
            };
            constraint(&col, op, std::slice::from_ref(&value), key_column)
        }
        Expr::InList(list) if !list.negated => {
            let col = column_name(&list.expr)?;
            let values = list.list.iter().map(literal).collect::<Option<Vec<_>>>()?;
            constraint(&col, Operator::Eq, &values, key_column)
        }
        _ => None,
    }
}

fn constraint(col: &str, op: Operator, values: &[ScalarValue], key_column: Option<&str>) -> Option<Vec<Constraint>> {
    match col {
        META_PARTITION if op == Operator::Eq => Some(vec![Constraint::Partitions(
            values.iter().map(|v| as_i64(v).and_then(|x| i32::try_from(x).ok())).collect::<Option<_>>()?,
        )]),
        META_PARTITION if values.len() == 1 => {
            let v = as_i64(&values[0])?;
            match op {
                Operator::GtEq => Some(vec![Constraint::PartitionRange(v, i64::MAX)]),
                Operator::Gt => Some(vec![Constraint::PartitionRange(v.saturating_add(1), i64::MAX)]),
                Operator::Lt => Some(vec![Constraint::PartitionRange(i64::MIN, v)]),
                Operator::LtEq => Some(vec![Constraint::PartitionRange(i64::MIN, v.saturating_add(1))]),
                _ => None,
            }
        }
        META_OFFSET if values.len() == 1 => {
            let v = as_i64(&values[0])?;
            match op {
                Operator::Eq => Some(vec![Constraint::OffsetMin(v), Constraint::OffsetEnd(v.saturating_add(1))]),
                Operator::GtEq => Some(vec![Constraint::OffsetMin(v)]),
                Operator::Gt => Some(vec![Constraint::OffsetMin(v.saturating_add(1))]),
                Operator::Lt => Some(vec![Constraint::OffsetEnd(v)]),
                Operator::LtEq => Some(vec![Constraint::OffsetEnd(v.saturating_add(1))]),
                _ => None,
            }
        }
        META_TIMESTAMP if values.len() == 1 => {
            let ms = timestamp_ms(&values[0])?;
            match op {
                // Kafka timestamps are milliseconds; rounding down keeps the bound loose, never too tight.
                Operator::GtEq | Operator::Gt | Operator::Eq => Some(vec![Constraint::TimestampMinMs(ms)]),
                _ => None,
            }
        }
        c if op == Operator::Eq && (c == META_KEY || Some(c) == key_column) => {
            Some(vec![Constraint::Keys(values.iter().map(key_text).collect::<Option<_>>()?)])
        }
        _ => None,
    }
}

fn column_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Column(c) => Some(c.name.clone()),
        // `_timestamp` compared with a zoned timestamp is wrapped in a cast; the instant is the same.
        Expr::Cast(c) if matches!(c.field.data_type(), datafusion::arrow::datatypes::DataType::Timestamp(_, _)) => {
            column_name(&c.expr).filter(|n| n == META_TIMESTAMP)
        }
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) if !v.is_null() => Some(v.clone()),
        Expr::Cast(c) => {
            let v = literal(&c.expr)?;
            v.cast_to(c.field.data_type()).ok()
        }
        _ => None,
    }
}

fn as_i64(v: &ScalarValue) -> Option<i64> {
    match v.cast_to(&datafusion::arrow::datatypes::DataType::Int64).ok()? {
        ScalarValue::Int64(Some(x)) => Some(x),
        _ => None,
    }
}

/// A key value as the message key holds it: its text.
pub fn key_text(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            Some(s.clone())
        }
        ScalarValue::Int8(Some(_))
        | ScalarValue::Int16(Some(_))
        | ScalarValue::Int32(Some(_))
        | ScalarValue::Int64(Some(_))
        | ScalarValue::UInt8(Some(_))
        | ScalarValue::UInt16(Some(_))
        | ScalarValue::UInt32(Some(_))
        | ScalarValue::UInt64(Some(_)) => Some(v.to_string()),
        _ => None,
    }
}

fn timestamp_ms(v: &ScalarValue) -> Option<i64> {
    let floor = |x: i64, d: i64| x.div_euclid(d);
    match v {
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1000),
        ScalarValue::TimestampMillisecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampMicrosecond(Some(x), _) => Some(floor(*x, 1000)),
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(floor(*x, 1_000_000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn folds_partition_offset_time_and_key_filters() {
        let filters = vec![
            col("_partition").in_list(vec![lit(1), lit(2), lit(3)], false),
            col("_partition").not_eq(lit(2)), // not usable, ignored
            lit(2).eq(col("_partition")),
            col("_offset").gt_eq(lit(10i64)),
            col("_offset").lt(lit(20i64)),
            col("_offset").gt(lit(12i64)),
            col("_timestamp").gt_eq(lit(ScalarValue::TimestampNanosecond(Some(1_700_000_000_123_456_789), None))),
            col("user_id").eq(lit("u42")),
        ];
        let b = bounds(&filters, Some("user_id"));
        assert_eq!(b.partitions, Some([2].into()));
        assert_eq!(b.offset_min, Some(13));
        assert_eq!(b.offset_end, Some(20));
        assert_eq!(b.timestamp_min_ms, Some(1_700_000_000_123));
        assert_eq!(b.keys, Some(["u42".to_string()].into()));
        assert!(!b.empty);
        assert!(!is_supported(&col("_partition").not_eq(lit(2)), None));
        assert!(!is_supported(&col("amount").eq(lit(1)), Some("user_id")));
        let either = col("user_id").eq(lit("a")).or(col("user_id").eq(lit("b")).or(col("_key").eq(lit("c"))));
        assert_eq!(bounds(&[either], Some("user_id")).keys, Some(["a", "b", "c"].map(String::from).into()));
        assert!(!is_supported(&col("user_id").eq(lit("a")).or(col("amount").eq(lit(1))), Some("user_id")));
    }

    #[test]
    fn contradictions_are_empty() {
        assert!(bounds(&[col("_partition").eq(lit(1)), col("_partition").eq(lit(2))], None).empty);
        // Spark's partitionColumn bounds
        let b = bounds(&[col("_partition").gt_eq(lit(1)), col("_partition").lt(lit(2))], None);
        assert_eq!(b.partition_range, Some((1, 2)));
        let first = col("_partition").lt(lit(1)).or(col("_partition").is_null());
        assert!(is_supported(&first, None));
        assert_eq!(bounds(&[first], None).partition_range, Some((i64::MIN, 1)));
        assert!(bounds(&[col("_partition").gt(lit(3)), col("_partition").lt_eq(lit(3))], None).empty);
        assert!(bounds(&[col("_offset").gt_eq(lit(5i64)), col("_offset").lt(lit(5i64))], None).empty);
        assert!(bounds(&[col("k").eq(lit("a")), col("k").eq(lit("b"))], Some("k")).empty);
    }

    #[test]
    fn offset_equality_is_a_one_offset_range() {
        let b = bounds(&[col("_offset").eq(lit(7i64))], None);
        assert_eq!((b.offset_min, b.offset_end), (Some(7), Some(8)));
    }
}
