package kfsql.examples;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.WindowedSerdes;

/**
 * Per-user transaction features over the last hour, every five minutes: the fraud demo's {@code user_txn_features}
 * computed by Kafka Streams, as a team running Kafka today would compute them.
 *
 * <p>Reads the demo's {@code transactions} topic (key = user id, value = a JSON transaction, record timestamp = its
 * event time) and writes one record per user and closed window to the output topic: the key is Kafka Streams'
 * time-windowed key (the user id's bytes followed by the window start as an 8-byte big-endian long), the value a JSON
 * object of the aggregates. Windows are emitted once, when they close ({@code suppress(untilWindowCloses)}).
 *
 * <pre>java -cp 'target/classes:target/lib/*' kfsql.examples.UserTxnFeatures BOOTSTRAP [IN_TOPIC] [OUT_TOPIC] [APP_ID]</pre>
 */
public final class UserTxnFeatures {
    static final Duration SIZE = Duration.ofHours(1);
    static final Duration ADVANCE = Duration.ofMinutes(5);
    static final Duration GRACE = Duration.ofSeconds(30);
    static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: UserTxnFeatures BOOTSTRAP [IN_TOPIC] [OUT_TOPIC] [APP_ID]");
            System.exit(2);
        }
        String bootstrap = args[0];
        String in = args.length > 1 ? args[1] : "transactions";
        String out = args.length > 2 ? args[2] : "streams_user_features";
        String appId = args.length > 3 ? args[3] : "user-txn-features";

        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(in, Consumed.with(Serdes.String(), Serdes.String()))
            .groupByKey(Grouped.with(Serdes.String(), Serdes.String()))
            .windowedBy(TimeWindows.ofSizeAndGrace(SIZE, GRACE).advanceBy(ADVANCE))
            .aggregate(
                () -> "{\"txn_count_1h\":0,\"amount_sum_1h\":0.0,\"amount_max_1h\":null}",
                (user, txn, agg) -> add(agg, txn),
                Materialized.with(Serdes.String(), Serdes.String()))
            .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
            .toStream()
            .to(out, Produced.with(WindowedSerdes.timeWindowedSerdeFrom(String.class, SIZE.toMillis()), Serdes.String()));

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 200);
        props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
        props.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/kafka-streams-" + appId);
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch done = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(10));
            done.countDown();
        }));
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.start();
        System.out.println("user-txn-features: " + in + " -> " + out + " on " + bootstrap);
        done.await();
    }

    /** The aggregate with one more transaction in it. */
    static String add(String agg, String txn) {
        try {
            ObjectNode a = (ObjectNode) JSON.readTree(agg);
            JsonNode t = JSON.readTree(txn);
            double amount = t.path("amount").asDouble();
            a.put("txn_count_1h", a.get("txn_count_1h").asLong() + 1);
            a.put("amount_sum_1h", a.get("amount_sum_1h").asDouble() + amount);
            JsonNode max = a.get("amount_max_1h");
            a.put("amount_max_1h", max == null || max.isNull() ? amount : Math.max(max.asDouble(), amount));
            return JSON.writeValueAsString(a);
        } catch (Exception e) {
            throw new IllegalArgumentException("not a JSON transaction: " + txn, e);
        }
    }
}
