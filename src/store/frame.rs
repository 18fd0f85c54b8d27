//! Records framed as a JSON head followed by raw bytes, so a body is never base64'd into JSON nor
//! copied into it: a tag byte (records written before framing are all JSON, so they start with `{`), the
//! head's length (u32, little-endian), the head, the bytes. Used by the outbox (queued request bodies)
//! and by `entries` (small response bodies kept with their entry).

/// Frames `head` and `body` under `tag` in one allocation of the exact size. `None` for a head over
/// 4 GiB.
pub(super) fn frame(tag: u8, head: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(head.len()).ok()?;
    let mut out = Vec::with_capacity(5 + head.len() + body.len());
    out.push(tag);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(body);
    Some(out)
}

/// A record's head and raw bytes when it is framed under `tag`; a record of the older form is all head.
/// `None` when the record is cut inside its tag, length or head.
pub(super) fn split(tag: u8, plain: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    match plain.split_first() {
        Some((t, rest)) if *t == tag => {
            let (len, rest) = rest.split_at_checked(4)?;
            let len = u32::from_le_bytes(<[u8; 4]>::try_from(len).ok()?);
            let (head, body) = rest.split_at_checked(usize::try_from(len).ok()?)?;
            Some((head, Some(body)))
        }
        _ => Some((plain, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_records_split_back_and_older_or_cut_ones_are_told_apart() {
        let f = frame(0xB2, b"{\"a\":1}", b"\x00raw\xff").unwrap();
        assert_eq!(split(0xB2, &f), Some((&b"{\"a\":1}"[..], Some(&b"\x00raw\xff"[..]))));
        assert_eq!(split(0xB2, b"{\"a\":1}"), Some((&b"{\"a\":1}"[..], None)));
        assert_eq!(split(0xB1, &f), Some((&f[..], None)), "another tag is not this frame");
        assert_eq!(split(0xB2, &f[..3]), None, "cut inside the length");
        assert_eq!(split(0xB2, &f[..8]), None, "cut inside the head");
        let empty = frame(0xB2, b"{}", b"").unwrap();
        assert_eq!(split(0xB2, &empty), Some((&b"{}"[..], Some(&b""[..]))));
    }

    fn entry(blob: &crate::store::BlobId) -> crate::store::Entry {
        let names = ("api".into(), "api".into(), "/x".into());
        crate::store::Entry::stored(200, &http::HeaderMap::new(), blob, 0, names)
    }

    #[test]
    fn small_bodies_travel_with_their_entry_and_a_copy_that_does_not_match_is_never_served() {
        use crate::store::{Lookup, Store, INLINE_MAX};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let body = vec![b'j'; 1000];
        let mut w = store.blobs().begin().unwrap();
        w.write(&body).unwrap();
        let inline = w.take_inline();
        let blob = store.blobs().finish(w).unwrap();
        assert_eq!(inline.as_deref(), Some(&body[..]));
        let mut e = entry(&blob);
        e.inline = inline;
        store.commit_entry(b"k", b"k", &[], &e, &blob).unwrap();
        let raw = store.db.get_cf(store.cf("entries"), b"k").unwrap().unwrap();
        assert_eq!(raw[0], 0xB3, "framed: binary head, then the raw body");
        assert!(raw.ends_with(&body));
        store.forget(None);
        let Lookup::Entry(read) = store.lookup(b"k").unwrap() else {
            panic!("no entry")
        };
        assert_eq!(read.inline.as_deref(), Some(&body[..]));
        assert_eq!(store.usage().unwrap().0, 1);
        assert_eq!(store.verify(false).unwrap().problems(), 0);

        // The same length, other bytes: ignored on read (the blob answers), reported and dropped by verify.
        let mut bad = raw.clone();
        let last = bad.len() - 1;
        bad[last] = b'x';
        store.db.put_cf(store.cf("entries"), b"k", &bad).unwrap();
        store.forget(None);
        let Lookup::Entry(read) = store.lookup(b"k").unwrap() else {
            panic!("no entry")
        };
        assert_eq!(read.inline, None);
        assert_eq!(store.verify(false).unwrap().corrupt_inline_bodies, 1);
        store.verify(true).unwrap();
        assert_eq!(store.verify(false).unwrap().problems(), 0);
        store.forget(None);
        let Lookup::Entry(read) = store.lookup(b"k").unwrap() else {
            panic!("no entry")
        };
        assert_eq!(
            (read.inline.clone(), read.blob.clone()),
            (None, blob.hash.clone()),
            "the entry stays, without the copy"
        );

        // Larger bodies are not copied.
        let mut w = store.blobs().begin().unwrap();
        w.write(&vec![1u8; INLINE_MAX as usize]).unwrap();
        w.write(&[2u8]).unwrap();
        assert!(w.take_inline().is_none());
    }
}
