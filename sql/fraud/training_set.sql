-- The fraud training set: every labelled transaction with the features that were known at its time, never later.
-- Runs as is against `cargo run --release` (psql -f sql/fraud/training_set.sql); writes exports/training/fraud.parquet.

-- Per-user features as of each transaction, computed from the transaction history (in production these come from
-- feature topics written by pipelines; here a view over the raw topic stands in for them).
CREATE OR REPLACE VIEW user_txn_history AS
SELECT user_id, event_time, amount, country,
       count(*) OVER w AS txn_count_so_far,
       avg(amount) OVER w AS amount_avg_so_far
FROM transactions
WINDOW w AS (PARTITION BY user_id ORDER BY event_time ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);

-- Point-in-time join: for each label, the user's history strictly before the labelled transaction.
SELECT l.txn_id, l.is_fraud, t.amount,
       h.txn_count_so_far, h.amount_avg_so_far, h.country AS last_country
FROM labels l
JOIN transactions t ON t.txn_id = l.txn_id
ASOF JOIN user_txn_history h MATCH_CONDITION (l.event_time > h.event_time) ON l.user_id = h.user_id
ORDER BY l.txn_id
LIMIT 10;

-- Export for training (confined to the server's export directory).
COPY (
  SELECT l.txn_id, l.is_fraud, t.amount, h.txn_count_so_far, h.amount_avg_so_far, h.country AS last_country
  FROM labels l
  JOIN transactions t ON t.txn_id = l.txn_id
  ASOF JOIN user_txn_history h MATCH_CONDITION (l.event_time > h.event_time) ON l.user_id = h.user_id
) TO 'training/fraud.parquet';
