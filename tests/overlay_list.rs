//! Offline writes to a collection and its items, against a library API that records what it applied:
//! `overlay_list` (a GET of the list while this user's POSTs, PUTs, merge PATCHes and DELETEs of its
//! items are queued answers the list they will make, and after replay the server answers the same) and
//! merge patches combined by `supersede = true` (one PATCH sent where the app made several, same
//! final state).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Origin;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use outpost::admin::client::{Collected, HttpClient};
use outpost::body::{self, ProxyBody};
use outpost::config::{Config, Overrides};
use outpost::Outpost;
use serde_json::{json, Value};

/// The backend's library and every write it received, in order.
#[derive(Default)]
struct Library {
    items: BTreeMap<u64, Value>,
    next: u64,
    received: Vec<String>,
}

type Shared = Arc<Mutex<Library>>;

fn reply(status: u16, v: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut().insert("cache-control", "max-age=0".parse().unwrap());
    r
}

async fn library(req: Request<hyper::body::Incoming>, state: Shared) -> Response<ProxyBody> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let ct = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = String::from_utf8(req.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let mut s = state.lock().unwrap();
    let id: Option<u64> = path.strip_prefix("/api/v1/library/").and_then(|i| i.parse().ok());
    if method != Method::GET {
        s.received.push(format!("{method} {path} {text}"));
    }
    let body = || serde_json::from_str::<Value>(&text).unwrap();
    match (method.as_str(), id) {
        ("GET", None) => {
            let items: Vec<Value> = s.items.values().cloned().collect();
            reply(200, &json!({"items": items, "total": items.len()}))
        }
        ("GET", Some(id)) => match s.items.get(&id) {
            Some(v) => reply(200, v),
            None => reply(404, &json!({"error": "no such item"})),
        },
        ("POST", None) => {
            s.next += 1;
            let id = s.next;
            let mut item = body();
            item["id"] = json!(id);
            s.items.insert(id, item.clone());
            reply(201, &item)
        }
        ("PUT", Some(id)) => {
            let mut item = body();
            item["id"] = json!(id);
            s.items.insert(id, item.clone());
            reply(200, &item)
        }
        ("PATCH", Some(id)) if ct.starts_with("application/merge-patch+json") => match s.items.get_mut(&id) {
            Some(item) => {
                common::merge_patch(item, &body());
                reply(200, &item.clone())
            }
            None => reply(404, &json!({"error": "no such item"})),
        },
        ("DELETE", Some(id)) => match s.items.remove(&id) {
            Some(_) => reply(204, &json!(null)),
            None => reply(404, &json!({"error": "no such item"})),
        },
        _ => reply(400, &json!({"error": "not understood"})),
    }
}

fn seeded() -> Shared {
    let items = BTreeMap::from([
        (1, json!({"id": 1, "title": "a"})),
        (2, json!({"id": 2, "title": "b"})),
        (3, json!({"id": 3, "title": "c", "tags": {"x": 1}})),
    ]);
    Arc::new(Mutex::new(Library {
        items,
        next: 3,
        received: Vec::new(),
    }))
}

async fn start_origin(state: &Shared, addr: Option<std::net::SocketAddr>) -> Origin {
    let state = state.clone();
    let handler = move |req, _| library(req, state.clone());
    match addr {
        None => Origin::start(handler).await,
        Some(a) => Origin::start_at(a, handler).await,
    }
}

fn config(origin: &Origin, dir: &std::path::Path, supersede: bool) -> Config {
    let src = common::offline_config_head(dir, &origin.url())
        + &format!(
            r#"
[[routes]]
name = "library"
prefix = "/api/v1/library"
supersede = {supersede}
overlay = true
overlay_list = {{ path = "/api/v1/library", items = "items", id = "id" }}
"#
        );
    Config::from_toml(&src, "library.toml", &Overrides::default()).unwrap()
}

async fn call(
    client: &HttpClient,
    outpost: &Outpost,
    method: Method,
    path: &str,
    user: &str,
    ct: &str,
    body: &str,
) -> Collected {
    client
        .call(
            method,
            &format!("http://{}{path}", outpost.addr()),
            &[("authorization", &format!("Bearer {user}")), ("content-type", ct)],
            (!body.is_empty()).then(|| body.as_bytes().to_vec()),
        )
        .await
        .unwrap()
}

const JSON: &str = "application/json";
const MERGE: &str = "application/merge-patch+json";

