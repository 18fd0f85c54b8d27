//! The layout of an `entries` value (before sealing). A response entry is written as a compact binary
//! head framed with its inline body ([`super::frame`] under [`BINARY`]): reading it back on a cache hit
//! that missed the record cache is a few length-prefixed reads instead of a JSON parse, and its header
//! values are slices of one buffer instead of one allocation each. `Vary` field lists stay JSON. Values
//! written by older layouts (JSON, or JSON framed with an inline body) still read the same.
//!
//! Binary head, integers little-endian, text as a u32 length and its bytes: layout version (u8, 1),
//! status (u16), size, request time, response time (u64 each), flags (u8: invalidated, body dropped,
//! group present, inline body present), blob, kind, route, url, [group], the `Vary` values (u32 count,
//! name and value each), the header fields (u32 count, name and value each).

use bytes::Bytes;

use super::entry::{Entry, Record, StoredHeaders};

/// First byte of an entry in the binary layout.
const BINARY: u8 = 0xB3;
/// First byte of an entry's JSON framed with its inline body (the layout before [`BINARY`]).
const INLINE_FRAMED: u8 = 0xB2;
/// The binary head's layout version.
const LAYOUT: u8 = 1;

const INVALIDATED: u8 = 1;
const BODY_DROPPED: u8 = 2;
const GROUP: u8 = 4;
const INLINE: u8 = 8;

/// A record as stored (before sealing).
pub(super) fn encode(r: &Record) -> Vec<u8> {
    match r {
        Record::Entry(e) => {
            let head = binary_head(e);
            let body = e.inline.as_deref().unwrap_or_default();
            // A head over 4 GiB cannot come from one response; JSON is the fallback that still reads.
            super::frame::frame(BINARY, &head, body).unwrap_or_else(|| json(r))
        }
        Record::Vary(_) => json(r),
    }
}

fn json(r: &Record) -> Vec<u8> {
    // Serialising our own plain structs cannot fail.
    serde_json::to_vec(r).unwrap_or_default()
}

fn binary_head(e: &Entry) -> Vec<u8> {
    let headers = e.headers.map();
    let text: usize = [&e.blob, &e.kind, &e.route, &e.url].iter().map(|s| s.len() + 4).sum();
    let fields: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 8).sum();
    let mut out = Vec::with_capacity(40 + text + fields + e.group.as_ref().map_or(0, |g| g.len() + 4));
    out.push(LAYOUT);
    out.extend_from_slice(&e.status.to_le_bytes());
    for n in [e.size, e.request_time_ms, e.response_time_ms] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    let flags = [
        (e.invalidated, INVALIDATED),
        (e.body_dropped, BODY_DROPPED),
        (e.group.is_some(), GROUP),
        (e.inline.is_some(), INLINE),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .fold(0, |f, (_, bit)| f | bit);
    out.push(flags);
    for s in [&e.blob, &e.kind, &e.route, &e.url].into_iter().chain(e.group.as_ref()) {
        put(&mut out, s.as_bytes());
    }
    put_count(&mut out, e.vary.len());
    for (n, v) in &e.vary {
        put(&mut out, n.as_bytes());
        put(&mut out, v.as_bytes());
    }
    put_count(&mut out, headers.len());
    for (n, v) in headers {
        put(&mut out, n.as_str().as_bytes());
        put(&mut out, v.as_bytes());
    }
    out
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    // Field lengths come from one response's head, far below 4 GiB; a longer one is cut, not wrapped.
    let b = &b[..b.len().min(u32::MAX as usize)];
    put_count(out, b.len());
    out.extend_from_slice(b);
}

/// A stored (unsealed) record read back; with `with_body`, an entry's inline body too (scans of heads
/// copy none). An error names what was wrong.
pub(super) fn decode(plain: &[u8], with_body: bool) -> Result<Record, String> {
    match plain.first() {
        Some(&BINARY) => {
            let (head, body) = super::frame::split(BINARY, plain).ok_or("record cut short")?;
            // One copy for the head and the body after it (header values and the body are slices of it).
            let start = head.as_ptr() as usize - plain.as_ptr() as usize;
            let end = start + head.len() + if with_body { body.map_or(0, <[u8]>::len) } else { 0 };
            let kept = Bytes::copy_from_slice(plain.get(..end).ok_or("record cut short")?);
            let (mut e, inline) = decode_head(kept.slice(start..start + head.len())).ok_or("malformed entry record")?;
            let body = (inline && with_body && body.is_some()).then(|| kept.slice(start + head.len()..));
            e.inline = inline_body(&e, body);
            Ok(Record::Entry(e))
        }
        _ => {
            let (head, body) = super::frame::split(INLINE_FRAMED, plain).ok_or("record cut short")?;
            let mut r: Record = serde_json::from_slice(head).map_err(|e| e.to_string())?;
            if let Record::Entry(e) = &mut r {
                e.inline = inline_body(e, body.filter(|_| with_body).map(Bytes::copy_from_slice));
            }
            Ok(r)
        }
    }
}

/// The inline body to keep: only one that is exactly the entry's body (anything else is left to the blob).
fn inline_body(e: &Entry, body: Option<Bytes>) -> Option<Bytes> {
    body.filter(|b| b.len() as u64 == e.size && !e.body_dropped)
}

