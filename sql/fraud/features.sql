-- The fraud example's feature pipelines: continuous queries from the raw transactions topic to feature topics.
-- Each materialized view backfills from the topic's history, then keeps up with new transactions; its feature topic
-- is a Kafka table like any other (history for training, latest.<view> for online scoring).
-- Run from psql (\i sql/fraud/features.sql) or let `cargo run --release` load it with the demo data.

-- Per user, over the last hour, every 5 minutes: how many transactions, how much, how many countries, and where the
-- last one was. A window's row is written once the watermark passes its end (window_end is its event time), so a
-- training label at time T only ever sees windows that had closed by T. Every transaction lands in 12 windows, so
-- the feature topic is 12 times the size of the raw one: 16 partitions keep each of them within what the embedded
-- Kafka holds per partition (5 MiB), so the demo's training set has its whole history.
CREATE MATERIALIZED VIEW IF NOT EXISTS user_txn_features
WITH (topic = 'user_txn_features', key = 'user_id', event_time = 'window_end', online = 'true', ttl = '2 hours',
      allowed_lateness = '30 seconds', partitions = 16) AS
SELECT user_id, window_end,
       count(*)                              AS txn_count_1h,
       round(sum(amount), 2)                 AS amount_sum_1h,
       round(avg(amount), 2)                 AS amount_avg_1h,
       max(amount)                           AS amount_max_1h,
       count(DISTINCT country)               AS countries_1h,
       last_value(country ORDER BY event_time) AS last_country
FROM HOP(transactions, event_time, INTERVAL '5 minutes', INTERVAL '1 hour')
GROUP BY user_id, window_end;

-- Per user per day (a tumbling window written the plain way): spend and the largest transaction.
CREATE MATERIALIZED VIEW IF NOT EXISTS user_daily_spend
WITH (topic = 'user_daily_spend', key = 'user_id', event_time = 'day_end') AS
SELECT user_id,
       date_bin(INTERVAL '1 day', event_time) + INTERVAL '1 day' AS day_end,
       count(*) AS txn_count_1d, round(sum(amount), 2) AS amount_sum_1d, max(amount) AS amount_max_1d
FROM transactions
GROUP BY user_id, date_bin(INTERVAL '1 day', event_time);
