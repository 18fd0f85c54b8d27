//! Offline writes that behave like a local-first app, against a backend that records what it applied:
//! superseding (the same offline edit sequence replayed with and without `supersede = true` ends in the
//! same server state, with fewer requests when superseding; the queue shows what was superseded and by
//! which write) and reading your own writes (`overlay = true`: a GET answers what the queued writes will
//! make of the resource, and after replay the server answers the same).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use outpost::admin::client::{get_json, HttpClient};
use outpost::body::{self, ProxyBody};
use outpost::config::{Config, Overrides};
use outpost::Outpost;
use tokio::net::TcpListener;

/// The backend's resources and every write it received, in order.
#[derive(Default)]
struct State {
    notes: BTreeMap<String, String>,
    received: Vec<String>,
    next_id: u32,
}

/// A notes API that is away (connections refused) until `up`, and again after `down`.
struct Backend {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// The accept loop and every connection's task (a backend going away closes them all).
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Backend {
    fn new() -> Backend {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Backend {
            addr,
            state: Arc::default(),
            tasks: Arc::default(),
        }
    }

    async fn down(&self) {
        // The accept loop owns the listener: ending it closes the port; kept-alive connections go too.
        // Waited for, so the sockets are closed before the test goes on (an abort takes effect later, and a
        // request sent on a connection the backend drops unanswered is rightly a 502, not queued).
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        while !tasks.iter().all(|t| t.is_finished()) {
            tokio::task::yield_now().await;
        }
    }

    async fn up(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let state = self.state.clone();
        let tasks = self.tasks.clone();
        let conns = self.tasks.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(task.abort_handle());
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<ProxyBody>, std::io::Error> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let text = String::from_utf8_lossy(
        &req.into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes(),
    )
    .into_owned();
    let mut s = state.lock().unwrap();
    if method != Method::GET {
        s.received.push(format!("{method} {path} {text}"));
    } else {
        let found = path
            .strip_prefix("/api/v1/notes")
            .and_then(|id| s.notes.get(id).cloned());
        let mut r = Response::new(body::full(
            found.clone().unwrap_or_else(|| r#"{"error":"no such note"}"#.into()),
        ));
        *r.status_mut() = if found.is_some() {
            http::StatusCode::OK
        } else {
            http::StatusCode::NOT_FOUND
        };
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r.headers_mut().insert("cache-control", "max-age=0".parse().unwrap());
        return Ok(r);
    }
    let status = match (method.as_str(), path.strip_prefix("/api/v1/notes")) {
        ("PUT", Some(id)) => {
            s.notes.insert(id.to_string(), text);
            200
        }
        ("PATCH", Some(id)) => {
            let old = s.notes.get(id).cloned().unwrap_or_default();
            // A JSON merge patch over a JSON note; anything else appended.
            let merged = match (
                serde_json::from_str(&old),
                serde_json::from_str::<serde_json::Value>(&text),
            ) {
                (Ok(mut doc), Ok(patch)) => {
                    common::merge_patch(&mut doc, &patch);
                    doc.to_string()
                }
                _ => format!("{old}+{text}"),
            };
            s.notes.insert(id.to_string(), merged);
            200
        }
        ("DELETE", Some(id)) => match s.notes.remove(id) {
            Some(_) => 204,
            None => 404,
        },
        ("POST", Some("")) => {
            s.next_id += 1;
            let id = format!("/p{}", s.next_id);
            s.notes.insert(id, text);
            201
        }
        _ => 200,
    };
    let mut r = Response::new(body::full("{}"));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    Ok(r)
}

fn config(backend: SocketAddr, dir: &std::path::Path, supersede: bool) -> Config {
    let src = common::offline_config_head(dir, &format!("http://{backend}"))
        + &format!(
            r#"
[[routes]]
name = "notes"
prefix = "/api/v1/notes"
supersede = {supersede}
overlay = true
"#
        );
    Config::from_toml(&src, "supersede.toml", &Overrides::default()).unwrap()
}

/// The app's offline edits: a note rewritten three times, one written then deleted, one written,
/// patched and rewritten, and two new notes (POSTs, never superseded).
const EDITS: &[(&str, &str, &str)] = &[
    ("PUT", "/api/v1/notes/1", "a"),
    ("PUT", "/api/v1/notes/1", "b"),
    ("PUT", "/api/v1/notes/2", "x"),
    ("PUT", "/api/v1/notes/1", "c"),
    ("DELETE", "/api/v1/notes/2", ""),
    ("PUT", "/api/v1/notes/3", "p"),
    ("PATCH", "/api/v1/notes/3", "q"),
    ("POST", "/api/v1/notes", "new1"),
    ("PUT", "/api/v1/notes/3", "r"),
    ("POST", "/api/v1/notes", "new2"),
    ("PUT", "/api/v1/notes/4", "created offline"),
    ("DELETE", "/api/v1/notes/4", ""),
];

/// Runs the edits offline, brings the backend back, waits for the queue to drain; returns the backend's
/// final notes, the writes it received, and the queue as listed before the backend came back.
async fn run(supersede: bool) -> (BTreeMap<String, String>, Vec<String>, serde_json::Value) {
    let backend = Backend::new();
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config(backend.addr, dir.path(), supersede))
        .await
        .unwrap();
    let client = HttpClient::new(Duration::from_secs(10));
    for (method, path, body) in EDITS {
        let r = client
            .call(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &format!("http://{}{path}", outpost.addr()),
                &[("authorization", "Bearer alice")],
                Some(body.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(r.head.status, 202, "{method} {path}: {:?}", r.body);
    }
    let token = common::admin_token(dir.path());
    let listed = get_json(outpost.admin_addr(), "/api/queue", &token).await.unwrap();
    backend.up().await;
    common::eventually("the queue drains", 20, || {
        let o = &outpost;
        async move { o.outbox().depth() == 0 }
    })
    .await;
    assert_eq!(outpost.outbox().dead_letters(), 0, "supersede = {supersede}");
    outpost.shutdown().await;
    let s = backend.state.lock().unwrap();
    (s.notes.clone(), s.received.clone(), listed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseding_sends_fewer_requests_and_ends_in_the_same_server_state() {
    let (plain_notes, plain_received, _) = run(false).await;
    let (notes, received, listed) = run(true).await;
    assert_eq!(plain_received.len(), EDITS.len(), "{plain_received:?}");
    assert_eq!(notes, plain_notes, "same final state");
    assert_eq!(
        notes,
        BTreeMap::from([
            ("/1".to_string(), "c".to_string()),
            ("/3".to_string(), "r".to_string()),
            ("/p1".to_string(), "new1".to_string()),
            ("/p2".to_string(), "new2".to_string()),
        ])
    );
    // One request where the app made several: a, b and x are gone, q was replaced by r.
    assert_eq!(
        received,
        vec![
            "PUT /api/v1/notes/1 c",
            "DELETE /api/v1/notes/2 ",
            "PUT /api/v1/notes/3 p",
            "PUT /api/v1/notes/3 r",
            "POST /api/v1/notes new1",
            "POST /api/v1/notes new2",
            "DELETE /api/v1/notes/4 ",
        ]
    );
    // The queue showed what was superseded, and by which write.
    let items = listed["items"].as_array().unwrap();
    let superseded: Vec<(&str, &str)> = items
        .iter()
        .filter(|i| i["state"] == "superseded")
        .map(|i| (i["uri"].as_str().unwrap(), i["superseded_by"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(superseded.len(), 5, "{listed}");
    let id_of = |method: &str, uri: &str| -> Vec<&str> {
        items
            .iter()
            .filter(|i| i["method"] == method && i["uri"] == uri && i["state"] == "pending")
            .map(|i| i["id"].as_str().unwrap())
            .collect()
    };
    let last_put_1 = id_of("PUT", "/api/v1/notes/1");
    assert_eq!(last_put_1.len(), 1);
    assert!(
        superseded.contains(&("/api/v1/notes/1", last_put_1[0])),
        "{superseded:?}"
    );
    assert_eq!(listed["depth"], 7, "{listed}");
    // The DELETE that superseded the PUT creating note 4 met a 404: already gone is delivered.
}

async fn call(
    client: &HttpClient,
    outpost: &Outpost,
    method: Method,
    path: &str,
    user: &str,
    ct: &str,
    body: &str,
) -> outpost::admin::client::Collected {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_reads_show_the_users_own_queued_writes_and_then_the_servers_truth() {
    let backend = Backend::new();
    backend.up().await;
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config(backend.addr, dir.path(), false)).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(10));
    let json = "application/json";
    let put = call(
        &client,
        &outpost,
        Method::PUT,
        "/api/v1/notes/1",
        "alice",
        json,
        r#"{"title":"old","n":1}"#,
    )
    .await;
    assert_eq!(put.head.status, 200, "online: delivered at once");
    let stored = call(&client, &outpost, Method::GET, "/api/v1/notes/1", "alice", json, "").await;
    assert_eq!(stored.json(), serde_json::json!({"title":"old","n":1}));

    backend.down().await;
    let patch = call(
        &client,
        &outpost,
        Method::PATCH,
        "/api/v1/notes/1",
        "alice",
        "application/merge-patch+json",
        r#"{"n":null,"tag":"x"}"#,
    )
    .await;
    assert_eq!(patch.head.status, 202);
    let seen = call(&client, &outpost, Method::GET, "/api/v1/notes/1", "alice", json, "").await;
    assert_eq!(seen.head.status, 200);
    assert_eq!(
        seen.json(),
        serde_json::json!({"title":"old","tag":"x"}),
        "the stored JSON with the queued patch"
    );
    assert!(seen.header("x-outpost-overlay").is_some());
    assert_eq!(seen.header("x-outpost-pending"), Some("1"));
    assert!(
        seen.header("cache-status").unwrap().contains("detail=overlay"),
        "{:?}",
        seen.header("cache-status")
    );

    let put2 = call(
        &client,
        &outpost,
        Method::PUT,
        "/api/v1/notes/2",
        "alice",
        json,
        r#"{"title":"two"}"#,
    )
    .await;
    assert_eq!(put2.head.status, 202);
    let two = call(&client, &outpost, Method::GET, "/api/v1/notes/2", "alice", json, "").await;
    assert_eq!(
        (two.head.status.as_u16(), two.json()),
        (200, serde_json::json!({"title":"two"}))
    );

    // Another user sees none of it.
    let bob = call(&client, &outpost, Method::GET, "/api/v1/notes/2", "bob", json, "").await;
    assert!(bob.header("x-outpost-overlay").is_none());
    assert_ne!(bob.head.status, 200);

    let del = call(&client, &outpost, Method::DELETE, "/api/v1/notes/1", "alice", json, "").await;
    assert_eq!(del.head.status, 202);
    let gone = call(&client, &outpost, Method::GET, "/api/v1/notes/1", "alice", json, "").await;
    assert_eq!(gone.head.status, 404, "deleted by a queued write");

    // Back online: the queue drains, the overlay is gone, and the server answers what the overlay said.
    backend.up().await;
    common::eventually("the queue drains", 20, || {
        let o = &outpost;
        async move { o.outbox().depth() == 0 }
    })
    .await;
    let two_now = call(&client, &outpost, Method::GET, "/api/v1/notes/2", "alice", json, "").await;
    assert!(two_now.header("x-outpost-overlay").is_none());
    assert_eq!((two_now.head.status, two_now.json()), (two.head.status, two.json()));
    let gone_now = call(&client, &outpost, Method::GET, "/api/v1/notes/1", "alice", json, "").await;
    assert!(gone_now.header("x-outpost-overlay").is_none());
    assert_eq!(gone_now.head.status, 404);
    outpost.shutdown().await;
}
