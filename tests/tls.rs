//! `[listen.tls]`: the client listener speaks `wss://` and the API listener
//! `https://` with the configured certificate, and a client that does not
//! speak TLS fails cleanly without hurting anyone else.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use starling::config::ListenTlsConfig;
use starling::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A self-signed certificate for `localhost`, written as PEM files, and a
/// connector that trusts it.
struct TestCertificate {
    dir: PathBuf,
    connector: TlsConnector,
}

impl TestCertificate {
    fn new() -> TestCertificate {
        let dir = std::env::temp_dir().join(format!("starling-tls-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("node.crt"), generated.cert.pem()).unwrap();
        std::fs::write(dir.join("node.key"), generated.signing_key.serialize_pem()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(generated.cert.der().to_vec())).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TestCertificate { dir, connector: TlsConnector::from(Arc::new(config)) }
    }

    fn config(&self) -> Config {
        let mut config = test_config();
        config.listen.tls =
            Some(ListenTlsConfig { cert: self.dir.join("node.crt"), key: self.dir.join("node.key") });
        config
    }

    async fn connect(&self, addr: std::net::SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        within("the TLS handshake", self.connector.connect(name, tcp)).await.expect("TLS handshake")
    }
}

impl Drop for TestCertificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens `wss://` to the node, checks the welcome and a join, and closes.
async fn wss_join(certificate: &TestCertificate, node: &Node, user: &str) {
    let stream = certificate.connect(node.client_addr()).await;
    let mut request = node.client_url().into_client_request().unwrap();
    let bearer = format!("Bearer {}", token(user, &["*"]));
    request.headers_mut().insert("authorization", bearer.parse().unwrap());
    let (mut ws, response) =
        within("the upgrade", tokio_tungstenite::client_async(request, stream)).await.expect("upgrade");
    assert_eq!(response.status(), 101);
    assert_eq!(next_json(&mut ws).await["type"], json!("welcome"));
    let join = json!({"type": "join", "id": 1, "room": "chat:tls"}).to_string();
    ws.send(WsMessage::text(join)).await.unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!((reply["id"].clone(), reply["ok"].clone()), (json!(1), json!(true)), "{reply}");
    ws.close(None).await.unwrap();
}

/// The next text frame, as JSON.
async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match within("a frame", ws.next()).await {
            Some(Ok(WsMessage::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// Sends one HTTP/1.1 request over `stream` and returns the raw response.
async fn raw_http<S>(mut stream: S, path: &str, authorization: Option<&str>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A peer that ends TLS without close_notify is an error here; what was
    // read so far is still the answer.
    let _ = within("an HTTP response", stream.read_to_end(&mut raw)).await;
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_serve_with_the_configured_certificate() {
    let certificate = TestCertificate::new();
    let node = start(certificate.config()).await;
    assert!(node.client_url().starts_with("wss://"), "{}", node.client_url());
    assert!(node.api_url().starts_with("https://"), "{}", node.api_url());

    wss_join(&certificate, &node, "alice").await;

    let health = raw_http(certificate.connect(node.api_addr()).await, "/healthz", None).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok"), "{health}");
    let bearer = format!("Bearer {API_KEY}");
    let cluster = raw_http(certificate.connect(node.api_addr()).await, "/api/cluster", Some(&bearer)).await;
    assert!(cluster.starts_with("HTTP/1.1 200") && cluster.contains("\"leader\""), "{cluster}");

    wait_until("the session has ended", || node.stats().connection_tasks == 0).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_on_tls_listeners_fail_cleanly_and_others_are_served() {
    let certificate = TestCertificate::new();
    let mut config = certificate.config();
    config.websocket.handshake_timeout_ms = 1_000;
    let node = start(config).await;

    // ws:// to the wss:// listener: the upgrade fails, nothing panics.
    let tcp = TcpStream::connect(node.client_addr()).await.unwrap();
    let mut request = format!("ws://{}/ws", node.client_addr()).into_client_request().unwrap();
    let bearer = format!("Bearer {}", token("mallory", &["*"]));
    request.headers_mut().insert("authorization", bearer.parse().unwrap());
    let plain = within("the plain upgrade attempt", tokio_tungstenite::client_async(request, tcp)).await;
    assert!(plain.is_err(), "a plain WebSocket client must not be upgraded");

    // http:// to the https:// listener: no HTTP answer.
    let tcp = TcpStream::connect(node.api_addr()).await.unwrap();
    let answer = raw_http(tcp, "/healthz", None).await;
    assert!(!answer.contains("HTTP/1.1"), "{answer:?}");

    // A TCP client that never starts TLS is dropped at the handshake timeout.
    let mut silent = TcpStream::connect(node.client_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = within("the silent socket is dropped", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    wait_until("no connection task is left", || node.stats().connection_tasks == 0).await;
    wss_join(&certificate, &node, "alice").await;
    node.shutdown().await;
}
