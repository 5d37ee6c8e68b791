//! Key → partition mapping: the rule a producer used to place a key, so that key-equality predicates can be routed
//! to the one partition that can hold the key (see DESIGN.md "Keys and partitions").

use std::fmt;
use std::str::FromStr;

/// How producers of a topic assigned keys to partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// Java clients' default: `toPositive(murmur2(key)) % n`, seed 0x9747b28c.
    #[default]
    Murmur2,
    /// librdkafka's default (`consistent_random`): `crc32(key) % n`.
    ConsistentRandom,
    /// Unknown or custom placement: never prune partitions by key.
    None,
}

impl Partitioner {
    /// The partition `key` lands in among `partitions`, or `None` when this partitioner does not say.
    pub fn partition_for(&self, key: &[u8], partitions: i32) -> Option<i32> {
        if partitions <= 0 {
            return None;
        }
        let n = partitions as u32;
        match self {
            Partitioner::Murmur2 => Some(((murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff) % n) as i32),
            Partitioner::ConsistentRandom => Some((crc32fast::hash(key) % n) as i32),
            Partitioner::None => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Partitioner::Murmur2 => "murmur2",
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::None => "none",
        }
    }
}

impl fmt::Display for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Partitioner {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "murmur2" | "murmur2_random" | "java" | "default" => Ok(Partitioner::Murmur2),
            "consistent_random" | "consistent" | "crc32" | "librdkafka" => Ok(Partitioner::ConsistentRandom),
            "none" => Ok(Partitioner::None),
            other => Err(format!(
                "unknown partitioner '{other}': expected murmur2 (Java clients' default), consistent_random (librdkafka's default) or none"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Apache Kafka's `UtilsTest.testMurmur2` (Java `Utils.murmur2`, returned as a signed int).
    #[test]
    fn murmur2_matches_java_client() {
        let cases: &[(&str, i32)] = &[
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            let got = murmur2::murmur2(input.as_bytes(), murmur2::KAFKA_SEED) as i32;
            assert_eq!(got, *expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn partition_is_positive_modulo() {
        // -973932308 & 0x7fffffff = 1173551340; % 7 = 1173551340 - 7*167650191 = 3
        assert_eq!(Partitioner::Murmur2.partition_for(b"21", 7), Some(1173551340 % 7));
        assert_eq!(Partitioner::ConsistentRandom.partition_for(b"abc", 4), Some((crc32fast::hash(b"abc") % 4) as i32));
        assert_eq!(Partitioner::None.partition_for(b"abc", 4), None);
        assert_eq!(Partitioner::Murmur2.partition_for(b"abc", 0), None);
    }

    #[test]
    fn parses_names() {
        assert_eq!("murmur2".parse::<Partitioner>(), Ok(Partitioner::Murmur2));
        assert_eq!("CONSISTENT_RANDOM".parse::<Partitioner>(), Ok(Partitioner::ConsistentRandom));
        assert!("fnv".parse::<Partitioner>().is_err());
    }
}
