// pgjdbc (/usr/share/java/postgresql.jar) against a running kfsql serving the fraud demo. Run by scripts/test.sh:
//
//   java -cp /usr/share/java/postgresql.jar tests/clients/JdbcClient.java jdbc:postgresql://127.0.0.1:5433/kfsql?user=kfsql 5000
//
// Each check prints one line; the exit status is the number of failures.
import java.sql.*;
import java.util.*;

public class JdbcClient {
    static int failures = 0, passes = 0;

    interface Check { Object run() throws Exception; }

    static void check(String what, Check fn, Object want) {
        try {
            Object got = fn.run();
            if (Objects.equals(got, want)) {
                passes++;
                System.out.println("jdbc check ok: " + what);
            } else {
                failures++;
                System.out.println("jdbc check FAILED: " + what + ": got " + got + ", want " + want);
            }
        } catch (Exception e) {
            failures++;
            System.out.println("jdbc check FAILED: " + what + ": " + e);
        }
    }

    static List<String> column(ResultSet rs, String name) throws SQLException {
        List<String> out = new ArrayList<>();
        while (rs.next()) out.add(rs.getString(name));
        return out;
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        long expected = Long.parseLong(args[1]);
        try (Connection c = DriverManager.getConnection(url)) {
            DatabaseMetaData md = c.getMetaData();
            check("server version", () -> md.getDatabaseMajorVersion() + "." + md.getDatabaseMinorVersion(), "15.0");
            check("getTables lists the Kafka tables", () -> {
                List<String> names = column(md.getTables(null, "public", "%", new String[] {"TABLE"}), "TABLE_NAME");
                return names.contains("transactions") && names.contains("labels");
            }, true);
            check("getSchemas lists public and latest", () -> {
                List<String> names = column(md.getSchemas(), "TABLE_SCHEM");
                return names.contains("public") && names.contains("latest");
            }, true);
            check("getColumns: names and JDBC types", () -> {
                Map<String, Integer> types = new LinkedHashMap<>();
                try (ResultSet rs = md.getColumns(null, "public", "transactions", "%")) {
                    while (rs.next()) types.put(rs.getString("COLUMN_NAME"), rs.getInt("DATA_TYPE"));
                }
                return types.get("amount") == Types.DOUBLE && types.get("event_time") == Types.TIMESTAMP
                    && types.get("user_id") == Types.VARCHAR && types.containsKey("_partition")
                    && types.containsKey("_offset");
            }, true);
            check("getPrimaryKeys (Kafka tables have none)", () -> column(md.getPrimaryKeys(null, "public", "transactions"), "COLUMN_NAME").size(), 0);
            check("getIndexInfo (none)", () -> column(md.getIndexInfo(null, "public", "transactions", false, true), "INDEX_NAME").size(), 0);
            check("getImportedKeys (none)", () -> column(md.getImportedKeys(null, "public", "transactions"), "FKCOLUMN_NAME").size(), 0);
            check("getTypeInfo knows int8, float8, text, timestamp", () -> {
                List<String> names = column(md.getTypeInfo(), "TYPE_NAME");
                return names.containsAll(List.of("int8", "float8", "text", "timestamp"));
            }, true);
            check("count(*) named count", () -> {
                try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM transactions")) {
                    rs.next();
                    return rs.getMetaData().getColumnName(1) + "=" + rs.getLong("count");
                }
            }, "count=" + expected);
            check("prepared statement with parameters, reused past prepareThreshold", () -> {
                long total = 0;
                try (PreparedStatement ps = c.prepareStatement("SELECT count(*) FROM transactions WHERE user_id = ? AND amount > ?")) {
                    for (int i = 0; i < 8; i++) {
                        ps.setString(1, "u" + i);
                        ps.setDouble(2, 1.0);
                        try (ResultSet rs = ps.executeQuery()) { rs.next(); total += rs.getLong(1); }
                    }
                }
                try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(
                        "SELECT count(*) FROM transactions WHERE user_id IN ('u0','u1','u2','u3','u4','u5','u6','u7') AND amount > 1.0")) {
                    rs.next();
                    return total == rs.getLong(1);
                }
            }, true);
            check("fetchSize streams with portal suspension", () -> {
                c.setAutoCommit(false);
                long n = 0;
                try (Statement s = c.createStatement()) {
                    s.setFetchSize(1000);
                    try (ResultSet rs = s.executeQuery("SELECT txn_id, amount, event_time FROM transactions")) {
                        while (rs.next()) n++;
                    }
                }
                c.commit();
                c.setAutoCommit(true);
                return n;
            }, expected);
            check("a _partition range reads only its partitions (Spark's partitionColumn)", () -> {
                long n = 0;
                try (Statement s = c.createStatement()) {
                    for (int p = 0; p < 4; p++) {
                        try (ResultSet rs = s.executeQuery("SELECT count(*) FROM transactions WHERE _partition >= " + p + " AND _partition < " + (p + 1))) {
                            rs.next();
                            n += rs.getLong(1);
                        }
                    }
                }
                return n;
            }, expected);
            check("errors carry SQLSTATE", () -> {
                try (Statement s = c.createStatement()) {
                    s.executeQuery("SELECT * FROM no_such_table");
                    return "no error";
                } catch (SQLException e) {
                    return e.getSQLState();
                }
            }, "42P01");
        }
        System.out.println("jdbc: " + passes + " passed, " + failures + " failed");
        System.exit(failures > 0 || passes == 0 ? Math.max(1, Math.min(failures, 100)) : 0);
    }
}
