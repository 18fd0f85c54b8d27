//! Read your own writes: on a route with `overlay = true`, a GET of a resource that has queued PUT,
//! PATCH or DELETE writes of the same user answers what the server will hold once the queue drains —
//! the last PUT's body, the stored JSON with queued JSON Merge Patches (RFC 7396,
//! `application/merge-patch+json`) applied in order, or `404` after a DELETE. Such an answer carries
//! `X-Outpost-Overlay` (the queued writes' ids) and `detail=overlay` in `Cache-Status`; once the writes are
//! delivered (or stopped) there is no overlay and the next GET is the server's truth.
//!
//! Where the outcome cannot be known (a PATCH of another type, a patch over a non-JSON or missing answer, a
//! spooled body), the answer is the ordinary one, still marked `X-Outpost-Pending`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use super::error::ProxyError;
use super::flow::RequestHead;
use super::Proxy;
use crate::body::{self, ProxyBody};
use crate::cache::Outcome;
use crate::queue::OutboxRecord;
use crate::routes::RouteMatch;
use crate::upstream::Upstream;

/// The largest stored answer a patch is applied to.
const MAX_BASE: usize = 8 << 20;

/// What the queued writes make of a resource.
#[derive(Debug, PartialEq)]
pub(super) enum Folded {
    /// The resource will hold this (content type, body).
    Body(Option<String>, Vec<u8>),
    /// The resource will be gone.
    Gone,
}

fn header_of<'a>(w: &'a OutboxRecord, name: &str) -> Option<&'a str> {
    w.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn is_merge_patch(w: &OutboxRecord) -> bool {
    header_of(w, "content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/merge-patch+json"))
    })
}

fn replaces(w: &OutboxRecord) -> bool {
    w.method == "PUT" || w.method == "DELETE"
}

/// Whether folding `writes` needs the current answer: patches with no PUT or DELETE among the writes
/// (what comes before the last PUT or DELETE does not matter).
pub(super) fn needs_base(writes: &[OutboxRecord]) -> bool {
    !writes.iter().any(replaces) && writes.iter().any(|w| w.method == "PATCH")
}

/// Applies the queued writes (oldest first) to `base` (content type and body of the current answer, if
/// there is one); `None` when the outcome cannot be known here.
pub(super) fn fold(base: Option<(Option<String>, Vec<u8>)>, writes: &[OutboxRecord]) -> Option<Folded> {
    let mut state = base.map(|(ct, b)| Folded::Body(ct, b));
    let writes = &writes[writes.iter().rposition(replaces).unwrap_or(0)..];
    for w in writes {
        if w.body_file.is_some() {
            return None;
        }
        state = Some(match w.method.as_str() {
            "PUT" => Folded::Body(header_of(w, "content-type").map(str::to_string), w.body.clone()),
            "DELETE" => Folded::Gone,
            "PATCH" if is_merge_patch(w) => {
                let Some(Folded::Body(_, current)) = &state else {
                    return None;
                };
                let mut doc: Value = serde_json::from_slice(current).ok()?;
                let patch: Value = serde_json::from_slice(&w.body).ok()?;
                merge_patch(&mut doc, &patch);
                Folded::Body(Some("application/json".into()), serde_json::to_vec(&doc).ok()?)
            }
            _ => return None,
        });
    }
    state
}

/// RFC 7396 §2: JSON Merge Patch.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

