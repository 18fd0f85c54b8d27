//! Encryption at rest (optional): the formats of sealed records and sealed blob files, and the keys
//! derived from the one configured master key.
//!
//! Promises: with a key, no response body, stored response header block or queued request (with its
//! headers and body) is written to the data dir in clear; every byte read back is authenticated, so a
//! changed, truncated, reordered or swapped chunk, record or file is an error and never served; blob
//! names are keyed hashes, so equal names do not reveal known content to someone without the key; a
//! wrong key is refused when the store opens (a check value), before anything is read or served.
//!
//! Cipher: XChaCha20-Poly1305 (RustCrypto). Its 24-byte nonces are safe to pick at random per record,
//! and a blob's 16 random bytes plus a chunk number make each chunk's nonce unique.
//!
//! Sealed blob file: `OPB1` | 16-byte nonce prefix | the blob's 32-byte name sealed (48 bytes) | chunks.
//! Chunk `i` holds plaintext bytes `i*64KiB..` sealed under nonce `prefix | i` with the top bit of `i`
//! marking the last chunk (so a file cut at a chunk boundary fails). Any range is read by opening only
//! the chunks it covers. The sealed name binds the file to its name: a file copied under another
//! blob's name fails to open.

use std::io;

use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Plaintext bytes per sealed chunk.
pub const CHUNK: usize = 64 * 1024;
/// Poly1305 tag.
const TAG: usize = 16;
const MAGIC: &[u8; 4] = b"OPB1";
const PREFIX: usize = 16;
/// Length of a sealed blob file's header.
pub const HEADER: usize = MAGIC.len() + PREFIX + 32 + TAG;
/// Record nonce length.
const NONCE: usize = 24;
/// Chunk number reserved for the sealed name in the header.
const NAME_INDEX: u64 = u64::MAX >> 1;
const LAST: u64 = 1 << 63;

/// The master key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// Parses a 32-byte key written as 64 hex digits or as base64 (`openssl rand -hex 32` or `-base64 32`).
pub fn parse_key(text: &str) -> Result<[u8; 32], KeyError> {
    use base64::Engine;
    let t = text.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut k = [0u8; 32];
        for (i, pair) in t.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|e| KeyError(e.to_string()))?;
            k[i] = u8::from_str_radix(hex, 16).map_err(|e| KeyError(e.to_string()))?;
        }
        return Ok(k);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(t)
        .map_err(|_| KeyError("not 64 hex digits and not base64".into()))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| KeyError(format!("decodes to {} bytes, a key is 32 bytes", bytes.len())))
}

/// Ciphers and keys derived from the master key. The master key itself is not kept.
pub struct AtRest {
    blobs: XChaCha20Poly1305,
    records: XChaCha20Poly1305,
    names: [u8; 32],
    check: String,
}

impl std::fmt::Debug for AtRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtRest(..)")
    }
}

fn cipher(key: [u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&key.into())
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} failed authentication (wrong key, or changed on disk)"),
    )
}

impl AtRest {
    /// Derives every key from `master` (BLAKE3 key derivation, one context string per use).
    pub fn new(master: &[u8; 32]) -> AtRest {
        let derive = |context: &str| blake3::derive_key(context, master);
        AtRest {
            blobs: cipher(derive("outpost 2026-11-25 blob contents")),
            records: cipher(derive("outpost 2026-11-25 records")),
            names: derive("outpost 2026-11-25 blob names"),
            check: blake3::Hash::from(derive("outpost 2026-11-25 key check"))
                .to_hex()
                .to_string(),
        }
    }

    /// A value that identifies the key without revealing it (stored in the data dir, compared at open).
    pub fn check_value(&self) -> &str {
        &self.check
    }

