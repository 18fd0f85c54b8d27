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
use crate::media::merge;
use crate::queue::OutboxRecord;
use crate::routes::{OverlayList, RouteMatch};
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
            "PUT" => Folded::Body(w.header("content-type").map(str::to_string), w.body.to_vec()),
            "DELETE" => Folded::Gone,
            "PATCH" if w.is_merge_patch() => {
                let Some(Folded::Body(_, current)) = &state else {
                    return None;
                };
                let mut doc: Value = serde_json::from_slice(current).ok()?;
                let patch: Value = serde_json::from_slice(&w.body).ok()?;
                merge::apply(&mut doc, &patch);
                Folded::Body(Some("application/json".into()), serde_json::to_vec(&doc).ok()?)
            }
            _ => return None,
        });
    }
    state
}

/// Whether an item's id member is the id in its URL (a string, or a number written the same way).
fn same_id(v: Option<&Value>, id: &str) -> bool {
    match v {
        Some(Value::String(s)) => s == id,
        Some(Value::Number(n)) => n.to_string() == id,
        _ => false,
    }
}

/// The id from an item's URL as the list's other items hold theirs (a number where they use numbers).
fn id_value(id: &str, items: &[Value], member: &str) -> Value {
    let numeric = items.iter().any(|i| i.get(member).is_some_and(Value::is_number));
    match id.parse::<i64>() {
        Ok(n) if numeric => Value::from(n),
        _ => Value::String(id.to_string()),
    }
}

/// What this user's queued writes (oldest first) make of a collection's JSON answer `base` whose items
/// are written at `list_path` (see [`OverlayList::items_base`]); `None` when the outcome cannot be known here (no array at `items`, a write that is not
/// JSON, a patch of an item the list does not hold, a spooled body).
pub(super) fn fold_list(base: &[u8], list: &OverlayList, list_path: &str, writes: &[OutboxRecord]) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(base).ok()?;
    let at = match &list.items {
        None => &mut doc,
        Some(p) => p.get_mut(&mut doc)?,
    };
    let Value::Array(items) = at else {
        return None;
    };
    let member = list.id.as_str();
    for w in writes {
        if w.body_file.is_some() {
            return None;
        }
        let path = w.uri.split('?').next().unwrap_or("");
        let item = crate::routes::list_item(list_path, path);
        let place = |items: &[Value], id: &str| items.iter().position(|v| same_id(v.get(member), id));
        match (w.method.as_str(), item) {
            ("POST", None) => {
                let new: Value = serde_json::from_slice(&w.body).ok()?;
                let known = match new.get(member) {
                    Some(Value::String(id)) => place(items, id),
                    Some(Value::Number(n)) => place(items, &n.to_string()),
                    _ => None,
                };
                match known {
                    Some(i) => items[i] = new,
                    None if list.add_first => items.insert(0, new),
                    None => items.push(new),
                }
            }
            ("PUT", Some(id)) => {
                let mut new: Value = serde_json::from_slice(&w.body).ok()?;
                if let Value::Object(o) = &mut new {
                    if !o.contains_key(member) {
                        o.insert(member.to_string(), id_value(id, items, member));
                    }
                }
                match place(items, id) {
                    Some(i) => items[i] = new,
                    None if list.add_first => items.insert(0, new),
                    None => items.push(new),
                }
            }
            ("PATCH", Some(id)) if w.is_merge_patch() => {
                let patch: Value = serde_json::from_slice(&w.body).ok()?;
                let i = place(items, id)?;
                merge::apply(&mut items[i], &patch);
            }
            ("DELETE", Some(id)) => items.retain(|v| !same_id(v.get(member), id)),
            _ => return None,
        }
    }
    serde_json::to_vec(&doc).ok()
}

/// The ordinary answer to a GET, read whole when it is a `200` small enough to change.
enum Base {
    /// `200` read whole (decoded): its head, content type and body.
    Read(http::response::Parts, Option<String>, Bytes),
    /// Anything else, as it came.
    AsIs(Response<ProxyBody>),
}

/// Our own answer with the queued writes' effect: never stored, naming the writes.
fn overlay_answer(mut resp: Response<ProxyBody>, writes: &[OutboxRecord]) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let ids: Vec<&str> = writes.iter().map(|w| w.id.as_str()).collect();
    if let Ok(v) = HeaderValue::from_str(&ids.join(",")) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-outpost-overlay"), v);
    }
    resp
}

fn json_answer(ct: Option<String>, bytes: Vec<u8>) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(Bytes::from(bytes)));
    if let Some(v) = ct.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

