//! Content codings (RFC 9110 §8.4): what `Content-Encoding` an answer has, what `Accept-Encoding` a
//! client takes, and bounded decoding of `gzip`, `deflate` (zlib), `br` and `zstd`.
//!
//! Outpost stores an upstream's answer in the coding the upstream chose (a gzipped JSON snapshot costs
//! its compressed size on disk) and adapts on the way out: a client that does not accept the stored
//! coding gets the body decoded as it streams ([`decode_body`]), so one stored answer serves every
//! client and `Accept-Encoding` takes no part in `Vary` matching. Hooks that must read JSON decode it in
//! memory within the route's limit ([`decode_bounded`]).
//!
//! Promises: decoding never holds more than a chunk (streaming) or the caller's limit (in memory); an
//! input that inflates past [`MAX_RATIO`]× its size plus [`RATIO_SLACK`] is a decompression bomb and
//! fails (a 502 where the head is not sent yet, an aborted body where it is).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::body::{BoxError, ProxyBody};

/// Decoded bytes may be at most this many times the encoded bytes read so far (plus the slack), like
/// Apache's `DeflateInflateRatioLimit`; real JSON and text stay far below it.
pub const MAX_RATIO: u64 = 200;
/// Decoded bytes allowed beyond the ratio (small inputs inflate by large factors legitimately).
pub const RATIO_SLACK: u64 = 1 << 20;

/// A content coding Outpost can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate`: the zlib format (RFC 9110 §8.4.1.2).
    Deflate,
    /// `br`.
    Brotli,
    /// `zstd`.
    Zstd,
}

impl Coding {
    /// The token as sent in `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }

    fn parse(token: &str) -> Option<Coding> {
        let t = token.trim();
        [
            ("gzip", Coding::Gzip),
            ("x-gzip", Coding::Gzip),
            ("deflate", Coding::Deflate),
            ("br", Coding::Brotli),
            ("zstd", Coding::Zstd),
        ]
        .into_iter()
        .find_map(|(name, c)| t.eq_ignore_ascii_case(name).then_some(c))
    }
}

/// What a `Content-Encoding` field says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentCoding {
    /// None (or `identity`).
    Identity,
    /// One coding Outpost can decode.
    Known(Coding),
    /// Several codings, or one Outpost does not know: passed on as it is.
    Other(String),
}

/// The coding of a message from its `Content-Encoding` field(s).
pub fn content_coding(headers: &HeaderMap) -> ContentCoding {
    let tokens: Vec<String> = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty() && t != "identity")
        .collect();
    match tokens.as_slice() {
        [] => ContentCoding::Identity,
        [one] => Coding::parse(one).map_or_else(|| ContentCoding::Other(one.clone()), ContentCoding::Known),
        _ => ContentCoding::Other(tokens.join(", ")),
    }
}

/// True when a request's `Accept-Encoding` allows `coding` (RFC 9110 §12.5.3: listed or `*` with a
/// non-zero weight, and not refused by name; no field at all means "anything", but we read that as
/// identity only, since apps that accept codings say so and some HTTP stacks omit the field without
/// decoding).
pub fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    let mut star = None;
    let mut named = None;
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let weight = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let allowed = weight > 0.0;
        if name == "*" {
            star = Some(allowed);
        } else if name.eq_ignore_ascii_case(coding) || (coding == "gzip" && name.eq_ignore_ascii_case("x-gzip")) {
            named = Some(allowed);
        }
    }
    named.or(star).unwrap_or(false)
}

/// The coding a stored or forwarded answer must be decoded from for this request: a coding Outpost can
/// decode that the request does not accept.
pub fn must_decode(resp: &HeaderMap, req: &HeaderMap) -> Option<Coding> {
    match content_coding(resp) {
        ContentCoding::Known(c) if !accepts(req, c.as_str()) => Some(c),
        _ => None,
    }
}

/// Counts bytes passing through a stream.
struct Counted<S> {
    inner: S,
    count: Arc<AtomicU64>,
}

impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Stream for Counted<S> {
    type Item = io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(b))) = &polled {
            self.count.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        polled
    }
}

/// A decoder over any buffered reader.
type Decoder = Pin<Box<dyn AsyncRead + Send + Sync>>;