impl Proxy {
    /// The answer to a GET of a resource with queued writes (see the module doc).
    pub(super) async fn overlaid(
        self: &Arc<Self>,
        head: RequestHead,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
        writes: &[OutboxRecord],
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let ids: Vec<&str> = writes.iter().map(|w| w.id.as_str()).collect();
        let mut outcome = Outcome::Bypass;
        let folded = if !needs_base(writes) {
            match fold(None, writes) {
                Some(f) => f,
                // A spooled body: the ordinary answer.
                None => return self.flow.run(head, route, upstream, peer).await,
            }
        } else {
            let (mut resp, o) = self.flow.run(head, route, upstream, peer).await?;
            outcome = o;
            if resp.status() != StatusCode::OK {
                return Ok((resp, outcome));
            }
            // Patches apply to the representation, not to its gzip bytes.
            super::adapt_coding(&mut resp, &http::HeaderMap::new(), &Method::GET);
            let ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let (parts, mut body) = resp.into_parts();
            let mut bytes = bytes::BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ProxyError::Garbage {
                    upstream: upstream.name().to_string(),
                    reason: e.to_string(),
                })?;
                if let Ok(d) = frame.into_data() {
                    bytes.extend_from_slice(&d);
                }
                if bytes.len() > MAX_BASE {
                    // Too large to patch here: the answer as it is, read so far and the rest.
                    let head = futures_util::stream::iter([Ok(http_body::Frame::data(bytes.freeze()))]);
                    let rest = http_body_util::BodyStream::new(body);
                    let whole = futures_util::StreamExt::chain(head, rest);
                    let b = BodyExt::boxed(http_body_util::StreamBody::new(whole));
                    return Ok((Response::from_parts(parts, b), outcome));
                }
            }
            let bytes = bytes.freeze();
            match fold(Some((ct, bytes.to_vec())), writes) {
                Some(f) => f,
                None => return Ok((Response::from_parts(parts, body::full(bytes)), outcome)),
            }
        };
        let mut resp = match folded {
            Folded::Gone => {
                let mut r = body::json_error(StatusCode::NOT_FOUND, "deleted by a queued write", None);
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
            Folded::Body(ct, bytes) => {
                let mut r = Response::new(body::full(Bytes::from(bytes)));
                if let Some(v) = ct.and_then(|c| HeaderValue::from_str(&c).ok()) {
                    r.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                r
            }
        };
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(&ids.join(",")) {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-outpost-overlay"), v);
        }
        Ok((resp, outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7396 Appendix A, every row.
    #[test]
    fn merge_patch_follows_rfc7396_appendix_a() {
        let rows = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (json!({}), json!({"a":{"bb":{"ccc":null}}}), json!({"a":{"bb":{}}})),
        ];
        for (target, patch, want) in rows {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, want, "{target} + {patch}");
        }
    }

    fn write(method: &str, ct: &str, body: &str) -> OutboxRecord {
        OutboxRecord {
            method: method.into(),
            headers: vec![("content-type".into(), ct.as_bytes().to_vec())],
            body: body.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn queued_writes_fold_into_what_the_server_will_hold() {
        let base = Some((
            Some("application/json".to_string()),
            br#"{"title":"old","n":1}"#.to_vec(),
        ));
        let put = write("PUT", "application/json", r#"{"title":"new"}"#);
        let patch = write(
            "PATCH",
            "application/merge-patch+json; charset=utf-8",
            r#"{"n":null,"tag":"x"}"#,
        );
        let other_patch = write("PATCH", "application/json-patch+json", "[]");
        let delete = write("DELETE", "", "");
        let body = |f: Option<Folded>| match f {
            Some(Folded::Body(_, b)) => serde_json::from_slice::<Value>(&b).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(body(fold(None, std::slice::from_ref(&put))), json!({"title":"new"}));
        assert_eq!(
            body(fold(base.clone(), std::slice::from_ref(&patch))),
            json!({"title":"old","tag":"x"})
        );
        assert_eq!(
            body(fold(None, &[put.clone(), patch.clone()])),
            json!({"title":"new","tag":"x"})
        );
        assert_eq!(fold(base.clone(), &[put.clone(), delete.clone()]), Some(Folded::Gone));
        assert_eq!(
            fold(None, &[delete.clone(), put.clone()]).map(|f| matches!(f, Folded::Body(..))),
            Some(true)
        );
        assert_eq!(fold(base.clone(), &[other_patch]), None, "unknown patch type");
        assert_eq!(fold(None, std::slice::from_ref(&patch)), None, "nothing to patch");
        assert_eq!(
            fold(None, &[delete, patch.clone()]),
            None,
            "a patch of a deleted resource"
        );
        assert_eq!(
            body(fold(None, &[patch.clone(), put.clone()])),
            json!({"title":"new"}),
            "before a PUT"
        );
        assert!(needs_base(std::slice::from_ref(&patch)));
        assert!(!needs_base(&[put.clone(), patch.clone()]) && !needs_base(&[patch, put]));
    }
}