/// True when a stored (unsealed) value is an entry rather than a `Vary` list.
pub(super) fn is_entry(plain: &[u8]) -> bool {
    matches!(plain.first(), Some(&BINARY | &INLINE_FRAMED)) || plain.starts_with(b"{\"Entry\"")
}

/// Reads a binary head: the entry (without its inline body) and whether one follows the head.
fn decode_head(buf: Bytes) -> Option<(Entry, bool)> {
    let mut r = Reader { buf, at: 0 };
    if r.u8()? != LAYOUT {
        return None;
    }
    let status = u16::from_le_bytes(r.array()?);
    let size = u64::from_le_bytes(r.array()?);
    let request_time_ms = u64::from_le_bytes(r.array()?);
    let response_time_ms = u64::from_le_bytes(r.array()?);
    let flags = r.u8()?;
    let (blob, kind, route, url) = (r.text()?, r.text()?, r.text()?, r.text()?);
    let group = if flags & GROUP != 0 { Some(r.text()?) } else { None };
    let n = r.count()?;
    let mut vary = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        vary.push((r.text()?, r.text()?));
    }
    let n = r.count()?;
    let mut headers = http::HeaderMap::with_capacity(n.min(256));
    for _ in 0..n {
        let (name, value) = (r.bytes()?, r.bytes()?);
        // Invalid stored names or values are skipped, as in the JSON layout.
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&name),
            http::HeaderValue::from_maybe_shared(value),
        ) {
            headers.append(name, value);
        }
    }
    let entry = Entry {
        status,
        headers: StoredHeaders::from_map(headers),
        blob,
        size,
        request_time_ms,
        response_time_ms,
        vary,
        kind,
        route,
        url,
        invalidated: flags & INVALIDATED != 0,
        group,
        body_dropped: flags & BODY_DROPPED != 0,
        inline: None,
    };
    Some((entry, flags & INLINE != 0))
}

struct Reader {
    buf: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len())?;
        let out = self.buf.slice(self.at..end);
        self.at = end;
        Some(out)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        <[u8; N]>::try_from(&self.take(N)?[..]).ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }
    fn count(&mut self) -> Option<usize> {
        usize::try_from(u32::from_le_bytes(self.array()?)).ok()
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.count()?;
        self.take(n)
    }
    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
        h.append(http::header::SET_COOKIE, "a=1".parse().unwrap());
        h.append(http::header::SET_COOKIE, "b=2".parse().unwrap());
        h.insert("x-odd", http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        let blob = super::super::BlobId {
            hash: "ab".repeat(32),
            size: 3,
        };
        let mut e = Entry::stored(
            203,
            &h,
            &blob,
            1_700_000_000_123,
            ("api".into(), "r".into(), "/x?y".into()),
        );
        e.request_time_ms = 1_700_000_000_100;
        e.vary = vec![("accept-language".into(), "de".into())];
        e.group = Some("thread\0t1".into());
        e.invalidated = true;
        e.inline = Some(Bytes::from_static(b"abc"));
        e
    }

    #[test]
    fn entries_round_trip_in_the_binary_layout_and_heads_leave_the_body_out() {
        let e = entry();
        let plain = encode(&Record::Entry(e.clone()));
        assert_eq!(plain[0], BINARY);
        assert!(is_entry(&plain));
        let Ok(Record::Entry(back)) = decode(&plain, true) else {
            panic!("not an entry")
        };
        assert_eq!(back, e);
        let Ok(Record::Entry(head)) = decode(&plain, false) else {
            panic!("not an entry")
        };
        assert_eq!(head.inline, None);
        assert_eq!(
            Entry {
                inline: None,
                ..e.clone()
            },
            head
        );
        // Without an inline body, and with flags off.
        let plain = Entry {
            inline: None,
            group: None,
            invalidated: false,
            body_dropped: true,
            ..e
        };
        let Ok(Record::Entry(back)) = decode(&encode(&Record::Entry(plain.clone())), true) else {
            panic!()
        };
        assert_eq!(back, plain);
    }

    #[test]
    fn older_layouts_still_read_and_bad_records_are_errors_not_panics() {
        let e = entry();
        // JSON framed with the inline body (schema 3) and plain JSON (before it).
        let json = serde_json::to_vec(&Record::Entry(e.clone())).unwrap();
        let framed = super::super::frame::frame(INLINE_FRAMED, &json, b"abc").unwrap();
        let Ok(Record::Entry(back)) = decode(&framed, true) else {
            panic!()
        };
        assert_eq!(back, e);
        let Ok(Record::Entry(back)) = decode(&json, true) else {
            panic!()
        };
        assert_eq!(
            back,
            Entry {
                inline: None,
                ..e.clone()
            }
        );
        let vary = encode(&Record::Vary(vec!["accept".into()]));
        assert!(matches!(decode(&vary, true), Ok(Record::Vary(f)) if f == ["accept"]));
        assert!(!is_entry(&vary));
        // Every cut of a binary record, and a body that is not the entry's size, fail or drop cleanly.
        let plain = encode(&Record::Entry(e.clone()));
        for cut in 0..plain.len() - 3 {
            if let Ok(Record::Entry(r)) = decode(&plain[..cut], true) {
                assert_eq!(r.inline, None, "cut at {cut} kept a short body");
            }
        }
        let mut wrong = plain.clone();
        wrong.push(b'!');
        let Ok(Record::Entry(r)) = decode(&wrong, true) else {
            panic!()
        };
        assert_eq!(r.inline, None);
    }
}