fn decoder<R: AsyncBufRead + Send + Sync + 'static>(coding: Coding, input: R) -> Decoder {
    match coding {
        Coding::Gzip => {
            let mut d = GzipDecoder::new(input);
            d.multiple_members(true);
            Box::pin(d)
        }
        Coding::Deflate => Box::pin(ZlibDecoder::new(input)),
        Coding::Brotli => Box::pin(BrotliDecoder::new(input)),
        // RFC 9659 §3: the `zstd` coding uses windows of at most 8 MiB; a larger one is refused
        // instead of allocated.
        Coding::Zstd => Box::pin(ZstdDecoder::with_params(
            input,
            &[async_compression::zstd::DParameter::window_log_max(23)],
        )),
    }
}

/// Why a decode stopped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not valid for the coding (or the body broke).
    #[error("{coding} body could not be decoded: {reason}")]
    Invalid {
        /// Coding.
        coding: &'static str,
        /// Cause.
        reason: String,
    },
    /// Decompression bomb.
    #[error("{coding} body inflates past {MAX_RATIO}x its size ({decoded} bytes from {encoded})")]
    Bomb {
        /// Coding.
        coding: &'static str,
        /// Decoded so far.
        decoded: u64,
        /// Encoded bytes read so far.
        encoded: u64,
    },
}

fn ratio_exceeded(decoded: u64, encoded: u64) -> bool {
    decoded > encoded.saturating_mul(MAX_RATIO).saturating_add(RATIO_SLACK)
}

/// Reads a ratio-guarded decoder to its end, keeping at most `keep` bytes; the total is returned with
/// them (`Ok((kept, total))`, where `total > kept.len()` means the rest was counted, not kept).
async fn drain(mut d: Decoder, coding: Coding, encoded: &AtomicU64, keep: u64) -> Result<(Vec<u8>, u64), DecodeError> {
    let mut kept = Vec::new();
    let mut total: u64 = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = d.read(&mut chunk).await.map_err(|e| DecodeError::Invalid {
            coding: coding.as_str(),
            reason: e.to_string(),
        })?;
        if n == 0 {
            return Ok((kept, total));
        }
        total += n as u64;
        let enc = encoded.load(Ordering::Relaxed);
        if ratio_exceeded(total, enc) {
            return Err(DecodeError::Bomb {
                coding: coding.as_str(),
                decoded: total,
                encoded: enc,
            });
        }
        let room = keep.saturating_sub(kept.len() as u64) as usize;
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Decodes an in-memory body. `Ok(Some(bytes))` when it decodes to at most `max` bytes, `Ok(None)` when
/// it is valid but larger (the caller passes it on undecoded), `Err` when it is broken or a bomb.
pub async fn decode_bounded(coding: Coding, encoded: Bytes, max: u64) -> Result<Option<Vec<u8>>, DecodeError> {
    let len = AtomicU64::new(encoded.len() as u64);
    let reader = io::Cursor::new(encoded);
    let (kept, total) = drain(decoder(coding, tokio::io::BufReader::new(reader)), coding, &len, max).await?;
    Ok((total <= max).then_some(kept))
}

/// A body decoded as it streams, with the ratio guard (a bomb ends the body with an error).
pub fn decode_body(coding: Coding, body: ProxyBody) -> ProxyBody {
    let encoded = Arc::new(AtomicU64::new(0));
    let input = Counted {
        inner: BodyStream::new(body)
            .try_filter_map(|f| futures_util::future::ready(Ok(f.into_data().ok())))
            .map_err(|e: BoxError| io::Error::other(e)),
        count: encoded.clone(),
    };
    let reader = StreamReader::new(input);
    let mut decoded: u64 = 0;
    let out = ReaderStream::new(decoder(coding, reader)).map(move |chunk| {
        let chunk = chunk.map_err(|e| -> BoxError { Box::new(e) })?;
        decoded += chunk.len() as u64;
        let enc = encoded.load(Ordering::Relaxed);
        if ratio_exceeded(decoded, enc) {
            return Err(Box::new(DecodeError::Bomb {
                coding: coding.as_str(),
                decoded,
                encoded: enc,
            }) as BoxError);
        }
        Ok(Frame::data(chunk))
    });
    BodyExt::boxed(StreamBody::new(out))
}

/// Checks a coded body while it is stored: the chunks fed in are decoded on a task of their own and
/// counted, never kept, so a body that is not valid for its coding or inflates like a bomb is known
/// before the entry is committed (and is not stored).
pub struct Check {
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

impl Check {
    /// Starts checking a body in `coding`.
    pub fn spawn(coding: Coding) -> Check {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let input = futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|b| b.map(|b| Ok::<_, BoxError>(Frame::data(b))))
        });
        let task = tokio::spawn(async move {
            let mut body = decode_body(coding, BodyExt::boxed(StreamBody::new(input)));
            let mut decoded = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => decoded += f.into_data().map_or(0, |d| d.len() as u64),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(decoded)
        });
        Check { tx: Some(tx), task }
    }

    /// Feeds the next chunk; `false` once the check has failed (see [`Check::finish`] for why).
    pub async fn feed(&mut self, chunk: Bytes) -> bool {
        match &self.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        }
    }

    /// Ends the input and waits for the verdict: the decoded size, or why the body is refused.
    pub async fn finish(mut self) -> Result<u64, String> {
        self.tx = None;
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(format!("decode check failed: {e}")),
        }
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Turns a response head for a decoded body: no `Content-Encoding`/`Content-Length` (the length is the
/// decoded one, unknown up front), a weakened strong `ETag` (the bytes are not the upstream's), and
/// `Vary: Accept-Encoding` (the answer depends on it).
pub fn mark_decoded(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    weaken_etag(headers);
    add_vary_accept_encoding(headers);
}

/// `ETag: "x"` becomes `W/"x"` (RFC 9110 §8.8.3: a transformed representation is not byte-identical).
pub fn weaken_etag(headers: &mut HeaderMap) {
    if let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) {
        if !etag.starts_with("W/") {
            if let Ok(weak) = HeaderValue::from_str(&format!("W/{etag}")) {
                headers.insert(header::ETAG, weak);
            }
        }
    }
}

