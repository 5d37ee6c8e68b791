-- Queries over the fraud example (see README). Each runs as is against `cargo run --release`.

-- How much history the topic holds.
SELECT count(*) AS txns, count(DISTINCT user_id) AS users, avg(amount) AS avg_amount FROM transactions;

-- One user's history: the key predicate reads only the partition user_id hashes to (see EXPLAIN).
SELECT txn_id, amount, country, event_time, _partition, _offset FROM transactions WHERE user_id = 'u42' ORDER BY event_time;
EXPLAIN SELECT * FROM transactions WHERE user_id = 'u42';

-- The last hour, by arrival time: starts each partition at offsets_for_times(now() - 1 hour).
SELECT count(*) FROM transactions WHERE _timestamp >= now() - INTERVAL '1 hour';

-- Time travel: what the topic held as of a moment (messages that had arrived by then).
SELECT count(*) FROM transactions FOR SYSTEM_TIME AS OF now() - INTERVAL '12 hours';

-- Per-user features over the whole history.
SELECT user_id, count(*) AS txn_count, sum(amount) AS amount_sum, count(DISTINCT country) AS countries
FROM transactions GROUP BY user_id ORDER BY txn_count DESC LIMIT 10;

-- Online serving: u42's newest transaction from latest.transactions, answered from memory (a point lookup, no scan).
SELECT user_id, amount, merchant, country, event_time FROM latest.transactions WHERE user_id = 'u42';

-- The online view as it was 12 hours ago, rebuilt from the log: equal, key by key, to an ASOF join at that time.
SELECT count(*) AS users_then FROM latest.transactions FOR SYSTEM_TIME AS OF now() - INTERVAL '12 hours';

-- How fresh the online views are: ready, keys, consumer lag, newest event time applied.
SELECT table_name, ready, keys, lag_messages, newest_event_time, staleness_ms, lookups FROM kfsql.freshness;

-- What scans have read so far, and any bad messages.
SELECT * FROM kfsql.table_stats;
