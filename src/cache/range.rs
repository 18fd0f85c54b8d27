//! Byte ranges of stored responses (RFC 9110 §14): which part of a stored body a request asks for.
//!
//! Single ranges (`a-b`, `a-`, `-n`) get a 206; several ranges are answered with the whole body (200),
//! which §14.2 allows and players never need; an unsatisfiable range gets a 416 with `bytes */N`; an
//! `If-Range` that does not match the stored validator (strong ETag or exact Last-Modified) gets the
//! whole body. Malformed Range headers are ignored, as §14.2 requires.

use http::{header, HeaderMap};

/// What to send for a (possibly) ranged request on a stored body of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole body, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// §13.1.5: If-Range matches only a strong ETag equal to the stored one, or a date equal to the stored
/// Last-Modified.
fn if_range_matches(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(v) = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') {
        return stored
            .get(header::ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|e| !e.starts_with("W/") && e == v);
    }
    if v.starts_with("W/") {
        return false;
    }
    stored
        .get(header::LAST_MODIFIED)
        .and_then(|lm| lm.to_str().ok())
        .is_some_and(|lm| lm == v)
}

/// Decides the answer for `req` against a stored 200 of `size` bytes with `stored` headers.
pub fn decide(req: &HeaderMap, stored: &HeaderMap, size: u64) -> RangeAnswer {
    let Some(range) = req.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Full;
    };
    if !if_range_matches(req, stored) {
        return RangeAnswer::Full;
    }
    let parsed = match http_range_header::parse_range_header(range) {
        Ok(p) => p,
        Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => return RangeAnswer::Unsatisfiable,
        Err(_) => return RangeAnswer::Full,
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => RangeAnswer::Partial {
            start: *ranges[0].start(),
            end: *ranges[0].end(),
        },
        Ok(_) => RangeAnswer::Full,
        Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => RangeAnswer::Unsatisfiable,
        Err(_) => RangeAnswer::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn range_forms_rfc9110_14() {
        let stored = h(&[("etag", "\"v1\""), ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT")]);
        let p = |start, end| RangeAnswer::Partial { start, end };
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, RangeAnswer);
        let cases: Vec<Case> = vec![
            ("no Range", vec![], RangeAnswer::Full),
            ("closed", vec![("range", "bytes=0-99")], p(0, 99)),
            ("open-ended", vec![("range", "bytes=900-")], p(900, 999)),
            ("suffix", vec![("range", "bytes=-100")], p(900, 999)),
            ("suffix longer than the body", vec![("range", "bytes=-5000")], p(0, 999)),
            (
                "end past the body is clamped",
                vec![("range", "bytes=990-5000")],
                p(990, 999),
            ),
            (
                "start past the body: 416",
                vec![("range", "bytes=1000-")],
                RangeAnswer::Unsatisfiable,
            ),
            (
                "several ranges: whole body",
                vec![("range", "bytes=0-1,5-6")],
                RangeAnswer::Full,
            ),
            ("malformed: ignored", vec![("range", "bytes=abc")], RangeAnswer::Full),
            ("other unit: ignored", vec![("range", "items=0-1")], RangeAnswer::Full),
            (
                "If-Range strong ETag match",
                vec![("range", "bytes=0-9"), ("if-range", "\"v1\"")],
                p(0, 9),
            ),
            (
                "If-Range ETag mismatch: whole",
                vec![("range", "bytes=0-9"), ("if-range", "\"v2\"")],
                RangeAnswer::Full,
            ),
            (
                "If-Range weak: whole",
                vec![("range", "bytes=0-9"), ("if-range", "W/\"v1\"")],
                RangeAnswer::Full,
            ),
            (
                "If-Range date match",
                vec![("range", "bytes=0-9"), ("if-range", "Mon, 02 Nov 2026 10:00:00 GMT")],
                p(0, 9),
            ),
        ];
        for (name, req, want) in cases {
            assert_eq!(decide(&h(&req), &stored, 1000), want, "{name}");
        }
    }
}