/// Adds `Accept-Encoding` to `Vary` unless it is there (or `Vary: *`).
pub fn add_vary_accept_encoding(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| {
            let f = f.trim();
            f == "*" || f.eq_ignore_ascii_case("accept-encoding")
        });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder};

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    async fn encode(coding: Coding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let r: Pin<Box<dyn AsyncRead + Send>> = match coding {
            Coding::Gzip => Box::pin(GzipEncoder::new(data)),
            Coding::Deflate => Box::pin(ZlibEncoder::new(data)),
            Coding::Brotli => Box::pin(BrotliEncoder::new(data)),
            Coding::Zstd => Box::pin(ZstdEncoder::new(data)),
        };
        let mut r = r;
        r.read_to_end(&mut out).await.unwrap();
        out
    }

    #[test]
    fn accept_encoding_weights_star_and_refusals() {
        assert!(accepts(&h(&[("accept-encoding", "gzip, deflate, br")]), "br"));
        assert!(accepts(&h(&[("accept-encoding", "GZIP;q=0.5")]), "gzip"));
        assert!(!accepts(&h(&[("accept-encoding", "gzip;q=0")]), "gzip"));
        assert!(!accepts(&h(&[("accept-encoding", "*;q=1, gzip;q=0")]), "gzip"));
        assert!(accepts(&h(&[("accept-encoding", "*")]), "zstd"));
        assert!(accepts(&h(&[("accept-encoding", "x-gzip")]), "gzip"));
        assert!(!accepts(&h(&[("accept-encoding", "identity")]), "gzip"));
        assert!(!accepts(&HeaderMap::new(), "gzip"), "no field: identity only");
    }

    #[test]
    fn content_coding_of_a_message() {
        assert_eq!(content_coding(&HeaderMap::new()), ContentCoding::Identity);
        assert_eq!(
            content_coding(&h(&[("content-encoding", "identity")])),
            ContentCoding::Identity
        );
        assert_eq!(
            content_coding(&h(&[("content-encoding", "GZip")])),
            ContentCoding::Known(Coding::Gzip)
        );
        assert_eq!(
            content_coding(&h(&[("content-encoding", "br")])),
            ContentCoding::Known(Coding::Brotli)
        );
        assert_eq!(
            content_coding(&h(&[("content-encoding", "gzip"), ("content-encoding", "br")])),
            ContentCoding::Other("gzip, br".into())
        );
        assert_eq!(
            content_coding(&h(&[("content-encoding", "compress")])),
            ContentCoding::Other("compress".into())
        );
    }

    #[tokio::test]
    async fn every_coding_round_trips_in_memory_and_streaming() {
        let data: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("{{\"n\":{i}}},").into_bytes())
            .collect();
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd] {
            let enc = encode(coding, &data).await;
            assert!(enc.len() < data.len() / 3, "{coding:?} compresses");
            let dec = decode_bounded(coding, Bytes::from(enc.clone()), 1 << 30)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(dec, data, "{coding:?} in memory");
            assert_eq!(
                decode_bounded(coding, Bytes::from(enc.clone()), 1000).await.unwrap(),
                None,
                "{coding:?}: larger than the limit is not an error"
            );
            // Streaming, fed in small pieces.
            let pieces: Vec<Result<Frame<Bytes>, BoxError>> = enc
                .chunks(777)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(pieces)));
            let out = decode_body(coding, body).collect().await.unwrap().to_bytes();
            assert_eq!(out.as_ref(), data.as_slice(), "{coding:?} streaming");
        }
        let broken = decode_bounded(Coding::Gzip, Bytes::from_static(b"not gzip at all"), 1 << 20).await;
        assert!(matches!(broken, Err(DecodeError::Invalid { .. })), "{broken:?}");
    }

    #[tokio::test]
    async fn a_bomb_is_refused_in_memory_and_ends_the_stream() {
        let zeros = vec![b' '; 300 << 20];
        for coding in [Coding::Gzip, Coding::Zstd] {
            let bomb = encode(coding, &zeros).await;
            assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
            let r = decode_bounded(coding, Bytes::from(bomb.clone()), 4 << 20).await;
            assert!(matches!(r, Err(DecodeError::Bomb { .. })), "{coding:?}: {r:?}");
            let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter([Ok::<_, BoxError>(
                Frame::data(Bytes::from(bomb)),
            )])));
            let mut decoded = 0usize;
            let mut body = decode_body(coding, body);
            let mut failed = false;
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => decoded += f.into_data().map(|d| d.len()).unwrap_or(0),
                    Err(e) => {
                        assert!(e.to_string().contains("inflates past"), "{e}");
                        failed = true;
                        break;
                    }
                }
            }
            assert!(failed, "{coding:?}: the stream ends with an error");
            assert!(decoded < 300 << 20, "{coding:?}: stopped early ({decoded} bytes)");
        }
    }

    #[tokio::test]
    async fn the_store_check_passes_good_bodies_and_refuses_bombs_and_garbage() {
        let data = vec![b'x'; 100_000];
        let good = encode(Coding::Brotli, &data).await;
        let mut c = Check::spawn(Coding::Brotli);
        for piece in good.chunks(100) {
            assert!(c.feed(Bytes::copy_from_slice(piece)).await);
        }
        assert_eq!(c.finish().await, Ok(100_000));

        let bomb = encode(Coding::Gzip, &vec![0u8; 200 << 20]).await;
        let mut c = Check::spawn(Coding::Gzip);
        let mut fed = 0;
        for piece in bomb.chunks(16 * 1024) {
            if !c.feed(Bytes::copy_from_slice(piece)).await {
                break;
            }
            fed += 1;
        }
        let verdict = c.finish().await;
        assert!(
            verdict.as_ref().is_err_and(|e| e.contains("inflates past")),
            "{verdict:?} after {fed} chunks"
        );

        let mut c = Check::spawn(Coding::Zstd);
        c.feed(Bytes::from_static(b"plainly not zstd")).await;
        assert!(c.finish().await.is_err());
    }

    #[test]
    fn decoded_heads_lose_length_and_coding_and_vary_on_it() {
        let mut m = h(&[
            ("content-encoding", "gzip"),
            ("content-length", "10"),
            ("etag", "\"abc\""),
            ("vary", "Origin"),
        ]);
        mark_decoded(&mut m);
        assert!(!m.contains_key("content-encoding") && !m.contains_key("content-length"));
        assert_eq!(m["etag"], "W/\"abc\"");
        let vary: Vec<_> = m.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        mark_decoded(&mut m);
        assert_eq!(m.get_all("vary").iter().count(), 2, "added once");
    }
}
