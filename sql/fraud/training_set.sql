-- The fraud training set: every labelled transaction with the features that were known at its time, never later.
-- Runs as is against `cargo run --release` (psql -f sql/fraud/training_set.sql); writes exports/training/fraud.parquet.
--
-- The features come from the feature topic the user_txn_features pipeline writes (sql/fraud/features.sql): one row
-- per user per closed one-hour window, timed by its window_end. `l.event_time >= f.window_end` picks, for each
-- label, the newest window that had closed by the transaction's time, so no feature sees the transaction itself or
-- anything after it; the table's ttl (2 hours) leaves the features NULL when the user's last window is older.

SELECT l.txn_id, l.is_fraud, t.amount, t.country,
       f.window_end AS features_as_of, f.txn_count_1h, f.amount_avg_1h, f.amount_max_1h, f.countries_1h,
       f.last_country
FROM labels l
JOIN transactions t ON t.txn_id = l.txn_id
ASOF JOIN user_txn_features f MATCH_CONDITION (l.event_time >= f.window_end) ON l.user_id = f.user_id
ORDER BY l.txn_id
LIMIT 10;

-- Export for training (confined to the server's export directory).
COPY (
  SELECT l.txn_id, l.is_fraud, t.amount, t.country, f.window_end AS features_as_of,
         f.txn_count_1h, f.amount_sum_1h, f.amount_avg_1h, f.amount_max_1h, f.countries_1h, f.last_country,
         d.txn_count_1d, d.amount_sum_1d
  FROM labels l
  JOIN transactions t ON t.txn_id = l.txn_id
  ASOF JOIN user_txn_features f MATCH_CONDITION (l.event_time >= f.window_end) ON l.user_id = f.user_id
  ASOF JOIN user_daily_spend d MATCH_CONDITION (l.event_time >= d.day_end) ON l.user_id = d.user_id
) TO 'training/fraud.parquet';
