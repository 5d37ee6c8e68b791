-- The Kafka Streams application's feature topic (UserTxnFeatures.java), declared in kfsql and served from it.
-- Kafka Streams writes each record with a time-windowed key: the user id's bytes, then the window start as an
-- 8-byte big-endian long. key_format 'windowed_string' reads user_id, window_start and window_end from that key
-- (window_end = window_start + window_size, as Kafka Streams' own deserializer computes it); the value holds the
-- aggregates. Kafka Streams places the records by the user id alone, so key pushdown still reads one partition.
CREATE EXTERNAL TABLE IF NOT EXISTS streams_user_features (
  user_id       VARCHAR NOT NULL,
  window_start  TIMESTAMP NOT NULL,
  window_end    TIMESTAMP NOT NULL,
  txn_count_1h  BIGINT,
  amount_sum_1h DOUBLE,
  amount_max_1h DOUBLE
) STORED AS KAFKA LOCATION 'streams_user_features'
OPTIONS ('format' 'json', 'key' 'user_id', 'key_format' 'windowed_string', 'window_size' '1 hour',
         'event_time' 'window_end', 'online' 'true', 'ttl' '2 hours');

-- The training set: every label with the newest window that had closed by the transaction's time.
SELECT l.txn_id, l.is_fraud, f.window_end AS features_as_of, f.txn_count_1h, f.amount_sum_1h, f.amount_max_1h
FROM labels l
ASOF JOIN streams_user_features f MATCH_CONDITION (l.event_time >= f.window_end) ON l.user_id = f.user_id
ORDER BY l.txn_id
LIMIT 10;

-- Online: a user's newest closed window, from memory.
SELECT * FROM latest.streams_user_features WHERE user_id = 'u42';
