//! Peer protocol N-1 at the handshake: a node takes a hello of its own
//! version or the previous one and refuses others with the version rule,
//! and a dialer whose version the peer refuses dials again at the
//! previous one, so the link runs at the newest version both speak.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_cluster::codec;
use starling_cluster::transport::{
    version_refusal, BoxFuture, Frame, PeerHandler, PeerIdentity, PeerTransport, TcpTransport,
    TcpTransportConfig, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct NoApp;

impl PeerHandler for NoApp {
    fn request(&self, _: &PeerIdentity, _: Vec<u8>, _: Option<String>) -> BoxFuture<Result<Vec<u8>, String>> {
        Box::pin(async { Err("no application handler".into()) })
    }
    fn one_way(&self, _: &PeerIdentity, _: Vec<u8>, _: Option<String>) {}
}

async fn write(stream: &mut TcpStream, frame: &Frame) {
    let bytes = codec::encode(frame).unwrap();
    stream.write_all(&(bytes.len() as u32).to_be_bytes()).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
}

async fn read(stream: &mut TcpStream) -> Frame {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await.unwrap();
    let mut bytes = vec![0; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut bytes).await.unwrap();
    codec::decode(&bytes).unwrap()
}

fn hello(version: u32) -> Frame {
    Frame::Hello { version, cluster_id: "test-cluster".into(), node: "node-2".into(), incarnation: 2 }
}

#[tokio::test]
async fn a_node_accepts_its_own_and_the_previous_version_and_refuses_the_rest_with_the_version_rule() {
    assert_eq!(OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION - 1);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let transport = TcpTransport::new(TcpTransportConfig::new("test-cluster", "node-1"));
    tokio::spawn(Arc::clone(&transport).serve(listener, Arc::new(NoApp)));

    for version in [PROTOCOL_VERSION, OLDEST_PROTOCOL_VERSION] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        write(&mut stream, &hello(version)).await;
        assert!(
            matches!(read(&mut stream).await, Frame::Accepted { node, .. } if node == "node-1"),
            "version {version} is accepted"
        );
    }
    for version in [OLDEST_PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        write(&mut stream, &hello(version)).await;
        assert_eq!(read(&mut stream).await, Frame::Refused { reason: version_refusal(version) });
    }
}

/// A peer of the previous version answers a hello of this version as that
/// version's nodes do ("peer protocol version N is not supported"); the
/// dialer then gets a link at the previous version, and says so.
#[tokio::test]
async fn a_dialer_refused_its_version_links_at_the_previous_one() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let Frame::Hello { version, .. } = read(&mut stream).await else { panic!("not a hello") };
            heard.lock().unwrap().push(version);
            if version == OLDEST_PROTOCOL_VERSION {
                write(&mut stream, &Frame::Accepted { node: "old-node".into(), incarnation: 1 }).await;
                open.push(stream);
            } else {
                write(&mut stream, &Frame::Refused { reason: version_refusal(version) }).await;
            }
        }
    });
    let dialer = TcpTransport::new(TcpTransportConfig::new("test-cluster", "node-1"));
    let to = addr.to_string();
    dialer.warm(&to);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dialer.peer_version(&to).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no link; hellos seen: {:?}", seen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dialer.peer_version(&to), Some(OLDEST_PROTOCOL_VERSION));
    assert_eq!(dialer.peer_identity(&to).map(|peer| peer.name), Some("old-node".to_string()));
    assert_eq!(*seen.lock().unwrap(), vec![PROTOCOL_VERSION, OLDEST_PROTOCOL_VERSION]);
}
