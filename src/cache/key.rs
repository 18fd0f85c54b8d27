//! Cache keys and user partitions.
//!
//! A primary key is `partition \0 upstream \0 path ? sorted-query` (GET and HEAD share it: HEAD is answered
//! from a stored GET). Query parameters named by the route's `ignore_query` (a trailing `*` makes a prefix)
//! are left out, so that presigned URLs of one object (`X-Amz-Signature=...`) share an entry. With `Vary`,
//! each variant lives under `primary \x01 hash(vary values)`; the primary key then holds the list of fields.
//!
//! The partition is who the response belongs to ([`Partitioner`]): the JWT `sub` of a `Bearer` token
//! (unless `[cache] partition = "credential"`), else a hash of the whole `Authorization` header, else a
//! hash of the session cookie's value (`[cache] session_cookie`) or, when none is named, of all the
//! request's cookies, else `anon`. One user's responses are never looked up under another's partition; a
//! refreshed token of the same user (same `sub`) keeps its partition.

use base64::Engine;
use http::{header, HeaderMap, Uri};

pub use crate::store::{key_partition, VARIANT_SEP};

/// The partition requests without credentials fall into.
pub const ANONYMOUS: &str = "anon";

/// Who a request belongs to, with the default rules (see [`Partitioner`]).
pub fn partition(headers: &HeaderMap) -> String {
    Partitioner::default().of(headers)
}

/// How requests are told apart by user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partitioner {
    /// Use a bearer JWT's `sub` claim (unverified: see the README's threat model); `false` hashes the
    /// whole credential, for devices whose users do not trust each other.
    pub trust_jwt_sub: bool,
    /// The cookie that carries the session; `None`: all cookies of a request together identify it.
    pub session_cookie: Option<String>,
}

impl Default for Partitioner {
    fn default() -> Self {
        Partitioner {
            trust_jwt_sub: true,
            session_cookie: None,
        }
    }
}

fn hashed(prefix: &str, parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
        h.update(b"\n");
    }
    format!("{prefix}:{}", &h.finalize().to_hex()[..32])
}

impl Partitioner {
    /// Who a request belongs to.
    pub fn of(&self, headers: &HeaderMap) -> String {
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            if self.trust_jwt_sub {
                if let Some(sub) = auth
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .and_then(jwt_sub)
                {
                    return format!("sub:{sub}");
                }
            }
            // The credential itself identifies the user (a rotated opaque token starts a new partition).
            // (The same hash as before cookies took part: partitions stored by older versions still match.)
            return format!("auth:{}", &blake3::hash(auth.as_bytes()).to_hex()[..32]);
        }
        let mut cookies: Vec<(&str, &str)> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .map(|(n, v)| (n.trim(), v.trim()))
            .filter(|(n, _)| !n.is_empty())
            .collect();
        match &self.session_cookie {
            Some(name) => match cookies.iter().find(|(n, _)| n == name) {
                Some((_, v)) => hashed("cookie", &[v.as_bytes()]),
                // The session cookie is named and absent: the other cookies are not who the user is.
                None => ANONYMOUS.to_string(),
            },
            None if cookies.is_empty() => ANONYMOUS.to_string(),
            None => {
                cookies.sort_unstable();
                let parts: Vec<Vec<u8>> = cookies.iter().map(|(n, v)| format!("{n}={v}").into_bytes()).collect();
                let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                hashed("cookie", &refs)
            }
        }
    }
}

/// The `sub` claim of an (unverified) JWT. Verification is the origin's job; the claim only picks a
/// partition, and a forged `sub` only reaches data that the forger's own requests stored under it.
fn jwt_sub(token: &str) -> Option<String> {
    let mut parts = token.trim().split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let sub = claims.get("sub")?.as_str()?;
    if sub.is_empty() || sub.len() > 256 {
        return None;
    }
    Some(sub.to_string())
}

/// True when `name` is matched by one of the `ignore_query` patterns.
fn ignored(name: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix),
        None => name.eq_ignore_ascii_case(p),
    })
}

/// Query with ignored parameters removed and the rest sorted by name (order-insensitive matching); the
/// values of a repeated name keep their order (`x=1&x=2` is not `x=2&x=1`: many backends read lists so).
pub fn normalized_query(query: Option<&str>, ignore: &[String]) -> String {
    let Some(q) = query else { return String::new() };
    let mut pairs: Vec<&str> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| !ignored(p.split('=').next().unwrap_or(""), ignore))
        .collect();
    // A stable sort by name alone: repeated names keep their relative order.
    pairs.sort_by(|a, b| a.split('=').next().cmp(&b.split('=').next()));
    pairs.join("&")
}

/// The primary cache key of a request.
pub fn primary_key(partition: &str, upstream: &str, uri: &Uri, ignore_query: &[String]) -> Vec<u8> {
    let q = normalized_query(uri.query(), ignore_query);
    let mut k = Vec::with_capacity(partition.len() + upstream.len() + uri.path().len() + q.len() + 4);
    k.extend_from_slice(partition.as_bytes());
    k.push(0);
    k.extend_from_slice(upstream.as_bytes());
    k.push(0);
    k.extend_from_slice(uri.path().as_bytes());
    if !q.is_empty() {
        k.push(b'?');
        k.extend_from_slice(q.as_bytes());
    }
    k
}