/// The app's offline edits of the library: a new item, one deleted, one patched three times, one
/// rewritten.
const EDITS: &[(&str, &str, &str, &str)] = &[
    ("POST", "/api/v1/library", JSON, r#"{"title":"new"}"#),
    ("DELETE", "/api/v1/library/2", JSON, ""),
    ("PATCH", "/api/v1/library/3", MERGE, r#"{"tags":{"y":2}}"#),
    ("PATCH", "/api/v1/library/3", MERGE, r#"{"title":"C"}"#),
    ("PATCH", "/api/v1/library/3", MERGE, r#"{"tags":{"x":null}}"#),
    ("PUT", "/api/v1/library/1", JSON, r#"{"title":"A"}"#),
];

/// Items without their ids (a POSTed item has none until the server gives it one).
fn without_ids(list: &Value) -> Vec<Value> {
    let mut items = list["items"].as_array().unwrap().clone();
    for i in &mut items {
        i.as_object_mut().unwrap().remove("id");
    }
    items
}

struct Run {
    /// The list as alice saw it offline, with the edits queued.
    offline: Collected,
    /// The list as bob saw it offline.
    bob: Collected,
    /// The list after the queue drained (the server's).
    after: Value,
    /// What the server received and holds at the end.
    received: Vec<String>,
    items: BTreeMap<u64, Value>,
}

async fn run(supersede: bool) -> Run {
    let state = seeded();
    let mut origin = start_origin(&state, None).await;
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config(&origin, dir.path(), supersede)).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(10));
    let list = "/api/v1/library";
    let first = call(&client, &outpost, Method::GET, list, "alice", JSON, "").await;
    assert_eq!(first.head.status, 200);

    origin.stop().await;
    for (method, path, ct, body) in EDITS {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = call(&client, &outpost, m, path, "alice", ct, body).await;
        assert_eq!(r.head.status, 202, "{method} {path}: {:?}", r.body);
    }
    let offline = call(&client, &outpost, Method::GET, list, "alice", JSON, "").await;
    let bob = call(&client, &outpost, Method::GET, list, "bob", JSON, "").await;

    let _origin = start_origin(&state, Some(origin.addr)).await;
    common::eventually("the queue drains", 20, || {
        let o = &outpost;
        async move { o.outbox().depth() == 0 }
    })
    .await;
    assert_eq!(outpost.outbox().dead_letters(), 0, "supersede = {supersede}");
    let after = call(&client, &outpost, Method::GET, list, "alice", JSON, "").await;
    assert_eq!(after.head.status, 200);
    assert!(
        after.header("x-outpost-overlay").is_none(),
        "delivered: the server's truth"
    );
    outpost.shutdown().await;
    let s = state.lock().unwrap();
    Run {
        offline,
        bob,
        after: after.json(),
        received: s.received.clone(),
        items: s.items.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_read_offline_shows_the_users_queued_item_writes_and_matches_the_server_after_replay() {
    let r = run(false).await;
    assert_eq!(r.offline.head.status, 200, "{:?}", r.offline.body);
    assert_eq!(
        r.offline.json(),
        json!({"items": [
            {"id": 1, "title": "A"},
            {"id": 3, "title": "C", "tags": {"y": 2}},
            {"title": "new"},
        ], "total": 3}),
        "the stored list with the queued writes"
    );
    assert_eq!(r.offline.header("x-outpost-pending"), Some("6"));
    assert_eq!(
        r.offline.header("x-outpost-overlay").map(|v| v.split(',').count()),
        Some(6)
    );
    assert!(
        r.offline.header("cache-status").unwrap().contains("detail=overlay"),
        "{:?}",
        r.offline.header("cache-status")
    );
    assert_eq!(r.offline.header("cache-control"), Some("no-store"));
    // Bob has no stored list and no queued writes: nothing of alice's reaches him.
    assert!(r.bob.header("x-outpost-overlay").is_none());
    assert!(
        !String::from_utf8_lossy(&r.bob.body).contains(r#""new""#),
        "{:?}",
        r.bob.body
    );
    // The server, once the queue drained, holds what the overlay showed.
    assert_eq!(without_ids(&r.after), without_ids(&r.offline.json()));
    assert_eq!(r.received.len(), EDITS.len(), "{:?}", r.received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_merge_patches_to_one_item_are_sent_as_one_and_end_in_the_same_state() {
    let plain = run(false).await;
    let merged = run(true).await;
    assert_eq!(merged.items, plain.items, "same final state");
    assert_eq!(merged.items[&3], json!({"id": 3, "title": "C", "tags": {"y": 2}}));
    let patches: Vec<&String> = merged.received.iter().filter(|r| r.starts_with("PATCH")).collect();
    assert_eq!(patches.len(), 1, "{:?}", merged.received);
    let (_, body) = patches[0].split_once("/3 ").unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap(),
        json!({"tags": {"y": 2, "x": null}, "title": "C"})
    );
    assert_eq!(merged.received.len(), EDITS.len() - 2);
    // The overlay read the same either way.
    assert_eq!(merged.offline.json(), plain.offline.json());
}
