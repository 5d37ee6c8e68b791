-- The fraud-detection example: raw events declared as Kafka tables.
-- Run from psql (\i sql/fraud/tables.sql) or let `cargo run --release` load it with the demo data.

-- Card transactions, keyed by user (the Kafka message key is user_id), timed by when they happened.
-- 'online': latest.transactions serves each user's newest transaction (last amount, merchant, country) for scoring.
CREATE EXTERNAL TABLE IF NOT EXISTS transactions (
  txn_id     VARCHAR NOT NULL,
  user_id    VARCHAR NOT NULL,
  amount     DOUBLE,
  merchant   VARCHAR,
  country    VARCHAR,
  event_time TIMESTAMP NOT NULL
) STORED AS KAFKA LOCATION 'transactions'
OPTIONS ('format' 'json', 'key' 'user_id', 'event_time' 'event_time', 'online' 'true', 'ttl' '24 hours');

-- Fraud labels, arriving after the fact (chargebacks, analyst reviews).
CREATE EXTERNAL TABLE IF NOT EXISTS labels (
  txn_id     VARCHAR NOT NULL,
  user_id    VARCHAR NOT NULL,
  is_fraud   BOOLEAN,
  event_time TIMESTAMP NOT NULL
) STORED AS KAFKA LOCATION 'labels'
OPTIONS ('format' 'json', 'key' 'user_id', 'event_time' 'event_time');
