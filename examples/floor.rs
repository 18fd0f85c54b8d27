//! The floor for the load benchmark: a hyper server on Outpost's runtime settings and allocator that
//! answers every request with the same 1 KiB body and the header fields of an Outpost cache hit, and does
//! nothing else (no routing, no cache, no log). What it reaches on a machine is the most any proxy built
//! on hyper and tokio can reach there; `benches/load.py` runs it next to Outpost, nginx and Varnish
//! (`FLOOR=on`) so a ratio can be read against it. Never a test.
//!
//! `cargo run --release --example floor -- PORT [hyper|server]`: `hyper` (the default) is hyper's plain HTTP/1
//! connection; `server` is Outpost's accept loop ([`outpost::server::Server`]) with the same answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// An Outpost hit's fields besides `content-length` and `date` (which hyper adds).
const HIT_FIELDS: [(&str, &str); 9] = [
    ("content-type", "application/json"),
    ("cache-control", "public, max-age=3600"),
    ("etag", "\"sized-1024-0\""),
    ("via", "1.1 outpost"),
    ("age", "0"),
    ("accept-ranges", "bytes"),
    ("x-outpost-cache", "HIT"),
    ("cache-status", "Outpost; hit"),
    ("x-request-id", "858d621fc6c9186b"),
];

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().ok_or("usage: floor PORT [hyper|server]")?.parse()?;
    let mode = args.next().unwrap_or_else(|| "hyper".into());
    let body = Bytes::from(vec![b'x'; 1024]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        if mode == "server" {
            // Outpost's own accept loop (limits, timers, graceful shutdown, its connection type).
            let limits = outpost::server::Limits {
                grace: Duration::from_secs(1),
                header_read_timeout: Duration::from_secs(30),
                max_connections: outpost::server::DEFAULT_MAX_CONNECTIONS,
            };
            let regions = Some(Arc::new(outpost::sendfile::FileRegions::default()));
            let shutdown = outpost::server::ShutdownSignal::new();
            let server = outpost::server::Server::spawn_with_regions(
                "floor",
                listener,
                shutdown,
                limits,
                regions,
                move |_req, _peer| {
                    let resp = hit(body.clone()).map(outpost::body::full);
                    async move { resp }
                },
            );
            server.finished().await;
            return Ok(());
        }
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let resp = hit(body.clone()).map(Full::new);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

fn hit(body: Bytes) -> Response<Bytes> {
    let mut resp = Response::new(body);
    for (name, value) in HIT_FIELDS {
        resp.headers_mut()
            .insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    resp
}
