//! The ceiling for our stack: a plain tokio-tungstenite broadcast server.
//!
//! It speaks just enough of Starling's wire contract for the load generator
//! (`welcome`, `join`/`leave` with replies, fire-and-forget `publish`) and
//! does nothing else: no auth, no presence, no offsets, no limits. A publish
//! is encoded once and the same frame (reference-counted bytes) is queued to
//! every member; each connection's writer batches queued frames into one
//! flush, as Starling's gateway does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Frames queued per connection before further ones are dropped.
const QUEUE: usize = 4096;

type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::Sender<Message>)>>>>;

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: Option<u64>,
    #[serde(borrow)]
    room: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Serves on `listener` until the process ends.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let rooms: Rooms = Arc::default();
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let (rooms, id) = (rooms.clone(), ids.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            let _ = connection(stream, id, rooms).await;
        });
    }
}

/// Binds `addr` and serves in a background task; returns the bound address.
pub async fn spawn(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(local)
}

async fn connection(stream: TcpStream, id: u64, rooms: Rooms) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            sink.feed(first).await?;
            while let Ok(more) = rx.try_recv() {
                sink.feed(more).await?;
            }
            sink.flush().await?;
        }
        anyhow::Ok(())
    });
    let welcome =
        format!(r#"{{"type":"welcome","conn":"raw-{id}","node":"raw","user":"bench","heartbeat_ms":0}}"#);
    let _ = tx.send(Message::text(welcome)).await;
    let mut joined: Vec<String> = Vec::new();
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else { continue };
        let Ok(request) = serde_json::from_str::<Request>(&text) else { continue };
        let room = request.room.as_deref().unwrap_or("").to_string();
        match request.kind {
            "join" => {
                rooms.lock().expect("rooms lock").entry(room.clone()).or_default().push((id, tx.clone()));
                joined.push(room);
            }
            "leave" => {
                leave(&rooms, &room, id);
                joined.retain(|r| *r != room);
            }
            "publish" => {
                let data = request.data.map_or("null", RawValue::get);
                let frame = Message::text(format!(
                    r#"{{"type":"message","room":{},"data":{data}}}"#,
                    serde_json::to_string(&room)?
                ));
                if let Some(members) = rooms.lock().expect("rooms lock").get(&room) {
                    for (_, member) in members {
                        let _ = member.try_send(frame.clone());
                    }
                }
            }
            _ => {}
        }
        if let Some(rid) = request.id {
            let reply = format!(r#"{{"type":"reply","id":{rid},"ok":true,"result":{{}}}}"#);
            let _ = tx.send(Message::text(reply)).await;
        }
    }
    for room in joined {
        leave(&rooms, &room, id);
    }
    drop(tx);
    writer.abort();
    Ok(())
}

fn leave(rooms: &Rooms, room: &str, id: u64) {
    let mut rooms = rooms.lock().expect("rooms lock");
    if let Some(members) = rooms.get_mut(room) {
        members.retain(|(m, _)| *m != id);
        if members.is_empty() {
            rooms.remove(room);
        }
    }
}
