//! Byte sizes as people write them (`512M`, `1.5GiB`, `4096`), in image definitions and on the
//! command line.

use std::fmt;
use std::str::FromStr;

/// A size in bytes, parsed from `512M`, `1G`, `1.5GiB`, `4096` (binary multiples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            u => return Err(format!("unknown size unit {u:?} in {s:?} (use K, M, G or T)")),
        };
        let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: 512M, 1G, 4096)"))?;
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("{s:?} is out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u + 1 < UNITS.len() {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 { write!(f, "{} B", self.0) } else { write!(f, "{v:.1} {}", UNITS[u]) }
    }
}

/// What a size in a file is, in words: serde's messages for a wrong type quote this.
const SIZE_EXPECTED: &str = "a size: a string such as \"1G\" or a positive number of bytes";

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_EXPECTED)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n).map(ByteSize).map_err(|_| E::custom(format!("{n} is not {SIZE_EXPECTED}")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ByteSize, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert_eq!("512M".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("1.5GiB".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert!("12Q".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
    }

    /// A size in a definition: a string with a unit or a number of bytes; anything else says so
    /// in those words, not in the terms of an internal type.
    #[test]
    fn untagged_enum_raw_sizes_in_files_say_what_a_size_is() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[allow(dead_code)]
            size: ByteSize,
        }
        let size = |v: &str| toml::from_str::<T>(&format!("size = {v}")).map(|t| t.size.0).map_err(|e| e.to_string());
        assert_eq!(size("1048576"), Ok(1 << 20));
        assert_eq!(size("\"1M\""), Ok(1 << 20));
        for bad in ["-5", "1.5", "true", "[1]"] {
            let e = size(bad).unwrap_err();
            assert!(e.contains("a string such as \"1G\" or a positive number of bytes"), "{bad}: {e}");
            assert!(!e.contains("Raw") && !e.contains("untagged"), "{bad}: {e}");
        }
    }
}