/// The key of one `Vary` variant under a primary key.
pub fn variant_key(primary: &[u8], vary_values: &[(String, String)]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    for (name, value) in vary_values {
        h.update(name.as_bytes());
        h.update(b":");
        h.update(value.as_bytes());
        h.update(b"\n");
    }
    let mut k = primary.to_vec();
    k.push(VARIANT_SEP);
    k.extend_from_slice(&h.finalize().as_bytes()[..16]);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    fn cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn cookie_sessions_are_users_and_a_named_session_cookie_alone_decides() {
        let p = Partitioner::default();
        let alice = p.of(&cookie("session=alice; theme=dark"));
        assert!(alice.starts_with("cookie:"), "{alice}");
        assert_ne!(alice, p.of(&cookie("session=bob; theme=dark")));
        assert_eq!(
            alice,
            p.of(&cookie("theme=dark;session=alice")),
            "order and spacing do not matter"
        );
        assert_ne!(alice, ANONYMOUS);
        let named = Partitioner {
            session_cookie: Some("session".into()),
            ..Partitioner::default()
        };
        assert_eq!(
            named.of(&cookie("session=alice; _ga=1")),
            named.of(&cookie("_ga=2; session=alice")),
            "only the session cookie counts"
        );
        assert_ne!(named.of(&cookie("session=alice")), named.of(&cookie("session=bob")));
        assert_eq!(named.of(&cookie("_ga=1")), ANONYMOUS);
        // A credential wins over cookies.
        let mut both = auth("Bearer opaque");
        both.insert(header::COOKIE, HeaderValue::from_static("session=alice"));
        assert!(p.of(&both).starts_with("auth:"));
    }

    #[test]
    fn the_credential_mode_does_not_trust_a_jwt_sub() {
        let strict = Partitioner {
            trust_jwt_sub: false,
            session_cookie: None,
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = format!("h.{}.bad", b64.encode(r#"{"sub":"alice"}"#));
        let real = format!("h.{}.good", b64.encode(r#"{"sub":"alice"}"#));
        assert_eq!(
            partition(&auth(&format!("Bearer {forged}"))),
            "sub:alice",
            "default: the claim"
        );
        assert_ne!(
            strict.of(&auth(&format!("Bearer {forged}"))),
            strict.of(&auth(&format!("Bearer {real}"))),
            "credential mode: a forged sub is another partition"
        );
    }

    #[test]
    fn partition_comes_from_jwt_sub_and_survives_token_refresh() {
        let t1 = crate::demo::make_token("alice", 1);
        let t2 = crate::demo::make_token("alice", 2);
        let tb = crate::demo::make_token("bob", 1);
        assert_eq!(partition(&auth(&format!("Bearer {t1}"))), "sub:alice");
        assert_eq!(
            partition(&auth(&format!("Bearer {t1}"))),
            partition(&auth(&format!("Bearer {t2}")))
        );
        assert_ne!(
            partition(&auth(&format!("Bearer {t1}"))),
            partition(&auth(&format!("Bearer {tb}")))
        );
        assert_eq!(partition(&HeaderMap::new()), ANONYMOUS);
        let opaque = partition(&auth("Bearer not-a-jwt"));
        assert!(opaque.starts_with("auth:"));
        assert_ne!(opaque, partition(&auth("Bearer other")));
        assert!(
            partition(&auth("Bearer a.!!!.c")).starts_with("auth:"),
            "garbage payload falls back to a hash"
        );
    }

    #[test]
    fn presigned_urls_of_one_object_share_a_key() {
        let ignore = vec!["X-Amz-*".to_string(), "Expires".to_string()];
        let a: Uri = "/r/1.mp3?X-Amz-Signature=aaa&X-Amz-Expires=60&v=2".parse().unwrap();
        let b: Uri = "/r/1.mp3?v=2&x-amz-signature=bbb&Expires=9".parse().unwrap();
        let c: Uri = "/r/1.mp3?v=3&X-Amz-Signature=aaa".parse().unwrap();
        let ka = primary_key("anon", "media", &a, &ignore);
        assert_eq!(ka, primary_key("anon", "media", &b, &ignore));
        assert_ne!(ka, primary_key("anon", "media", &c, &ignore));
        assert_ne!(
            ka,
            primary_key("sub:bob", "media", &a, &ignore),
            "partitions never share keys"
        );
        assert_eq!(key_partition(&ka), b"anon");
    }

    #[test]
    fn query_order_does_not_matter() {
        let a: Uri = "/x?b=2&a=1".parse().unwrap();
        let b: Uri = "/x?a=1&b=2".parse().unwrap();
        assert_eq!(primary_key("p", "u", &a, &[]), primary_key("p", "u", &b, &[]));
        let k = |q: &str| primary_key("p", "u", &format!("/x?{q}").parse().unwrap(), &[]);
        assert_eq!(k("x=1&b=0&x=2"), k("b=0&x=1&x=2"), "other names move freely");
        assert_ne!(k("x=1&x=2"), k("x=2&x=1"), "a repeated name's values keep their order");
    }
}