    /// The hasher that names blobs (keyed BLAKE3).
    pub fn name_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.names)
    }

    /// Seals a record value stored under `key` (the key is authenticated too: a value moved to another
    /// key fails to open). Layout: random nonce | ciphertext | tag.
    pub fn seal_record(&self, key: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::Rng::fill(&mut rand::rng(), &mut nonce[..]);
        let mut out = Vec::with_capacity(NONCE + plain.len() + TAG);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let mut body = out.split_off(NONCE);
        // Encryption into a Vec only fails if the buffer cannot grow, which aborts anyway.
        if self
            .records
            .encrypt_in_place(&XNonce::from(nonce), key, &mut body)
            .is_err()
        {
            body.clear();
        }
        out.extend_from_slice(&body);
        out
    }

    /// Opens a sealed record value; `None` when it fails authentication.
    pub fn open_record(&self, key: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let nonce: [u8; NONCE] = sealed.get(..NONCE)?.try_into().ok()?;
        self.records
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed[NONCE..],
                    aad: key,
                },
            )
            .ok()
    }

    fn chunk_nonce(prefix: &[u8; PREFIX], index: u64, last: bool) -> XNonce {
        let mut n = [0u8; NONCE];
        n[..PREFIX].copy_from_slice(prefix);
        let i = if last { index | LAST } else { index };
        n[PREFIX..].copy_from_slice(&i.to_be_bytes());
        XNonce::from(n)
    }

    /// A fresh nonce prefix for a new blob file.
    pub fn new_prefix() -> [u8; PREFIX] {
        let mut p = [0u8; PREFIX];
        rand::Rng::fill(&mut rand::rng(), &mut p[..]);
        p
    }

    /// Seals chunk `index` of a blob (appends the tag to `buf`).
    pub fn seal_chunk(&self, prefix: &[u8; PREFIX], index: u64, last: bool, buf: &mut Vec<u8>) -> io::Result<()> {
        self.blobs
            .encrypt_in_place(&Self::chunk_nonce(prefix, index, last), b"", buf)
            .map_err(|_| io::Error::other("sealing a chunk failed"))
    }

    /// Opens chunk `index` in place (strips the tag).
    pub fn open_chunk(&self, prefix: &[u8; PREFIX], index: u64, last: bool, buf: &mut Vec<u8>) -> io::Result<()> {
        self.blobs
            .decrypt_in_place(&Self::chunk_nonce(prefix, index, last), b"", buf)
            .map_err(|_| corrupt("blob chunk"))
    }

    /// The header of a sealed blob file named `name` (hex) with nonce prefix `prefix`.
    pub fn header(&self, prefix: &[u8; PREFIX], name: &str) -> io::Result<Vec<u8>> {
        let mut sealed = name_bytes(name)?.to_vec();
        self.blobs
            .encrypt_in_place(&Self::chunk_nonce(prefix, NAME_INDEX, false), MAGIC, &mut sealed)
            .map_err(|_| io::Error::other("sealing a blob header failed"))?;
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(prefix);
        h.extend_from_slice(&sealed);
        Ok(h)
    }

    /// Checks that `header` belongs to the blob named `name` and returns its nonce prefix.
    pub fn open_header(&self, header: &[u8], name: &str) -> io::Result<[u8; PREFIX]> {
        if header.len() != HEADER || &header[..MAGIC.len()] != MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a sealed blob file"));
        }
        let prefix: [u8; PREFIX] = header[MAGIC.len()..MAGIC.len() + PREFIX]
            .try_into()
            .map_err(|_| corrupt("blob header"))?;
        let mut sealed = header[MAGIC.len() + PREFIX..].to_vec();
        self.blobs
            .decrypt_in_place(&Self::chunk_nonce(&prefix, NAME_INDEX, false), MAGIC, &mut sealed)
            .map_err(|_| corrupt("blob header"))?;
        if sealed != name_bytes(name)? {
            return Err(corrupt("blob name"));
        }
        Ok(prefix)
    }
}

fn name_bytes(name: &str) -> io::Result<[u8; 32]> {
    blake3::Hash::from_hex(name)
        .map(|h| *h.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "blob name is not a hash"))
}

/// Chunks in a sealed blob of `plain` bytes (an empty blob still has one, empty, last chunk).
pub fn chunks(plain: u64) -> u64 {
    plain.div_ceil(CHUNK as u64).max(1)
}

/// File length of a sealed blob of `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    HEADER as u64 + chunks(plain) * TAG as u64 + plain
}

/// Plaintext length of a sealed blob file of `sealed` bytes (`None`: no blob has that length).
pub fn plain_len(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER as u64)?;
    let per = (CHUNK + TAG) as u64;
    let (full, rest) = (body / per, body % per);
    match rest {
        0 if full == 0 => None,
        0 => Some(full * CHUNK as u64),
        r if r < TAG as u64 => None,
        r => Some(full * CHUNK as u64 + r - TAG as u64),
    }
}

/// Where chunk `index` starts in the file, and its sealed length, for a blob of `plain` bytes.
pub fn chunk_span(plain: u64, index: u64) -> (u64, usize) {
    let start = HEADER as u64 + index * (CHUNK + TAG) as u64;
    let len = (plain - (index * CHUNK as u64).min(plain)).min(CHUNK as u64) as usize + TAG;
    (start, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip() {
        for plain in [
            0u64,
            1,
            100,
            CHUNK as u64 - 1,
            CHUNK as u64,
            CHUNK as u64 + 1,
            3 * CHUNK as u64 + 7,
        ] {
            assert_eq!(plain_len(sealed_len(plain)), Some(plain), "{plain}");
        }
        assert_eq!(plain_len(0), None);
        assert_eq!(plain_len(HEADER as u64 + 3), None);
    }

    #[test]
    fn keys_parse_as_hex_or_base64_and_bad_ones_say_why() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(parse_key(&hex).unwrap()[31], 0xff);
        assert_eq!(
            parse_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap(),
            [0u8; 32]
        );
        assert!(parse_key("abc").unwrap_err().0.contains("base64"));
        assert!(parse_key("AAAA").unwrap_err().0.contains("3 bytes"));
    }

    #[test]
    fn records_are_bound_to_their_key_and_master_key() {
        let a = AtRest::new(&[1; 32]);
        let sealed = a.seal_record(b"k1", b"secret headers");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(a.open_record(b"k1", &sealed).unwrap(), b"secret headers");
        assert!(a.open_record(b"k2", &sealed).is_none(), "moved to another key");
        assert!(AtRest::new(&[2; 32]).open_record(b"k1", &sealed).is_none(), "other key");
        assert_ne!(a.check_value(), AtRest::new(&[2; 32]).check_value());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(a.open_record(b"k1", &flipped).is_none());
    }
}
