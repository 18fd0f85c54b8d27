//! Media URL rewriting: absolute URLs of media upstreams inside JSON answers become Outpost URLs, so an
//! unmodified app fetches its audio through Outpost (and so from the cache when offline).
//!
//! Promises: JSON is parsed and re-serialised, never patched as text, so the result is always valid JSON;
//! a body that is not JSON, or larger than the route's `rewrite_max` (coded or decoded), passes through
//! untouched; a coded body (`gzip`, `deflate`, `br`, `zstd`) is decoded within that limit and sent on
//! decoded (the app talks to Outpost over loopback, where compression buys nothing); when the body
//! changes, `Content-Length` is recomputed and a strong `ETag` is weakened (the bytes differ from the
//! origin's representation).

use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt};
use http::{header, HeaderValue, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::Value;

use crate::body::ProxyBody;
use crate::encoding::{content_coding, decode_bounded, mark_decoded, weaken_etag, ContentCoding};

/// One media rewrite rule: `https://media.host/base/...` → `<client's host><local_prefix>/...`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MediaRewrite {
    /// Upstream whose absolute URLs are rewritten.
    pub upstream: String,
    /// Its URL as text, without a trailing slash (what is matched).
    pub origin: String,
    /// The local path prefix routed to it (the route's strip_prefix).
    pub local_prefix: String,
}

/// Rewrites every string in `v` that starts with a rule's origin; returns how many changed.
pub fn rewrite_value(v: &mut Value, rules: &[MediaRewrite], local_base: &str) -> usize {
    match v {
        Value::String(s) => {
            for r in rules {
                if let Some(rest) = s.strip_prefix(r.origin.as_str()) {
                    if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') {
                        *s = format!("{local_base}{}{rest}", r.local_prefix);
                        return 1;
                    }
                }
            }
            0
        }
        Value::Array(a) => a.iter_mut().map(|x| rewrite_value(x, rules, local_base)).sum(),
        Value::Object(o) => o.values_mut().map(|x| rewrite_value(x, rules, local_base)).sum(),
        _ => 0,
    }
}

/// Rewrites JSON bytes; `None` when they are not JSON or nothing matched.
pub fn rewrite_json(bytes: &[u8], rules: &[MediaRewrite], local_base: &str) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    if rewrite_value(&mut v, rules, local_base) == 0 {
        return None;
    }
    serde_json::to_vec(&v).ok()
}

fn is_json(resp: &Response<ProxyBody>) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("application/json") || (ct.starts_with("application/") && ct.contains("+json"))
        })
}

/// What [`buffer_json`] made of an answer.
pub enum Buffered {
    /// The JSON text, decoded when the answer was coded (the head then says so: no `Content-Encoding`,
    /// weak `ETag`, `Vary: Accept-Encoding`).
    Json(http::response::Parts, Bytes),
    /// Not for us (not JSON, an unknown coding, too large, or broken: a broken body keeps its error).
    Untouched(Response<ProxyBody>),
    /// A coded body that does not decode, or inflates like a bomb: upstream garbage (why).
    Refused(String),
}

/// Reads a JSON answer of at most `max` bytes (coded and decoded) into memory.
pub async fn buffer_json(resp: Response<ProxyBody>, max: u64) -> Buffered {
    if !is_json(&resp) {
        return Buffered::Untouched(resp);
    }
    let coding = match content_coding(resp.headers()) {
        ContentCoding::Identity => None,
        ContentCoding::Known(c) => Some(c),
        ContentCoding::Other(_) => return Buffered::Untouched(resp),
    };
    let (parts, raw) = match buffer(resp, max).await {
        Ok(v) => v,
        Err(Unbuffered::TooLarge(untouched)) => return Buffered::Untouched(untouched),
        // A coded body the store refused (it does not decode, or inflates like a bomb) breaks before
        // its end: nothing was sent yet, so the app gets a clean 502.
        Err(Unbuffered::Broken(_, reason)) if coding.is_some() => return Buffered::Refused(reason),
        Err(Unbuffered::Broken(resp, _)) => return Buffered::Untouched(resp),
    };
    let Some(coding) = coding else {
        return Buffered::Json(parts, raw);
    };
    match decode_bounded(coding, raw.clone(), max).await {
        Ok(Some(text)) => {
            let mut parts = parts;
            mark_decoded(&mut parts.headers);
            Buffered::Json(parts, Bytes::from(text))
        }
        // Valid, but larger than the route looks into: on as it came.
        Ok(None) => Buffered::Untouched(Response::from_parts(parts, crate::body::full(raw))),
        Err(e) => Buffered::Refused(e.to_string()),
    }
}

