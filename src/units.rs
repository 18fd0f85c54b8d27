//! Units in the config file and its printed form: sizes (`"500MB"`), durations (`"5s"`), and how typed
//! values are shown again by `check-config`.

use std::fmt;
use std::time::Duration;

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"30d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); examples: \"250ms\", \"5s\", \"30d\""))
}

/// Parses `"500MB"`, `"1GiB"`, `"1048576"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?} ({e}); examples: \"500MB\", \"2GiB\""))
}

/// A size for people, in the units the config takes (`328 B`, `1.5 MB`, `500 MB`, `2 GB`; SI, as
/// `"500MB"` in a config means 500,000,000 bytes).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["KB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    let text = format!("{v:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// Serializes with `Display`.
pub fn ser_display<S: serde::Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Serializes a duration as the config spells it (`"5s"`).
pub fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Serializes an optional duration (`null` when unset).
pub fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// Serializes methods as their names.
pub fn ser_methods<S: serde::Serializer>(m: &[http::Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(|m| m.as_str()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_for_people() {
        use super::human_size;
        assert_eq!(human_size(328), "328 B");
        assert_eq!(human_size(1_500_000), "1.5 MB");
        assert_eq!(human_size(500_000_000), "500 MB");
        assert_eq!(human_size(999_999), "1 MB");
        assert_eq!(human_size(2_000_000_000), "2 GB");
    }
}