impl Proxy {
    /// The ordinary answer (cache flow), read whole when it can be changed.
    async fn base(
        self: &Arc<Self>,
        head: RequestHead,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
    ) -> Result<(Base, Outcome), ProxyError> {
        let (mut resp, outcome) = self.flow.run(head, route, upstream, peer).await?;
        if resp.status() != StatusCode::OK {
            return Ok((Base::AsIs(resp), outcome));
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
                // Too large to change here: the answer as it is, read so far and the rest.
                let head = futures_util::stream::iter([Ok(http_body::Frame::data(bytes.freeze()))]);
                let rest = http_body_util::BodyStream::new(body);
                let whole = futures_util::StreamExt::chain(head, rest);
                let b = BodyExt::boxed(http_body_util::StreamBody::new(whole));
                return Ok((Base::AsIs(Response::from_parts(parts, b)), outcome));
            }
        }
        Ok((Base::Read(parts, ct, bytes.freeze()), outcome))
    }

    /// The answer to a GET of a resource with queued writes (see the module doc).
    pub(super) async fn overlaid(
        self: &Arc<Self>,
        head: RequestHead,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
        writes: &[OutboxRecord],
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let mut outcome = Outcome::Bypass;
        let folded = if !needs_base(writes) {
            match fold(None, writes) {
                Some(f) => f,
                // A spooled body: the ordinary answer.
                None => return self.flow.run(head, route, upstream, peer).await,
            }
        } else {
            let (base, o) = self.base(head, route, upstream, peer).await?;
            outcome = o;
            let Base::Read(parts, ct, bytes) = base else {
                return Ok((base.into_response(), outcome));
            };
            match fold(Some((ct, bytes.to_vec())), writes) {
                Some(f) => f,
                None => return Ok((Response::from_parts(parts, body::full(bytes)), outcome)),
            }
        };
        let resp = match folded {
            Folded::Gone => {
                let mut r = body::json_error(StatusCode::NOT_FOUND, "deleted by a queued write", None);
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
            Folded::Body(ct, bytes) => json_answer(ct, bytes),
        };
        Ok((overlay_answer(resp, writes), outcome))
    }

    /// The answer to a GET of a collection (`overlay_list`) with queued writes to it or its items.
    pub(super) async fn overlaid_list(
        self: &Arc<Self>,
        head: RequestHead,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
        (list, items_at): (&OverlayList, &str),
        writes: &[OutboxRecord],
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let (base, outcome) = self.base(head, route, upstream, peer).await?;
        let Base::Read(parts, ct, bytes) = base else {
            return Ok((base.into_response(), outcome));
        };
        match fold_list(&bytes, list, items_at, writes) {
            Some(folded) => Ok((overlay_answer(json_answer(ct, folded), writes), outcome)),
            None => Ok((Response::from_parts(parts, body::full(bytes)), outcome)),
        }
    }
}

impl Base {
    fn into_response(self) -> Response<ProxyBody> {
        match self {
            Base::Read(parts, _, bytes) => Response::from_parts(parts, body::full(bytes)),
            Base::AsIs(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(method: &str, ct: &str, body: &str) -> OutboxRecord {
        OutboxRecord {
            method: method.into(),
            headers: vec![("content-type".into(), ct.as_bytes().to_vec())],
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
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

    #[test]
    fn queued_item_writes_show_in_the_list() {
        let list = |items: Option<&str>, add_first: bool| OverlayList {
            path: crate::routes::RoutePattern::exact("/lib").unwrap(),
            items: items.map(|p| crate::media::JsonPath::parse(p).unwrap()),
            id: "id".into(),
            add_first,
            item_path: None,
        };
        let at = |method: &str, uri: &str, ct: &str, body: &str| OutboxRecord {
            uri: uri.into(),
            ..write(method, ct, body)
        };
        let base = br#"{"items":[{"id":1,"t":"a"},{"id":2,"t":"b"},{"id":3,"t":"c"}],"total":3}"#;
        let writes = [
            at("POST", "/lib", "application/json", r#"{"t":"new"}"#),
            at("DELETE", "/lib/2", "", ""),
            at(
                "PATCH",
                "/lib/3",
                "application/merge-patch+json",
                r#"{"t":"C","x":null}"#,
            ),
            at("PUT", "/lib/9", "application/json", r#"{"t":"put"}"#),
            at("PUT", "/lib/1?v=2", "application/json", r#"{"id":1,"t":"A"}"#),
        ];
        let out = fold_list(base, &list(Some("items"), false), "/lib", &writes).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"items":[{"id":1,"t":"A"},{"id":3,"t":"C"},{"t":"new"},{"id":9,"t":"put"}],"total":3})
        );
        // A bare array, newest first, string ids.
        let base = br#"[{"id":"a"},{"id":"b"}]"#;
        let writes = [
            at("POST", "/lib", "application/json", r#"{"id":"c"}"#),
            at("DELETE", "/lib/a", "", ""),
        ];
        let out = fold_list(base, &list(None, true), "/lib", &writes).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!([{"id":"c"},{"id":"b"}])
        );
        // What cannot be known: no array there, a patch of an item not in the list, a JSON Patch.
        let one = |w: OutboxRecord| fold_list(base, &list(None, false), "/lib", &[w]);
        assert_eq!(fold_list(base, &list(Some("items"), false), "/lib", &writes), None);
        assert_eq!(one(at("PATCH", "/lib/zz", "application/merge-patch+json", "{}")), None);
        assert_eq!(one(at("PATCH", "/lib/a", "application/json-patch+json", "[]")), None);
        assert_eq!(one(at("POST", "/lib", "text/plain", "not json")), None);
    }
}
