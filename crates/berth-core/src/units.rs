//! Sizes in bytes with Docker's binary units.
//!
//! Docker reads `2g`, `2GB` and `2gb` alike as 2 GiB (`2 * 1024^3`); Kubernetes-style `2Gi` means
//! the same. Fractions (`1.5g`) are accepted as Docker accepts them; a bare number is bytes.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A size in bytes, parsed from and shown in Docker's binary units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

/// Why a size string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ByteSizeError {
    /// The text was empty or only whitespace.
    #[error("size is empty; write a number with a unit such as 512m or 2g")]
    Empty,
    /// The number part did not parse or was negative.
    #[error("{0:?} is not a non-negative number with a unit such as 512m or 2g")]
    BadNumber(String),
    /// The unit is not one Docker knows.
    #[error("unknown unit {unit:?} in {text:?}; use b, k, m, g, t (or kb/mb/gb/tb, Ki/Mi/Gi/Ti)")]
    UnknownUnit {
        /// The whole text given.
        text: String,
        /// The unit part of it.
        unit: String,
    },
    /// The value does not fit in 64 bits.
    #[error("{0:?} is too large")]
    Overflow(String),
}

const KIB: u64 = 1024;

impl ByteSize {
    /// A size of exactly `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }

    /// A size of `gib` GiB.
    pub const fn from_gib(gib: u64) -> Self {
        Self(gib * KIB * KIB * KIB)
    }

    /// A size of `mib` MiB.
    pub const fn from_mib(mib: u64) -> Self {
        Self(mib * KIB * KIB)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The size in bytes as the signed integer Docker's API carries.
    pub fn bytes_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// Docker's short form of this size: the largest unit that divides it exactly (`2g`, `512m`, `1536k`).
    pub fn docker_string(self) -> String {
        let units = [
            ("t", KIB.pow(4)),
            ("g", KIB.pow(3)),
            ("m", KIB.pow(2)),
            ("k", KIB),
        ];
        for (suffix, factor) in units {
            if self.0 >= factor && self.0.is_multiple_of(factor) {
                return format!("{}{suffix}", self.0 / factor);
            }
        }
        format!("{}b", self.0)
    }
}

fn unit_factor(unit: &str) -> Option<u64> {
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "ki" | "kib" => KIB,
        "m" | "mb" | "mi" | "mib" => KIB.pow(2),
        "g" | "gb" | "gi" | "gib" => KIB.pow(3),
        "t" | "tb" | "ti" | "tib" => KIB.pow(4),
        "p" | "pb" | "pi" | "pib" => KIB.pow(5),
        _ => return None,
    };
    Some(factor)
}

/// The largest size: Docker keeps sizes in a signed 64-bit integer.
const MAX_BYTES: u64 = i64::MAX as u64;

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ByteSizeError::Empty);
        }
        if trimmed.starts_with('-') {
            return Err(ByteSizeError::BadNumber(text.to_owned()));
        }
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let unit = unit.trim();
        let factor = unit_factor(unit).ok_or_else(|| ByteSizeError::UnknownUnit {
            text: text.to_owned(),
            unit: unit.to_owned(),
        })?;
        if number.is_empty() || number == "." {
            return Err(ByteSizeError::BadNumber(text.to_owned()));
        }
        if let Ok(whole) = number.parse::<u64>() {
            return whole
                .checked_mul(factor)
                .filter(|bytes| *bytes <= MAX_BYTES)
                .map(ByteSize)
                .ok_or_else(|| ByteSizeError::Overflow(text.to_owned()));
        }
        let fractional: f64 = number
            .parse()
            .map_err(|_| ByteSizeError::BadNumber(text.to_owned()))?;
        let bytes = fractional * factor as f64;
        if !bytes.is_finite() || bytes > MAX_BYTES as f64 {
            return Err(ByteSizeError::Overflow(text.to_owned()));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.docker_string())
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.docker_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ByteSizeVisitor;

        impl Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a size such as \"512m\", \"2g\", \"2GB\" or \"2Gi\", or a number of bytes",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ByteSize, E> {
                value.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ByteSize, E> {
                if value > MAX_BYTES {
                    return Err(E::custom(ByteSizeError::Overflow(value.to_string())));
                }
                Ok(ByteSize(value))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ByteSize, E> {
                u64::try_from(value)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{value} is negative; a size cannot be")))
            }
        }

        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<u64, ByteSizeError> {
        text.parse::<ByteSize>().map(ByteSize::bytes)
    }

    #[test]
    fn docker_units_are_binary() {
        let gib = 1024 * 1024 * 1024;
        assert_eq!(parse("2GB"), Ok(2 * gib));
        assert_eq!(parse("2g"), Ok(2 * gib));
        assert_eq!(parse("2gb"), Ok(2 * gib));
        assert_eq!(parse("2Gi"), Ok(2 * gib));
        assert_eq!(parse("512m"), Ok(512 * 1024 * 1024));
        assert_eq!(parse("512MB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse("64k"), Ok(64 * 1024));
        assert_eq!(parse("100"), Ok(100));
        assert_eq!(parse("100b"), Ok(100));
        assert_eq!(parse("1.5g"), Ok(3 * gib / 2));
        assert_eq!(parse(" 1t "), Ok(1024 * gib));
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        assert_eq!(parse(""), Err(ByteSizeError::Empty));
        assert!(matches!(parse("2x"), Err(ByteSizeError::UnknownUnit { unit, .. }) if unit == "x"));
        assert!(matches!(parse("-2g"), Err(ByteSizeError::BadNumber(_))));
        assert!(matches!(parse("g"), Err(ByteSizeError::BadNumber(_))));
        assert!(matches!(parse("1.2.3g"), Err(ByteSizeError::BadNumber(_))));
        assert!(matches!(
            parse("99999999999p"),
            Err(ByteSizeError::Overflow(_))
        ));
        assert!(
            matches!(parse("8192p"), Err(ByteSizeError::Overflow(_))),
            "past i64"
        );
        assert_eq!(parse("8191p"), Ok(8191 << 50));
    }

    #[test]
    fn docker_string_round_trips() {
        for text in ["2g", "512m", "1536k", "7b", "3t"] {
            let size: ByteSize = text.parse().expect("parses");
            assert_eq!(size.docker_string(), text);
        }
    }

    #[test]
    fn deserializes_from_text_and_numbers() {
        let from_text: ByteSize = serde_json::from_str("\"2GB\"").expect("text");
        let from_number: ByteSize = serde_json::from_str("1024").expect("number");
        assert_eq!(from_text, ByteSize::from_gib(2));
        assert_eq!(from_number.bytes(), 1024);
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
        assert!(serde_json::from_str::<ByteSize>("\"2 bananas\"").is_err());
    }
}