/// Why a body was not buffered; the answer is given back either way.
enum Unbuffered {
    /// Larger than the limit: the bytes read so far and the rest, untouched.
    TooLarge(Response<ProxyBody>),
    /// The body broke (the bytes so far, then the error), and why.
    Broken(Response<ProxyBody>, String),
}

/// Reads a body of at most `max` bytes; `Err` gives the answer back (too large, or broken).
async fn buffer(resp: Response<ProxyBody>, max: u64) -> Result<(http::response::Parts, Bytes), Unbuffered> {
    let declared: Option<u64> = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(Unbuffered::TooLarge(resp));
    }
    let (parts, mut body) = resp.into_parts();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                let Ok(d) = f.into_data() else { continue };
                if buf.len() as u64 + d.len() as u64 > max {
                    // Too big after all: pass what was read and the rest through untouched.
                    let head = stream::iter([Ok(Frame::data(buf.freeze())), Ok(Frame::data(d))]);
                    let rest = http_body_util::BodyStream::new(body);
                    return Err(Unbuffered::TooLarge(Response::from_parts(
                        parts,
                        BodyExt::boxed(StreamBody::new(head.chain(rest))),
                    )));
                }
                buf.extend_from_slice(&d);
            }
            Err(e) => {
                // Keep the failure visible to the client: the bytes so far, then the error.
                let reason = e.to_string();
                let head = stream::iter([Ok(Frame::data(buf.freeze())), Err(e)]);
                let resp = Response::from_parts(parts, BodyExt::boxed(StreamBody::new(head)));
                return Err(Unbuffered::Broken(resp, reason));
            }
        }
    }
    Ok((parts, buf.freeze()))
}

/// Applies `rules` to buffered JSON and rebuilds the answer (Content-Length fixed, ETag weakened when the
/// bytes changed).
pub fn rewritten(
    mut parts: http::response::Parts,
    original: Bytes,
    rules: &[MediaRewrite],
    local_base: &str,
) -> Response<ProxyBody> {
    let out: Bytes = match rewrite_json(&original, rules, local_base) {
        Some(v) => {
            weaken_etag(&mut parts.headers);
            Bytes::from(v)
        }
        None => original,
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Response::from_parts(parts, crate::body::full(out))
}

/// The local request target for a media URL: through the rules' prefixes for absolute URLs of a media
/// upstream; local paths are taken as they are.
pub fn local_target(url: &str, rules: &[MediaRewrite]) -> Option<String> {
    if url.starts_with('/') {
        return Some(url.to_string());
    }
    rules.iter().find_map(|r| {
        let rest = url.strip_prefix(r.origin.as_str())?;
        (rest.starts_with('/') || rest.starts_with('?')).then(|| format!("{}{rest}", r.local_prefix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Vec<MediaRewrite> {
        vec![MediaRewrite {
            upstream: "media".into(),
            origin: "https://bucket.s3.example.com".into(),
            local_prefix: "/media/s3".into(),
        }]
    }

    #[test]
    fn nested_urls_are_rewritten_and_the_json_stays_valid() {
        let src = json!({
            "messages": [{"renders": [{"audio_file_id": "a1", "url": "https://bucket.s3.example.com/r/1.mp3?X-Amz-Signature=a%2Fb&x=\"q\""}]}],
            "other": "https://bucket.s3.example.com.evil.net/x",
            "exact": "https://bucket.s3.example.com",
            "n": 1
        });
        let out = rewrite_json(src.to_string().as_bytes(), &rules(), "http://127.0.0.1:8787").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["messages"][0]["renders"][0]["url"],
            "http://127.0.0.1:8787/media/s3/r/1.mp3?X-Amz-Signature=a%2Fb&x=\"q\""
        );
        assert_eq!(
            v["other"], "https://bucket.s3.example.com.evil.net/x",
            "a longer host is not a match"
        );
        assert_eq!(v["exact"], "http://127.0.0.1:8787/media/s3");
        assert_eq!(v["n"], 1);
    }

    #[test]
    fn non_json_and_unmatched_bodies_are_left_alone() {
        assert!(rewrite_json(b"not json https://bucket.s3.example.com/x", &rules(), "http://h").is_none());
        assert!(rewrite_json(br#"{"url":"https://elsewhere/x"}"#, &rules(), "http://h").is_none());
    }
}
