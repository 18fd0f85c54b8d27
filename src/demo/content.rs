//! The demo backend's generated content: audio bytes, tokens, snapshots, JSON answers, streamed and
//! deliberately broken bodies, and the single-range parser its media port uses.

use base64::Engine;
use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};

use crate::body::{self, BoxError, ProxyBody};

/// The bytes of audio file `id`: deterministic, `size` long, produced in chunks (never all in memory).
pub fn audio_bytes(id: &str, size: usize) -> impl Iterator<Item = Bytes> + Send + 'static {
    let mut seed = blake3::hash(id.as_bytes()).as_bytes()[..8]
        .iter()
        .fold(0u64, |a, &b| (a << 8) | u64::from(b));
    let mut left = size;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(64 * 1024);
        let mut chunk = Vec::with_capacity(n + 8);
        while chunk.len() < n {
            // splitmix64: cheap, deterministic filler that does not compress.
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            chunk.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        chunk.truncate(n);
        left -= n;
        Some(Bytes::from(chunk))
    })
}

/// A JWT-shaped bearer token for `user` (unsigned: the demo only needs the `sub` claim's shape).
pub fn make_token(user: &str, version: u64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(json!({"sub": user, "v": version}).to_string());
    format!("{header}.{payload}.sig{version}")
}

pub(super) fn json_resp(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(super) fn stream_body(
    chunks: impl Iterator<Item = Bytes> + Send + Sync + 'static,
    fail_after: Option<usize>,
) -> ProxyBody {
    let mut sent = 0usize;
    let mut failed = false;
    let mut chunks = chunks;
    let s = stream::iter(std::iter::from_fn(move || {
        if failed {
            return None;
        }
        if let Some(limit) = fail_after {
            if sent >= limit {
                failed = true;
                let e: BoxError = "demo backend: reset mid-body".into();
                return Some(Err(e));
            }
        }
        let c = chunks.next()?;
        sent += c.len();
        Some(Ok(Frame::data(c)))
    }));
    StreamBody::new(s).boxed()
}

/// Takes bytes `[start, end)` out of a chunk iterator.
pub(super) fn slice_chunks(
    chunks: impl Iterator<Item = Bytes> + Send + 'static,
    start: usize,
    end: usize,
) -> impl Iterator<Item = Bytes> + Send + 'static {
    let mut pos = 0usize;
    chunks
        .map_while(move |c| {
            let (cs, ce) = (pos, pos + c.len());
            pos = ce;
            if cs >= end {
                return None;
            }
            let a = start.saturating_sub(cs).min(c.len());
            let b = (end - cs).min(c.len());
            Some(c.slice(a..b))
        })
        .filter(|c| !c.is_empty())
}

/// A JSON snapshot of 50-500 KB, deterministic per message.
pub(super) fn snapshot(tid: &str, mid: &str) -> Response<ProxyBody> {
    let h = blake3::hash(format!("{tid}/{mid}").as_bytes());
    let target = 50_000 + (usize::from(h.as_bytes()[0]) * 450_000 / 255);
    let mut tracks = Vec::new();
    let mut approx = 0usize;
    let mut i = 0u32;
    while approx < target {
        let note = blake3::hash(&[h.as_bytes().as_slice(), &i.to_le_bytes()].concat())
            .to_hex()
            .to_string();
        approx += note.len() + 60;
        tracks.push(json!({"i": i, "clip": note, "gain": (i % 12) as f64 / 10.0}));
        i += 1;
    }
    let mut r = json_resp(
        StatusCode::OK,
        &json!({"thread_id": tid, "message_id": mid, "tracks": tracks}),
    );
    r.headers_mut().insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{}\"", &h.to_hex()[..16])).unwrap_or(HeaderValue::from_static("\"s\"")),
    );
    r
}

/// Re-streams a generated response but breaks its body halfway: half the bytes, then an error, with the
/// full Content-Length announced so the client sees a truncated body.
pub(super) fn truncate(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    use futures_util::StreamExt;
    let (mut parts, body) = resp.into_parts();
    let total = body_len_hint(&body);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    let limit = total / 2;
    let frames = http_body_util::BodyStream::new(body);
    // State: (frames, bytes sent, the next item is the error).
    let s = stream::unfold(
        (frames, 0usize, false),
        move |(mut frames, sent, fail_now)| async move {
            let reset = || -> BoxError { "demo backend: reset mid-body".into() };
            if fail_now {
                return None;
            }
            let data = match frames.next().await {
                Some(Ok(f)) => f.into_data().unwrap_or_default(),
                Some(Err(e)) => return Some((Err(e), (frames, sent, true))),
                None => Bytes::new(),
            };
            let keep = limit.saturating_sub(sent).min(data.len());
            if keep == 0 {
                return Some((Err(reset()), (frames, sent, true)));
            }
            Some((Ok(Frame::data(data.slice(..keep))), (frames, sent + keep, false)))
        },
    );
    Response::from_parts(parts, BodyExt::boxed(StreamBody::new(s)))
}

pub(super) fn body_len_hint(b: &ProxyBody) -> usize {
    use http_body::Body;
    b.size_hint().exact().unwrap_or(2) as usize
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size` → `[start, end)`; `Err` = unsatisfiable;
/// `None` = ignore the header (multi-range or malformed: answer 200).
pub(super) fn parse_single_range(v: &str, size: usize) -> Option<Result<(usize, usize), ()>> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: usize = b.parse().ok()?;
        if n == 0 {
            return Some(Err(()));
        }
        return Some(Ok((size.saturating_sub(n), size)));
    }
    let start: usize = a.parse().ok()?;
    let end = if b.is_empty() {
        size
    } else {
        b.parse::<usize>().ok()?.saturating_add(1).min(size)
    };
    if start >= size || start >= end {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}
