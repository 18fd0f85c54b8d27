//! https upstreams: a local rustls server with a test CA, HTTP/2 negotiated by ALPN.

mod common;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outpost::admin::client::HttpClient;
use outpost::config::{Config, Overrides};
use outpost::Outpost;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Starts an https server for `localhost` signed by a fresh CA; returns (port, CA PEM).
async fn tls_server() -> (u16, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let text = format!("{:?} {}", req.version(), req.uri().path());
                    Ok::<_, std::convert::Infallible>(Response::new(outpost::body::full(text)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca.pem())
}

fn config(port: u16, dir: &std::path::Path, ca: Option<&std::path::Path>) -> Config {
    let ca_line = match ca {
        Some(p) => format!("ca_file = {:?}\nroots = \"none\"", p.display().to_string()),
        None => String::new(),
    };
    let src = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[upstreams.api]\nurl = \"https://localhost:{port}\"\nconnect_timeout = \"2s\"\n{ca_line}\n[[routes]]\nprefix = \"/\"\nstrategy = \"network-only\"\nqueue = false\n",
        dir.display().to_string()
    );
    Config::from_toml(&src, "tls.toml", &Overrides::default()).unwrap()
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_speaks_http2_by_alpn() {
    let (port, ca_pem) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let outpost = Outpost::start(config(port, &dir.path().join("data"), Some(&ca_path)))
        .await
        .unwrap();
    let client = HttpClient::new(Duration::from_secs(10));
    let r = client
        .call(
            http::Method::GET,
            &format!("http://{}/hello", outpost.addr()),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.head.status, 200);
    assert_eq!(String::from_utf8_lossy(&r.body), "HTTP/2.0 /hello");
    outpost.shutdown().await;
}

#[tokio::test]
async fn https_upstream_with_an_unknown_ca_is_a_502_not_a_connection() {
    let (port, _) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config(port, dir.path(), None)).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(10));
    let r = client
        .call(
            http::Method::POST,
            &format!("http://{}/hello", outpost.addr()),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.head.status, 502);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(body.contains("certificate") || body.contains("UnknownIssuer"), "{body}");
    outpost.shutdown().await;
}
