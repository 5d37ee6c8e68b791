//! kfsql's SQL dialect: PostgreSQL, plus `FOR SYSTEM_TIME AS OF` after a table name (time travel).
//!
//! It delegates every decision to sqlparser's `PostgreSqlDialect` and reports Postgres' type id, so the parser's
//! Postgres-specific paths (`::` casts, `$1` parameters, operators) behave exactly as for Postgres.

use std::any::TypeId;

use datafusion::sql::sqlparser::dialect::{Dialect, PostgreSqlDialect, Precedence};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};

#[derive(Debug, Default, Clone, Copy)]
pub struct KfsqlDialect {
    pg: PostgreSqlDialect,
}

macro_rules! delegate {
    ($($name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) -> $ret { self.pg.$name($($arg),*) })*
    };
}

impl Dialect for KfsqlDialect {
    fn dialect(&self) -> TypeId {
        TypeId::of::<PostgreSqlDialect>()
    }

    fn supports_table_versioning(&self) -> bool {
        true
    }

    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        self.pg.get_next_precedence(parser)
    }

    delegate! {
        identifier_quote_style(&self, identifier: &str) -> Option<char>;
        is_delimited_identifier_start(&self, ch: char) -> bool;
        is_identifier_start(&self, ch: char) -> bool;
        is_identifier_part(&self, ch: char) -> bool;
        supports_unicode_string_literal(&self) -> bool;
        is_reserved_for_identifier(&self, kw: Keyword) -> bool;
        is_custom_operator_part(&self, ch: char) -> bool;
        supports_filter_during_aggregation(&self) -> bool;
        supports_group_by_expr(&self) -> bool;
        prec_value(&self, prec: Precedence) -> u8;
        allow_extract_custom(&self) -> bool;
        allow_extract_single_quotes(&self) -> bool;
        supports_create_index_with_clause(&self) -> bool;
        supports_explain_with_utility_options(&self) -> bool;
        supports_listen_notify(&self) -> bool;
        supports_factorial_operator(&self) -> bool;
        supports_bitwise_shift_operators(&self) -> bool;
        supports_comment_on(&self) -> bool;
        supports_load_extension(&self) -> bool;
        supports_named_fn_args_with_colon_operator(&self) -> bool;
        supports_named_fn_args_with_expr_name(&self) -> bool;
        supports_empty_projections(&self) -> bool;
        supports_nested_comments(&self) -> bool;
        supports_string_escape_constant(&self) -> bool;
        supports_numeric_literal_underscores(&self) -> bool;
        supports_array_typedef_with_brackets(&self) -> bool;
        supports_geometric_types(&self) -> bool;
        supports_set_names(&self) -> bool;
        supports_alter_column_type_using(&self) -> bool;
        supports_notnull_operator(&self) -> bool;
        supports_interval_options(&self) -> bool;
        supports_insert_table_alias(&self) -> bool;
        supports_create_table_like_parenthesized(&self) -> bool;
        supports_select_wildcard_with_alias(&self) -> bool;
        supports_comma_separated_trim(&self) -> bool;
        supports_xml_expressions(&self) -> bool;
        supports_comment_optimizer_hint(&self) -> bool;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::parser::Parser;

    #[test]
    fn parses_postgres_and_time_travel() {
        let d = KfsqlDialect::default();
        let sql = "SELECT count(*), x::text FROM t FOR SYSTEM_TIME AS OF TIMESTAMP '2026-11-20 12:00:00' WHERE a = $1";
        let stmts = Parser::parse_sql(&d, sql).unwrap();
        let text = stmts[0].to_string();
        assert!(text.contains("FOR SYSTEM_TIME AS OF"), "{text}");
        assert!(Parser::parse_sql(&d, "SELECT 'a' || 'b', E'\\n', 5!").is_ok());
    }
}
