// node-postgres (pg 8) against a running kfsql serving the fraud demo: text parameters, typed results, errors,
// transactions. Run by scripts/test.sh (NODE_PATH points at the pg install):
//
//   node tests/clients/node_client.js postgresql://kfsql@127.0.0.1:5433/kfsql 5000
//
// Each check prints one line; the exit status is the number of failures.
const { Client } = require("pg");

const [url, expected] = [process.argv[2], Number(process.argv[3])];
let failures = 0;
let passes = 0;

async function check(what, fn, want) {
  try {
    const got = await fn();
    if (JSON.stringify(got) === JSON.stringify(want)) {
      passes++;
      console.log(`node check ok: ${what}`);
    } else {
      failures++;
      console.log(`node check FAILED: ${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
    }
  } catch (e) {
    failures++;
    console.log(`node check FAILED: ${what}: ${e.message}`);
  }
}

(async () => {
  const c = new Client({ connectionString: url });
  await c.connect();
  await check("count(*) is named count", async () => {
    const r = await c.query("SELECT count(*) FROM transactions");
    return [r.fields[0].name, Number(r.rows[0].count)];
  }, ["count", expected]);
  await check("text parameters, typed results", async () => {
    const r = await c.query(
      "SELECT txn_id, amount, event_time FROM transactions WHERE user_id = $1 AND amount > $2 ORDER BY event_time",
      ["u42", "1.5"],
    );
    return r.rows.length > 0 && r.rows.every((x) => typeof x.amount === "number" && x.event_time instanceof Date);
  }, true);
  await check("a named prepared statement, executed twice", async () => {
    const q = { name: "by_user", text: "SELECT count(*) AS n FROM transactions WHERE user_id = $1" };
    const a = await c.query({ ...q, values: ["u1"] });
    const b = await c.query({ ...q, values: ["u2"] });
    return [a.rows.length, b.rows.length];
  }, [1, 1]);
  await check("latest view point lookup", async () => {
    const r = await c.query("SELECT user_id FROM latest.transactions WHERE user_id = $1", ["u42"]);
    return r.rows.map((x) => x.user_id);
  }, ["u42"]);
  await check("errors carry SQLSTATE and the connection goes on", async () => {
    let code = null;
    try {
      await c.query("SELECT * FROM nonexistent");
    } catch (e) {
      code = e.code;
    }
    const r = await c.query("SELECT 1 AS one");
    return [code, Number(r.rows[0].one)];
  }, ["42P01", 1]);
  await check("BEGIN / COMMIT", async () => {
    await c.query("BEGIN");
    const r = await c.query("SELECT count(*) AS n FROM labels");
    await c.query("COMMIT");
    return Number(r.rows[0].n) > 0;
  }, true);
  await c.end();
  console.log(`node: ${passes} passed, ${failures} failed`);
  process.exit(failures > 0 || passes === 0 ? Math.max(1, Math.min(failures, 100)) : 0);
})().catch((e) => {
  console.log(`node check FAILED: ${e.message}`);
  process.exit(1);
});
