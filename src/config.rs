//! Typed configuration: TOML file plus `STARLING_` environment overrides,
//! defaults, and validation with errors that name the offending key.
//!
//! This module owns what a setting means and its default. It must not open
//! sockets or start anything; `node` does that with the validated result.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

mod addr;
pub use addr::parse_socket_addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration of one node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub listen: ListenConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub websocket: WebSocketConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub api: ApiConfig,
    pub namespaces: Vec<NamespaceConfig>,
    /// Pusher Channels apps (`docs/pusher.md`): clients at `/app/{key}`,
    /// the signed HTTP API at `/apps/{id}/...`.
    pub apps: Vec<AppConfig>,
}

/// One Pusher Channels app: its credentials and limits. Its channels live
/// in their own room namespace, `pusher-{id}`, which nothing else reaches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app id of the HTTP API's paths (1 to 24 of a-z, 0-9, `_`, `-`).
    pub id: String,
    /// The key clients connect with (`/app/{key}`) and requests are signed with.
    pub key: String,
    /// The secret that signs channel authorisations and API requests.
    pub secret: String,
    /// Whether clients may send `client-*` events on private and presence channels.
    #[serde(default)]
    pub enable_client_messages: bool,
    /// Connections of this app on one node at most; absent: only
    /// `limits.max_connections` applies.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// The largest event `data`, in bytes (Pusher's own limit is 10 KB).
    #[serde(default = "default_app_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Client events one connection may send per second (Pusher: 10).
    #[serde(default = "default_client_events_per_second")]
    pub client_events_per_second: f64,
    /// How long a webhook request is retried (with backoff) before its
    /// events are given up and counted as failed.
    #[serde(default = "default_webhook_deadline_ms")]
    pub webhook_deadline_ms: u64,
    /// Where the app's events are POSTed (`[[apps.webhooks]]`).
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// The longest channel name (Pusher: 164, also the most allowed, so
    /// that the app's room name fits).
    #[serde(default = "default_max_channel_name_bytes")]
    pub max_channel_name_bytes: usize,
    /// The longest event name, API and client events (Pusher: 200).
    #[serde(default = "default_max_event_name_bytes")]
    pub max_event_name_bytes: usize,
    /// Channels one API event may go to (Pusher: 100).
    #[serde(default = "default_max_event_channels_at_once")]
    pub max_event_channels_at_once: usize,
    /// Events in one `batch_events` request (Pusher: 10).
    #[serde(default = "default_max_event_batch_size")]
    pub max_event_batch_size: usize,
    /// Users in one presence channel (Pusher: 100).
    #[serde(default = "default_max_presence_members_per_channel")]
    pub max_presence_members_per_channel: usize,
    /// The largest presence `user_info`, as JSON bytes (Pusher: 1 KB).
    #[serde(default = "default_max_presence_member_bytes")]
    pub max_presence_member_bytes: usize,
    /// Channels one connection may be subscribed to at once; absent: only
    /// `limits.max_rooms_per_connection` applies.
    #[serde(default)]
    pub max_channels_per_connection: Option<usize>,
}

/// One webhook receiver of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// The events it receives: any of [`WEBHOOK_EVENTS`]; absent: all.
    #[serde(default = "all_webhook_events")]
    pub events: Vec<String>,
}

/// The webhook events Starling sends, by Pusher's names.
pub const WEBHOOK_EVENTS: [&str; 6] =
    ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss"];

fn all_webhook_events() -> Vec<String> {
    WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect()
}

fn default_webhook_deadline_ms() -> u64 {
    5 * 60 * 1000
}

/// Pusher's longest channel name, and the most an app may allow.
pub const MAX_CHANNEL_NAME_BYTES: usize = 164;
/// Pusher's longest event name, and the most an app may allow.
pub const MAX_EVENT_NAME_BYTES: usize = 200;

fn default_max_channel_name_bytes() -> usize {
    MAX_CHANNEL_NAME_BYTES
}

fn default_max_event_name_bytes() -> usize {
    MAX_EVENT_NAME_BYTES
}

fn default_max_event_channels_at_once() -> usize {
    100
}

fn default_max_event_batch_size() -> usize {
    10
}

fn default_max_presence_members_per_channel() -> usize {
    100
}

fn default_max_presence_member_bytes() -> usize {
    1024
}

fn default_app_max_message_bytes() -> usize {
    10 * 1024
}

fn default_client_events_per_second() -> f64 {
    10.0
}

/// The prefix of every Pusher app's room namespace (`pusher-{id}`):
/// configured namespaces may not use it.
pub const APP_NAMESPACE_PREFIX: &str = "pusher-";

/// The longest app id, so that `pusher-{id}:{channel}` fits a room name
/// with a channel name of Pusher's maximum length (164).
pub const MAX_APP_ID_BYTES: usize = 24;

impl AppConfig {
    /// An app with every optional key at its default.
    pub fn with_defaults(id: &str, key: &str, secret: &str) -> AppConfig {
        AppConfig {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enable_client_messages: false,
            max_connections: None,
            max_message_bytes: default_app_max_message_bytes(),
            client_events_per_second: default_client_events_per_second(),
            webhook_deadline_ms: default_webhook_deadline_ms(),
            webhooks: Vec::new(),
            max_channel_name_bytes: default_max_channel_name_bytes(),
            max_event_name_bytes: default_max_event_name_bytes(),
            max_event_channels_at_once: default_max_event_channels_at_once(),
            max_event_batch_size: default_max_event_batch_size(),
            max_presence_members_per_channel: default_max_presence_members_per_channel(),
            max_presence_member_bytes: default_max_presence_member_bytes(),
            max_channels_per_connection: None,
        }
    }

    /// The room namespace of the app's channels.
    pub fn namespace(&self) -> String {
        format!("{APP_NAMESPACE_PREFIX}{}", self.id)
    }

    /// Checks the app's Pusher limits: the key and why, when one is out of range.
    fn validate_limits(&self, limits: &LimitsConfig) -> Result<(), (&'static str, String)> {
        let in_range = |field: &'static str, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err((field, format!("must be 1 to {max}")))
            }
        };
        in_range("max_channel_name_bytes", self.max_channel_name_bytes, MAX_CHANNEL_NAME_BYTES)?;
        in_range("max_event_name_bytes", self.max_event_name_bytes, MAX_EVENT_NAME_BYTES)?;
        in_range("max_event_channels_at_once", self.max_event_channels_at_once, 10_000)?;
        in_range("max_event_batch_size", self.max_event_batch_size, 1_000)?;
        in_range(
            "max_presence_members_per_channel",
            self.max_presence_members_per_channel,
            u32::MAX as usize,
        )?;
        in_range("max_presence_member_bytes", self.max_presence_member_bytes, limits.max_meta_bytes)
            .map_err(|(field, message)| (field, format!("{message} (limits.max_meta_bytes)")))?;
        if let Some(max) = self.max_channels_per_connection {
            in_range("max_channels_per_connection", max, limits.max_rooms_per_connection).map_err(
                |(field, message)| (field, format!("{message} (limits.max_rooms_per_connection)")),
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Unique name of this node in the cluster; shown as `node` to clients.
    pub name: String,
    /// Where the node keeps its durable state (the Raft log, in a cluster).
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { name: "node-1".into(), data_dir: "data/node-1".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// WebSocket listener for clients (`GET /ws`).
    #[serde(deserialize_with = "addr::socket_addr")]
    pub client: SocketAddr,
    /// HTTP listener: server API, health, metrics, demo page.
    #[serde(deserialize_with = "addr::socket_addr")]
    pub api: SocketAddr,
    /// Node-to-node links (Raft and forwarding).
    #[serde(deserialize_with = "addr::socket_addr")]
    pub peer: SocketAddr,
    /// Gossip (UDP).
    #[serde(deserialize_with = "addr::socket_addr")]
    pub gossip: SocketAddr,
    /// TLS on the client (`wss://`) and API (`https://`) listeners; absent:
    /// plain `ws://` and `http://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenTlsConfig>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        ListenConfig { client: at(7601), api: at(7701), peer: at(7801), gossip: at(7901), tls: None }
    }
}

/// The certificate the client and API listeners present. Relative paths
/// are taken from the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTlsConfig {
    /// PEM certificate chain, the node's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key: PathBuf,
}

impl ListenTlsConfig {
    /// Reads the certificate and key and builds the listeners' TLS config;
    /// errors name the key whose file is at fault.
    pub fn server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, ConfigError> {
        let certs =
            crate::tls::load_certs(&self.cert).map_err(|e| key_error("listen.tls.cert", e.to_string()))?;
        let key = crate::tls::load_private_key(&self.key)
            .map_err(|e| key_error("listen.tls.key", e.to_string()))?;
        crate::tls::server_config(certs, key).map_err(|e| key_error("listen.tls", e.to_string()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Nodes of another cluster id are refused (gossip and peer links).
    pub id: String,
    /// Gossip addresses of nodes to contact at start.
    pub seeds: Vec<String>,
    /// How many nodes form the first Raft group; 1 is a single node (no
    /// Raft, no gossip).
    pub bootstrap_expect: u32,
    /// Raft voters the autopilot keeps (more nodes are learners).
    pub voters: u32,
    /// Gossip round interval; failure detection takes about 8 to 10 rounds.
    pub gossip_interval_ms: u64,
    /// Raft leader heartbeat interval.
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout range. With the defaults a killed leader is
    /// replaced in about 1.3 to 1.5 s (measured by `tests/cluster_process.rs`).
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Log entries after which a Raft snapshot is taken and the log purged.
    pub snapshot_every: u64,
    /// A voter gone from gossip this long is replaced by a live learner
    /// (when there is one).
    pub replace_dead_voter_after_ms: u64,
    /// The key gossip datagrams are sealed with: base64 of 32 bytes, the
    /// same on every node (`starling cert create-ca` writes one).
    pub gossip_key: Option<String>,
    /// A file holding `gossip_key` (relative: from the config file's folder).
    pub gossip_key_file: Option<PathBuf>,
    /// No TLS on peer links and no gossip key. Refused unless every listen
    /// address is loopback: for development on one machine only.
    pub insecure: bool,
    /// Mutual TLS between nodes.
    pub tls: Option<ClusterTlsConfig>,
}

/// The certificates of peer links (PEM files; relative paths are taken from
/// the config file's folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// The cluster CA: peers must present a certificate it signed.
    pub ca: PathBuf,
    /// This node's certificate (chain), signed by `ca`, with a DNS name equal
    /// to `node.name`.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            id: "starling".into(),
            seeds: Vec::new(),
            bootstrap_expect: 1,
            voters: 3,
            gossip_interval_ms: 250,
            raft_heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every: 10_000,
            replace_dead_voter_after_ms: 60_000,
            gossip_key: None,
            gossip_key_file: None,
            insecure: false,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret for HS256/HS384/HS512 tokens.
    pub jwt_hs256_secret: Option<String>,
    /// PEM public key for RS256/RS384/RS512/PS256/ES256/ES384 tokens.
    pub jwt_public_key_pem: Option<String>,
    /// Accepted `alg` values; empty means the default of the key kind
    /// (HS256 for a secret; ES256 for an EC public key, else RS256).
    pub jwt_algorithms: Vec<String>,
    /// When set, tokens must carry this `aud`.
    pub jwt_audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub jwt_leeway_secs: u64,
    /// When set, tokens must carry `iat` and live at most this long
    /// (`exp - iat`, in seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_token_ttl_s: Option<u64>,
    /// Key for the HTTP server API (`Authorization: Bearer <api_key>`).
    pub api_key: Option<String>,
    /// Browser origins allowed to connect; `"*"` allows any. Requests with no
    /// `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
}

/// What kind of key verifies a token algorithm (RS and PS are one family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithmFamily {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

/// Every `alg` name `auth.jwt_algorithms` may hold, with its family. Config
/// validation checks names against this table; `auth` maps the names to its
/// JWT library's algorithms (and checks the table stays in step with it).
pub const JWT_ALGORITHMS: [(&str, JwtAlgorithmFamily); 12] = [
    ("HS256", JwtAlgorithmFamily::Hmac),
    ("HS384", JwtAlgorithmFamily::Hmac),
    ("HS512", JwtAlgorithmFamily::Hmac),
    ("RS256", JwtAlgorithmFamily::Rsa),
    ("RS384", JwtAlgorithmFamily::Rsa),
    ("RS512", JwtAlgorithmFamily::Rsa),
    ("PS256", JwtAlgorithmFamily::Rsa),
    ("PS384", JwtAlgorithmFamily::Rsa),
    ("PS512", JwtAlgorithmFamily::Rsa),
    ("ES256", JwtAlgorithmFamily::Ec),
    ("ES384", JwtAlgorithmFamily::Ec),
    // Known, but verified with neither key kind Starling takes.
    ("EdDSA", JwtAlgorithmFamily::Ed),
];

impl AuthConfig {
    /// Whether `jwt_algorithms` fits the configured key: known names that
    /// work with a shared secret (HS) or a public key (RS/PS or ES), all of
    /// one family. An empty list always fits (the key kind's default).
    pub fn check_jwt_algorithms(&self) -> Result<(), String> {
        let uses_public_key = self.jwt_public_key_pem.is_some();
        let mut families = Vec::new();
        for name in &self.jwt_algorithms {
            let Some(&(_, family)) = JWT_ALGORITHMS.iter().find(|(known, _)| known == name) else {
                return Err(format!("unknown or unsupported algorithm `{name}`"));
            };
            let fits = if uses_public_key {
                matches!(family, JwtAlgorithmFamily::Rsa | JwtAlgorithmFamily::Ec)
            } else {
                family == JwtAlgorithmFamily::Hmac
            };
            if !fits {
                let kind = if uses_public_key { "a public key" } else { "a shared secret" };
                return Err(format!("algorithm `{name}` does not work with {kind}"));
            }
            families.push(family);
        }
        if families.iter().any(|family| *family != families[0]) {
            return Err("all algorithms must be of one family (RS/PS or ES)".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open client connections per node; above it upgrades get HTTP 503.
    pub max_connections: usize,
    /// TCP connections still in the WebSocket handshake; above it new TCP
    /// connections are closed at once.
    pub max_pending_handshakes: usize,
    /// TCP connections from one client address (an IPv6 /64) still in the
    /// handshake; above it that address's new TCP connections are closed at
    /// once, so one address cannot take every pending-handshake slot.
    pub pending_handshakes_per_ip: usize,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_connection: usize,
    /// Largest client frame or message, in bytes; larger closes with 1009.
    pub max_message_bytes: usize,
    /// Largest `meta` object in a join, in bytes (`too_large`).
    pub max_meta_bytes: usize,
    /// Publishes per second per connection (token bucket refill rate).
    pub publish_per_second: f64,
    /// Publishes a connection may send in a burst.
    pub publish_burst: u32,
    /// Other requests (join, leave, presence, bad frames) per second per connection.
    pub requests_per_second: f64,
    pub request_burst: u32,
    /// Consecutive `rate_limited` replies after which the connection is closed with 4029.
    pub rate_limited_close_after: u32,
    /// Frames waiting to be written to one connection; above it the
    /// connection is closed with 4008 (slow consumer).
    pub outbound_queue_messages: usize,
    /// Bytes waiting to be written to one connection (same policy).
    pub outbound_queue_bytes: usize,
    /// Bytes of room history (every namespace's `history_size`) this node
    /// holds at most; above it the history of the rooms that published
    /// least recently is trimmed first.
    pub history_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_pending_handshakes: 1024,
            pending_handshakes_per_ip: 32,
            max_rooms_per_connection: 100,
            max_message_bytes: 64 * 1024,
            max_meta_bytes: 2048,
            publish_per_second: 50.0,
            publish_burst: 100,
            requests_per_second: 20.0,
            request_burst: 50,
            rate_limited_close_after: 20,
            outbound_queue_messages: 1024,
            outbound_queue_bytes: 1 << 20,
            history_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Read buffer per connection, allocated for its whole life.
    pub read_buffer_bytes: usize,
    /// Bytes tungstenite buffers before writing to the socket.
    pub write_buffer_bytes: usize,
    /// Time allowed from TCP accept to a finished upgrade.
    pub handshake_timeout_ms: u64,
    /// Interval of server `ping` frames.
    pub heartbeat_ms: u64,
    /// Extra silence allowed on top of `heartbeat_ms`: a connection from which
    /// no frame arrived for `heartbeat_ms + heartbeat_timeout_ms` is closed (4001).
    pub heartbeat_timeout_ms: u64,
    /// Time allowed to write the close frame before the socket is dropped.
    pub close_timeout_ms: u64,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            read_buffer_bytes: 4096,
            write_buffer_bytes: 16 * 1024,
            handshake_timeout_ms: 10_000,
            heartbeat_ms: 25_000,
            heartbeat_timeout_ms: 10_000,
            close_timeout_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Window over which client closes (1012) are spread on SIGTERM.
    pub drain_ms: u64,
    /// Hard limit for the whole shutdown; what is still open then is dropped.
    pub deadline_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_ms: 5_000, deadline_ms: 15_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directives, e.g. `info,starling::gateway=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        // openraft logs its internal state at info; operators want ours.
        LogConfig { level: "info,openraft=warn".into(), format: LogFormat::Pretty }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Trace export over OTLP/HTTP (protobuf). Unset keys fall back to the
/// standard `OTEL_*` environment variables; setting
/// `OTEL_EXPORTER_OTLP_ENDPOINT` alone turns export on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's base URL, e.g. `http://collector:4318`
    /// (`/v1/traces` is appended). Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// or `OTEL_EXPORTER_OTLP_ENDPOINT`; none of them: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of every span. Unset: `OTEL_SERVICE_NAME`, else `starling`.
    pub service_name: Option<String>,
    /// The share of publishes traced, 0.0 to 1.0 (parent-based: a publish
    /// carrying a sampled `traceparent` is always traced). Unset:
    /// `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, else 1.0.
    pub sampling_ratio: Option<f64>,
    /// Extra resource attributes (added to `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the demo chat page at `/` and dev tokens at `/dev/token`.
    /// Never turn this on where the API listener is reachable by untrusted users.
    pub demo: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The room prefix before `:`.
    pub name: String,
    /// Whether members are listed (join reply, `presence`).
    #[serde(default = "yes")]
    pub presence: bool,
    /// Whether `joined`/`left` events are sent to members.
    #[serde(default = "yes")]
    pub join_leave_events: bool,
    /// Who may publish: `members` (clients in the room) or `server` (API only).
    #[serde(default)]
    pub publish: PublishPolicy,
    /// Members per room; absent means unlimited.
    #[serde(default)]
    pub max_members: Option<u32>,
    /// Largest `data` of one publish, in bytes (`too_large`).
    #[serde(default = "default_max_data_bytes")]
    pub max_data_bytes: usize,
    /// Messages kept per room for recovery (`since`, `rewind`, the history
    /// endpoint); 0 keeps none.
    #[serde(default)]
    pub history_size: usize,
    /// How long a message is kept in history, in milliseconds; 0 keeps it
    /// until `history_size` or `limits.history_bytes` trims it.
    #[serde(default)]
    pub history_ttl_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_max_data_bytes() -> usize {
    32 * 1024
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishPolicy {
    #[default]
    Members,
    Server,
}

/// The shortest `auth.jwt_hs256_secret` accepted (256 bits, as HS256 needs).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// A configuration that could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML at line {line}, column {column}: {message}")]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A key set by a `STARLING_*` variable has a bad value.
    #[error("environment variable {var} (config key `{key}`): {message}")]
    EnvKey { var: String, key: String, message: String },
}

impl ConfigError {
    /// Names the variable when the key at fault came from one, or, for a
    /// rule between keys (`api.demo` needs a loopback `listen.api`), the
    /// variables that set the other keys the message names.
    fn naming_variable(self, from_env: &[(String, String)]) -> ConfigError {
        let ConfigError::Key { key, message } = self else {
            return self;
        };
        let set_by = from_env.iter().find(|(_, env_key)| {
            key == *env_key
                || key.starts_with(&format!("{env_key}."))
                || key.starts_with(&format!("{env_key}["))
                || env_key.starts_with(&format!("{key}."))
        });
        if let Some((var, _)) = set_by {
            return ConfigError::EnvKey { var: var.clone(), key, message };
        }
        let mentioned: Vec<String> = from_env
            .iter()
            .filter(|(_, env_key)| mentions_key(&message, env_key))
            .map(|(var, env_key)| format!("{env_key} is set by {var}"))
            .collect();
        if mentioned.is_empty() {
            return ConfigError::Key { key, message };
        }
        ConfigError::Key { key, message: format!("{message} ({})", mentioned.join(", ")) }
    }
}

/// Whether `message` names `key` as a whole key (`listen.api`, not
/// `listen.api_x`).
fn mentions_key(message: &str, key: &str) -> bool {
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    message.match_indices(key).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let after = message[at + key.len()..].chars().next();
        !before.is_some_and(is_key_char) && !after.is_some_and(|c| is_key_char(c) && c != '.')
    })
}

/// Whether `secret` is long enough for HS256 (the rule of
/// `auth.jwt_hs256_secret`, also applied by `starling token --secret`).
pub fn check_hs256_secret(secret: &str) -> Result<(), String> {
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(format!("must be at least {MIN_HS256_SECRET_BYTES} bytes (256 bits, as HS256 needs)"));
    }
    Ok(())
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    // A span is a byte offset; never slice inside a character.
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn key_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key { key: key.into(), message: message.into() }
}

impl Config {
    /// Reads `path` (if any), applies `STARLING_*` overrides from `env`, and
    /// validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.into(), source })?;
                text.parse::<toml::Table>().map_err(|e| {
                    let (line, column) = line_and_column(&text, e.span().map_or(0, |span| span.start));
                    ConfigError::Syntax { path: path.into(), line, column, message: e.message().to_string() }
                })?
            }
            None => toml::Table::new(),
        };
        let from_env = apply_env_overrides(&mut table, env)?;
        let mut config = Config::from_table(table).map_err(|e| e.naming_variable(&from_env))?;
        if let Some(folder) = path.and_then(Path::parent) {
            config.resolve_relative_paths(folder);
        }
        config.validate().map_err(|e| e.naming_variable(&from_env))?;
        Ok(config)
    }

    /// Makes the file paths of the config relative to `folder` (the config
    /// file's), so a node does not depend on the directory it starts in.
    fn resolve_relative_paths(&mut self, folder: &Path) {
        let mut paths: Vec<&mut PathBuf> = Vec::new();
        if let Some(tls) = &mut self.listen.tls {
            paths.extend([&mut tls.cert, &mut tls.key]);
        }
        if let Some(tls) = &mut self.cluster.tls {
            paths.extend([&mut tls.ca, &mut tls.cert, &mut tls.key]);
        }
        paths.extend(self.cluster.gossip_key_file.as_mut());
        for path in paths {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        }
    }

    /// Applies `STARLING_*` overrides on top of an in-memory config (the dev node).
    pub fn load_over(
        base: Config,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = toml::to_string(&base).map_err(|e| key_error("(top level)", e.to_string()))?;
        let mut table =
            text.parse::<toml::Table>().map_err(|e| key_error("(top level)", e.message().to_string()))?;
        let from_env = apply_env_overrides(&mut table, env)?;
        let config = Config::from_table(table).map_err(|e| e.naming_variable(&from_env))?;
        config.validate().map_err(|e| e.naming_variable(&from_env))?;
        Ok(config)
    }

    fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|error| {
            let key = error.path().to_string();
            let message = error.into_inner().message().to_string();
            key_error(if key == "." { "(top level)".into() } else { key }, message)
        })
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.name.is_empty() || self.node.name.len() > 64 {
            return Err(key_error("node.name", "must be 1 to 64 characters"));
        }
        if self.namespaces.is_empty() && self.apps.is_empty() {
            return Err(key_error(
                "namespaces",
                "no namespace is configured, so every join would be refused; add a [[namespaces]] table \
                 (e.g. name = \"chat\" for rooms `chat:*`) or a Pusher app ([[apps]])",
            ));
        }
        self.validate_cluster()?;
        let limits = &self.limits;
        let positive = [
            ("limits.max_connections", limits.max_connections),
            ("limits.max_pending_handshakes", limits.max_pending_handshakes),
            ("limits.pending_handshakes_per_ip", limits.pending_handshakes_per_ip),
            ("limits.max_rooms_per_connection", limits.max_rooms_per_connection),
            ("limits.max_message_bytes", limits.max_message_bytes),
            ("limits.outbound_queue_messages", limits.outbound_queue_messages),
            ("limits.outbound_queue_bytes", limits.outbound_queue_bytes),
            ("limits.publish_burst", limits.publish_burst as usize),
            ("limits.request_burst", limits.request_burst as usize),
            ("limits.rate_limited_close_after", limits.rate_limited_close_after as usize),
            ("websocket.heartbeat_ms", self.websocket.heartbeat_ms as usize),
            ("websocket.heartbeat_timeout_ms", self.websocket.heartbeat_timeout_ms as usize),
            ("websocket.handshake_timeout_ms", self.websocket.handshake_timeout_ms as usize),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(key_error(key, "must be greater than 0"));
            }
        }
        for (key, rate) in [
            ("limits.publish_per_second", limits.publish_per_second),
            ("limits.requests_per_second", limits.requests_per_second),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(key_error(key, "must be a positive number"));
            }
        }
        if self.limits.max_meta_bytes < 2 {
            return Err(key_error("limits.max_meta_bytes", "must be at least 2 (`{}`)"));
        }
        if !(256..=16 << 20).contains(&self.websocket.read_buffer_bytes) {
            return Err(key_error("websocket.read_buffer_bytes", "must be 256 to 16777216"));
        }
        if self.shutdown.deadline_ms < self.shutdown.drain_ms {
            return Err(key_error("shutdown.deadline_ms", "must be at least shutdown.drain_ms"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| key_error("log.level", e.to_string()))?;
        if let Some(ratio) = self.telemetry.sampling_ratio {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(key_error("telemetry.sampling_ratio", "must be from 0.0 to 1.0"));
            }
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            if !endpoint.starts_with("http://") || endpoint.parse::<warp::http::Uri>().is_err() {
                return Err(key_error(
                    "telemetry.otlp_endpoint",
                    "must be an http:// URL (the exporter has no TLS: export to a local collector)",
                ));
            }
        }
        self.validate_auth()?;
        self.validate_listeners()?;
        self.validate_namespaces()?;
        self.validate_apps()
    }

    fn validate_apps(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let key = |field: &str| format!("apps[{i}].{field}");
            let id_ok = app.id.len() <= MAX_APP_ID_BYTES && crate::protocol::is_namespace_name(&app.id);
            if !id_ok {
                return Err(key_error(key("id"), "must be 1 to 24 characters of a-z, 0-9, `_` or `-`"));
            }
            if !ids.insert(app.id.as_str()) {
                return Err(key_error(key("id"), format!("`{}` is used by two apps", app.id)));
            }
            let key_ok = !app.key.is_empty()
                && app.key.len() <= 128
                && app.key.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?' && b != b'%');
            if !key_ok {
                return Err(key_error(
                    key("key"),
                    "must be 1 to 128 printable ASCII characters, without `/`, `?` or `%`",
                ));
            }
            if !keys.insert(app.key.as_str()) {
                return Err(key_error(key("key"), "is used by two apps"));
            }
            if app.secret.is_empty() {
                return Err(key_error(key("secret"), "must not be empty"));
            }
            if app.max_connections == Some(0) {
                return Err(key_error(
                    key("max_connections"),
                    "must be greater than 0 (remove it for no app limit)",
                ));
            }
            if app.max_message_bytes == 0 || app.max_message_bytes > self.limits.max_message_bytes {
                return Err(key_error(
                    key("max_message_bytes"),
                    format!("must be 1 to limits.max_message_bytes ({})", self.limits.max_message_bytes),
                ));
            }
            if !(app.client_events_per_second.is_finite() && app.client_events_per_second > 0.0) {
                return Err(key_error(key("client_events_per_second"), "must be a positive number"));
            }
            if app.webhook_deadline_ms == 0 {
                return Err(key_error(key("webhook_deadline_ms"), "must be greater than 0"));
            }
            for (w, hook) in app.webhooks.iter().enumerate() {
                let key = |field: &str| format!("apps[{i}].webhooks[{w}].{field}");
                let url_ok = (hook.url.starts_with("http://") || hook.url.starts_with("https://"))
                    && hook.url.parse::<warp::http::Uri>().is_ok_and(|uri| uri.host().is_some());
                if !url_ok {
                    return Err(key_error(key("url"), "must be an http:// or https:// URL with a host"));
                }
                if let Some(unknown) = hook.events.iter().find(|e| !WEBHOOK_EVENTS.contains(&e.as_str())) {
                    return Err(key_error(
                        key("events"),
                        format!("`{unknown}` is not one of {}", WEBHOOK_EVENTS.join(", ")),
                    ));
                }
            }
            app.validate_limits(&self.limits).map_err(|(field, message)| key_error(key(field), message))?;
        }
        Ok(())
    }

    /// The demo page only on a loopback API listener; TLS files readable
    /// and fitting together.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        if self.api.demo && !self.listen.api.ip().is_loopback() {
            return Err(key_error(
                "api.demo",
                "must be false when listen.api is not a loopback address \
                 (the demo page hands out tokens to anyone who reaches it)",
            ));
        }
        if let Some(tls) = &self.listen.tls {
            tls.server_config()?;
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        if cluster.bootstrap_expect == 0 {
            return Err(key_error("cluster.bootstrap_expect", "must be at least 1"));
        }
        if !(1..=7).contains(&cluster.voters) {
            return Err(key_error("cluster.voters", "must be 1 to 7 (3 or 5 recommended)"));
        }
        if cluster.id.is_empty() {
            return Err(key_error("cluster.id", "must not be empty"));
        }
        if cluster.election_timeout_min_ms <= cluster.raft_heartbeat_ms
            || cluster.election_timeout_max_ms <= cluster.election_timeout_min_ms
        {
            return Err(key_error(
                "cluster.election_timeout_min_ms",
                "need raft_heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms",
            ));
        }
        if self.is_cluster() {
            for (key, addr) in [("listen.peer", self.listen.peer), ("listen.gossip", self.listen.gossip)] {
                if addr.ip().is_unspecified() {
                    return Err(key_error(
                        key,
                        "must be an address other nodes can reach, not 0.0.0.0 or ::",
                    ));
                }
            }
        }
        if cluster.gossip_interval_ms == 0 || cluster.snapshot_every == 0 {
            return Err(key_error("cluster", "gossip_interval_ms and snapshot_every must be greater than 0"));
        }
        if self.is_cluster() {
            self.cluster_security()?;
        }
        Ok(())
    }

    /// What protects this node's peer links and gossip, loaded and checked
    /// (files read, certificates verified against the CA and the node name).
    /// `None`: the cluster is explicitly insecure (loopback only).
    pub fn cluster_security(&self) -> Result<Option<ClusterSecurity>, ConfigError> {
        let cluster = &self.cluster;
        let has_key = cluster.gossip_key.is_some() || cluster.gossip_key_file.is_some();
        if cluster.insecure {
            if cluster.tls.is_some() || has_key {
                return Err(key_error(
                    "cluster.insecure",
                    "insecure = true cannot be combined with [cluster.tls] or a gossip key",
                ));
            }
            let listen = &self.listen;
            let all_loopback =
                [listen.client, listen.api, listen.peer, listen.gossip].iter().all(|a| a.ip().is_loopback());
            if !all_loopback {
                return Err(key_error(
                    "cluster.insecure",
                    "insecure = true is refused unless every listen address (client, api, peer, gossip) is loopback",
                ));
            }
            return Ok(None);
        }
        let Some(tls) = &cluster.tls else {
            return Err(key_error(
                "cluster.tls",
                "a cluster needs [cluster.tls] (ca, cert, key) and cluster.gossip_key or \
                 cluster.gossip_key_file (see `starling cert`), or cluster.insecure = true on loopback",
            ));
        };
        let gossip_key = match (&cluster.gossip_key, &cluster.gossip_key_file) {
            (Some(_), Some(_)) => {
                return Err(key_error("cluster.gossip_key", "set gossip_key or gossip_key_file, not both"))
            }
            (Some(text), None) => {
                parse_gossip_key(text).map_err(|message| key_error("cluster.gossip_key", message))?
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| key_error("cluster.gossip_key_file", format!("{}: {e}", path.display())))?;
                parse_gossip_key(&text).map_err(|message| {
                    key_error("cluster.gossip_key_file", format!("{}: {message}", path.display()))
                })?
            }
            (None, None) => {
                return Err(key_error(
                    "cluster.gossip_key",
                    "a cluster with TLS also needs cluster.gossip_key or cluster.gossip_key_file \
                     (`starling cert create-ca` writes gossip.key)",
                ))
            }
        };
        if !crate::certs::is_certificate_name(&self.node.name) {
            return Err(key_error(
                "node.name",
                "with [cluster.tls] the node name must be a DNS name (letters, digits, `-`, `.`): \
                 it is checked against the node's certificate",
            ));
        }
        let ca = crate::tls::load_certs(&tls.ca).map_err(|e| key_error("cluster.tls.ca", e.to_string()))?;
        let chain =
            crate::tls::load_certs(&tls.cert).map_err(|e| key_error("cluster.tls.cert", e.to_string()))?;
        let key = crate::tls::load_private_key(&tls.key)
            .map_err(|e| key_error("cluster.tls.key", e.to_string()))?;
        let peer_tls = starling_cluster::transport::PeerTls::new(ca, chain, key, &self.node.name)
            .map_err(|e| key_error("cluster.tls.cert", e.to_string()))?;
        Ok(Some(ClusterSecurity { peer_tls, gossip_key }))
    }

    /// Whether this node runs as a cluster member (Raft and gossip).
    pub fn is_cluster(&self) -> bool {
        self.cluster.bootstrap_expect > 1 || !self.cluster.seeds.is_empty()
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if auth.jwt_hs256_secret.is_some() && auth.jwt_public_key_pem.is_some() {
            return Err(key_error(
                "auth.jwt_public_key_pem",
                "set either auth.jwt_hs256_secret or auth.jwt_public_key_pem, not both",
            ));
        }
        if let Some(secret) = &auth.jwt_hs256_secret {
            check_hs256_secret(secret).map_err(|message| key_error("auth.jwt_hs256_secret", message))?;
        }
        if let Some(key) = &auth.api_key {
            if key.len() < 16 {
                return Err(key_error("auth.api_key", "must be at least 16 characters"));
            }
        }
        auth.check_jwt_algorithms().map_err(|e| key_error("auth.jwt_algorithms", e))?;
        if auth.max_token_ttl_s == Some(0) {
            return Err(key_error("auth.max_token_ttl_s", "must be greater than 0 when set"));
        }
        let loopback_only = [self.listen.client, self.listen.api].iter().all(|addr| addr.ip().is_loopback());
        let has_token_key = auth.jwt_hs256_secret.is_some() || auth.jwt_public_key_pem.is_some();
        let explicit_secrets = has_token_key && auth.api_key.is_some();
        if loopback_only || explicit_secrets {
            return Ok(());
        }
        Err(key_error(
            "auth",
            "listening on a non-loopback address (listen.client or listen.api) needs an explicit \
             token key (jwt_hs256_secret or jwt_public_key_pem) and api_key",
        ))
    }

    fn validate_namespaces(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, namespace) in self.namespaces.iter().enumerate() {
            let key = |field: &str| format!("namespaces[{i}].{field}");
            if !crate::protocol::is_namespace_name(&namespace.name) {
                return Err(key_error(key("name"), "must be 1 to 32 characters of a-z, 0-9, `_` or `-`"));
            }
            if namespace.name.starts_with(APP_NAMESPACE_PREFIX) {
                return Err(key_error(
                    key("name"),
                    format!("names starting with `{APP_NAMESPACE_PREFIX}` are reserved for Pusher apps ([[apps]])"),
                ));
            }
            if !seen.insert(namespace.name.as_str()) {
                return Err(key_error(key("name"), format!("`{}` is defined twice", namespace.name)));
            }
            if namespace.max_data_bytes == 0 {
                return Err(key_error(key("max_data_bytes"), "must be greater than 0"));
            }
            if namespace.history_size > self.limits.outbound_queue_messages {
                return Err(key_error(
                    key("history_size"),
                    format!(
                        "must be at most limits.outbound_queue_messages ({}): a recovery replays up to \
                         history_size messages into one connection's queue",
                        self.limits.outbound_queue_messages
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the node was given no token key or no API key, so that dev
    /// mode has to generate them (only allowed on loopback, see `validate`).
    pub fn needs_generated_secrets(&self) -> bool {
        (self.auth.jwt_hs256_secret.is_none() && self.auth.jwt_public_key_pem.is_none())
            || self.auth.api_key.is_none()
    }

    /// The effective configuration as TOML, with every secret masked.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        let mask = |value: &mut Option<String>| {
            if value.is_some() {
                *value = Some("********".into());
            }
        };
        mask(&mut masked.auth.jwt_hs256_secret);
        mask(&mut masked.auth.api_key);
        mask(&mut masked.cluster.gossip_key);
        for app in &mut masked.apps {
            app.secret = "********".into();
        }
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// The single dev node: loopback, demo page on, a `chat` namespace.
    pub fn dev() -> Config {
        let mut config = Config::default();
        config.node.name = "dev".into();
        config.node.data_dir = "data/dev".into();
        config.api.demo = true;
        config.auth.allowed_origins = vec![
            format!("http://{}", config.listen.api),
            format!("http://localhost:{}", config.listen.api.port()),
        ];
        config.namespaces = vec![NamespaceConfig {
            name: "chat".into(),
            presence: true,
            join_leave_events: true,
            publish: PublishPolicy::Members,
            max_members: None,
            max_data_bytes: default_max_data_bytes(),
            history_size: 100,
            history_ttl_ms: 300_000,
        }];
        config
    }
}

/// The loaded credentials of a secure cluster member.
#[derive(Clone)]
pub struct ClusterSecurity {
    pub peer_tls: starling_cluster::transport::PeerTls,
    pub gossip_key: starling_cluster::membership::GossipKey,
}

fn parse_gossip_key(text: &str) -> Result<starling_cluster::membership::GossipKey, String> {
    starling_cluster::membership::GossipKey::parse(text).map_err(|e| e.to_string())
}

/// `STARLING_` variables that are not config overrides (CLI inputs).
const NOT_CONFIG_VARS: [&str; 2] = ["STARLING_TOKEN_SECRET", "STARLING_API_KEY"];

/// Sets `STARLING_A__B=value` as key `a.b`. A value is read as TOML when it
/// parses as a TOML value (numbers, booleans, arrays), else as a string.
/// Sets the keys of `STARLING_*` variables in `table`; returns each
/// variable with the key it set (`limits.max_connections`).
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut set = Vec::new();
    for (var, raw) in env {
        let Some(path) = var.strip_prefix("STARLING_") else {
            continue;
        };
        if NOT_CONFIG_VARS.contains(&var.as_str()) {
            continue;
        }
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(ConfigError::Env { var, message: "empty key segment".into() });
        }
        let value = parse_env_value(&raw);
        let (last, parents) = keys.split_last().expect("split yields at least one key");
        let mut cursor = &mut *table;
        for key in parents {
            let entry = cursor.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = match entry {
                toml::Value::Table(inner) => inner,
                _ => return Err(ConfigError::Env { var, message: format!("`{key}` is not a table") }),
            };
        }
        cursor.insert(last.clone(), value);
        set.push((var, keys.join(".")));
    }
    Ok(set)
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Settings the gateway reads per connection, derived once from `Config`.
#[derive(Debug, Clone)]
pub struct NamespacePolicies {
    namespaces: std::collections::HashMap<String, NamespaceConfig>,
    /// The namespaces of Pusher apps (`pusher-{id}`), also in `namespaces`.
    apps: HashSet<String>,
}

impl NamespacePolicies {
    /// The configured namespaces and one per Pusher app.
    pub fn new(namespaces: &[NamespaceConfig], apps: &[AppConfig]) -> NamespacePolicies {
        let mut policies: std::collections::HashMap<String, NamespaceConfig> =
            namespaces.iter().map(|n| (n.name.clone(), n.clone())).collect();
        for app in apps {
            policies.insert(app.namespace(), app_namespace(app));
        }
        NamespacePolicies { namespaces: policies, apps: apps.iter().map(AppConfig::namespace).collect() }
    }

    /// The policy of a namespace, configured or an app's.
    pub fn get(&self, namespace: &str) -> Option<&NamespaceConfig> {
        self.namespaces.get(namespace)
    }

    /// Whether `namespace` is a Pusher app's.
    pub fn is_app(&self, namespace: &str) -> bool {
        self.apps.contains(namespace)
    }

    /// The history a room keeps, `(size, ttl_ms)`: its namespace's, except
    /// that a Pusher app's cache channel keeps its last event (for
    /// [`CACHE_CHANNEL_TTL_MS`], as Pusher keeps it).
    pub fn history_of(&self, room: &str) -> (usize, u64) {
        let (namespace, channel) = room.split_once(':').unwrap_or((room, ""));
        if self.is_app(namespace) && is_cache_channel(channel) {
            return (1, CACHE_CHANNEL_TTL_MS);
        }
        self.get(namespace).map_or((0, 0), |n| (n.history_size, n.history_ttl_ms))
    }
}

/// How long a Pusher cache channel keeps its last event (Pusher: 30 minutes).
pub const CACHE_CHANNEL_TTL_MS: u64 = 30 * 60 * 1000;

/// Whether a Pusher channel is a cache channel (`cache-`,
/// `private-cache-`, `presence-cache-`, `private-encrypted-cache-`),
/// whose last event is replayed to each new subscriber.
pub fn is_cache_channel(channel: &str) -> bool {
    ["cache-", "private-cache-", "presence-cache-", "private-encrypted-cache-"]
        .iter()
        .any(|prefix| channel.starts_with(prefix))
}

/// The room policy of a Pusher app's channels: members publish (client
/// events; who may is the Pusher adapter's check), presence is kept (per
/// user for `presence-` channels), data up to the app's limit.
fn app_namespace(app: &AppConfig) -> NamespaceConfig {
    NamespaceConfig {
        name: app.namespace(),
        presence: true,
        join_leave_events: true,
        publish: PublishPolicy::Members,
        max_members: None,
        max_data_bytes: app.max_message_bytes,
        history_size: 0,
        history_ttl_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apps_limits_default_to_pushers_are_checked_and_unknown_keys_are_refused() {
        let app = "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n";
        let config = load(app, &[]).unwrap();
        let limits = &config.apps[0];
        assert_eq!(
            (limits.max_channel_name_bytes, limits.max_event_name_bytes, limits.max_event_channels_at_once),
            (164, 200, 100)
        );
        assert_eq!(
            (
                limits.max_event_batch_size,
                limits.max_presence_members_per_channel,
                limits.max_presence_member_bytes
            ),
            (10, 100, 1024)
        );
        assert_eq!((limits.max_message_bytes, limits.max_channels_per_connection), (10240, None));
        let set = load(
            &format!("{app}max_channels_per_connection = 5\nmax_presence_members_per_channel = 3\n"),
            &[],
        );
        assert_eq!(set.unwrap().apps[0].max_channels_per_connection, Some(5));
        for (line, key) in [
            ("max_channel_name_bytes = 165", "apps[0].max_channel_name_bytes"),
            ("max_event_name_bytes = 0", "apps[0].max_event_name_bytes"),
            ("max_event_batch_size = 0", "apps[0].max_event_batch_size"),
            ("max_presence_member_bytes = 4096", "apps[0].max_presence_member_bytes"),
            ("max_channels_per_connection = 101", "apps[0].max_channels_per_connection"),
        ] {
            let error = load(&format!("{app}{line}\n"), &[]).unwrap_err().to_string();
            assert!(error.starts_with(&format!("config key `{key}`: must be 1 to")), "{error}");
        }
        let error = load(&format!("{app}max_channels = 5\n"), &[]).unwrap_err().to_string();
        assert!(error.contains("max_channels"), "{error}");
    }

    #[test]
    fn an_apps_cache_channels_keep_their_last_event_and_its_other_channels_none() {
        let app = AppConfig::with_defaults("app-1", "k", "s");
        let policies = NamespacePolicies::new(&[], &[app]);
        for channel in ["cache-x", "private-cache-x", "presence-cache-x", "private-encrypted-cache-x"] {
            let room = format!("pusher-app-1:{channel}");
            assert_eq!(policies.history_of(&room), (1, CACHE_CHANNEL_TTL_MS), "{channel}");
        }
        for channel in ["x", "private-x", "cachex", "private-encryptedcache-x"] {
            assert_eq!(policies.history_of(&format!("pusher-app-1:{channel}")), (0, 0), "{channel}");
        }
        assert_eq!(policies.history_of("other:cache-x"), (0, 0), "only an app's channels");
    }

    /// Loads `text` as a config file (with a `chat` namespace added where
    /// the text has none) and `env` as its environment.
    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let with_namespace;
        let text = if text.contains("namespaces") {
            text
        } else {
            with_namespace = format!("{text}\n[[namespaces]]\nname = \"chat\"\n");
            &with_namespace
        };
        load_exactly(text, env)
    }

    fn load_exactly(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("starling-config-{}", rand::random::<u64>()));
        std::fs::write(&dir, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let result = Config::load(Some(&dir), env);
        std::fs::remove_file(&dir).ok();
        result
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.listen.client.port(), 7601);
        assert_eq!(config.websocket.read_buffer_bytes, 4096);
    }

    #[test]
    fn token_algorithms_must_be_known_and_fit_the_key() {
        let secret = "[auth]\njwt_hs256_secret = \"0123456789abcdef0123456789abcdef\"\n";
        let public = "[auth]\njwt_public_key_pem = \"(a PEM)\"\n";
        let check = |key: &str, algorithms: &str| {
            load(&format!("{key}jwt_algorithms = {algorithms}\n"), &[]).map(|_| ()).map_err(|e| e.to_string())
        };
        let refused = |why: &str| Err(format!("config key `auth.jwt_algorithms`: {why}"));
        assert_eq!(check(secret, r#"["none"]"#), refused("unknown or unsupported algorithm `none`"));
        assert_eq!(check(secret, r#"["hs256"]"#), refused("unknown or unsupported algorithm `hs256`"));
        assert_eq!(
            check(secret, r#"["RS256"]"#),
            refused("algorithm `RS256` does not work with a shared secret")
        );
        assert_eq!(
            check(public, r#"["HS256"]"#),
            refused("algorithm `HS256` does not work with a public key")
        );
        assert_eq!(
            check(public, r#"["EdDSA"]"#),
            refused("algorithm `EdDSA` does not work with a public key")
        );
        assert_eq!(
            check(public, r#"["RS256", "ES256"]"#),
            refused("all algorithms must be of one family (RS/PS or ES)")
        );
        assert_eq!(check(secret, r#"["HS256", "HS512"]"#), Ok(()));
        assert_eq!(check(public, r#"["RS256", "PS512"]"#), Ok(()));
        assert_eq!(check(public, "[]"), Ok(()));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let error = load("[listen]\nclinet = \"127.0.0.1:1\"\n", &[]).unwrap_err().to_string();
        assert!(error.contains("listen") && error.contains("clinet"), "{error}");
        let error = load("[limits]\nmax_connections = \"many\"\n", &[]).unwrap_err().to_string();
        assert!(error.contains("limits.max_connections"), "{error}");
        let error = load("[limits]\nmax_connections = 0\n", &[]).unwrap_err().to_string();
        assert_eq!(error, "config key `limits.max_connections`: must be greater than 0");
        let error = load("[[namespaces]]\nname = \"Chat\"\n", &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `namespaces[0].name`"), "{error}");
    }

    #[test]
    fn env_overrides_win_over_the_file() {
        let config = load(
            "[listen]\nclient = \"127.0.0.1:1000\"\n",
            &[
                ("STARLING_LISTEN__CLIENT", "127.0.0.1:2000"),
                ("STARLING_LIMITS__MAX_CONNECTIONS", "7"),
                ("STARLING_AUTH__ALLOWED_ORIGINS", r#"["http://a"]"#),
                ("OTHER", "ignored"),
                ("STARLING_TOKEN_SECRET", "is for `starling token`, not config"),
            ],
        )
        .unwrap();
        assert_eq!(config.listen.client.port(), 2000);
        assert_eq!(config.limits.max_connections, 7);
        assert_eq!(config.auth.allowed_origins, vec!["http://a".to_string()]);
        let error = load("", &[("STARLING_LISTEN__NOPE", "1")]).unwrap_err().to_string();
        assert!(error.contains("nope"), "{error}");
    }

    #[test]
    fn non_loopback_needs_explicit_secrets() {
        let error = load("[listen]\nclient = \"0.0.0.0:7601\"\n", &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `auth`"), "{error}");
        let ok = format!(
            "[listen]\nclient = \"0.0.0.0:7601\"\n[auth]\njwt_hs256_secret = \"{}\"\napi_key = \"{}\"\n",
            "s".repeat(32),
            "k".repeat(16)
        );
        assert!(load(&ok, &[]).is_ok());
    }

    #[test]
    fn a_cluster_needs_tls_and_a_gossip_key_or_insecure_on_loopback_only() {
        let cluster = "[cluster]\nbootstrap_expect = 3\nseeds = [\"127.0.0.1:7901\"]\n";
        let error = load(cluster, &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `cluster.tls`") && error.contains("gossip_key"), "{error}");
        assert!(load(&format!("{cluster}insecure = true\n"), &[]).is_ok(), "insecure on loopback");
        let exposed = format!(
            "[listen]\npeer = \"10.1.2.3:7801\"\n{cluster}insecure = true\n[auth]\njwt_hs256_secret = \"{}\"\napi_key = \"{}\"\n",
            "s".repeat(32),
            "k".repeat(16)
        );
        let error = load(&exposed, &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `cluster.insecure`"), "{error}");
        let mixed = format!("{cluster}insecure = true\ngossip_key = \"x\"\n");
        assert!(load(&mixed, &[]).unwrap_err().to_string().starts_with("config key `cluster.insecure`"));

        let dir = std::env::temp_dir().join(format!("starling-config-cluster-{}", rand::random::<u64>()));
        crate::certs::create_ca(&dir.join("certs")).unwrap();
        crate::certs::create_node("node-1", &dir.join("certs"), &[]).unwrap();
        let tls =
            "[cluster.tls]\nca = \"certs/ca.crt\"\ncert = \"certs/node-1.crt\"\nkey = \"certs/node-1.key\"\n";
        let load_file = |text: &str| {
            let path = dir.join("node.toml");
            std::fs::write(&path, format!("{text}\n[[namespaces]]\nname = \"chat\"\n")).unwrap();
            Config::load(Some(&path), Vec::new())
        };
        let no_key = load_file(&format!("{cluster}{tls}")).unwrap_err().to_string();
        assert!(no_key.starts_with("config key `cluster.gossip_key`"), "{no_key}");
        let secure = format!("{cluster}gossip_key_file = \"certs/gossip.key\"\n{tls}");
        let config = load_file(&secure).unwrap();
        assert!(config.cluster_security().unwrap().is_some());
        let wrong_name = load_file(&format!("[node]\nname = \"node-2\"\n{secure}")).unwrap_err().to_string();
        assert!(wrong_name.starts_with("config key `cluster.tls.cert`"), "{wrong_name}");
        let bad_key =
            load_file(&format!("{cluster}gossip_key = \"c2hvcnQ=\"\n{tls}")).unwrap_err().to_string();
        assert!(
            bad_key.starts_with("config key `cluster.gossip_key`") && !bad_key.contains("c2hvcnQ"),
            "{bad_key}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_demo_page_is_refused_on_a_non_loopback_api_listener() {
        let secrets =
            format!("[auth]\njwt_hs256_secret = \"{}\"\napi_key = \"{}\"\n", "s".repeat(32), "k".repeat(16));
        let exposed = format!("[listen]\napi = \"0.0.0.0:7701\"\n[api]\ndemo = true\n{secrets}");
        let error = load(&exposed, &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `api.demo`"), "{error}");
        let env = [
            ("STARLING_LISTEN__API", "10.1.2.3:7701".to_string()),
            ("STARLING_AUTH__JWT_HS256_SECRET", "s".repeat(32)),
            ("STARLING_AUTH__API_KEY", "k".repeat(16)),
        ];
        let dev_exposed = Config::load_over(Config::dev(), env.map(|(k, v)| (k.to_string(), v)));
        let error = dev_exposed.unwrap_err().to_string();
        assert!(error.starts_with("config key `api.demo`"), "the dev node too: {error}");
        assert!(error.ends_with("(listen.api is set by STARLING_LISTEN__API)"), "{error}");
        assert!(load(&format!("[api]\ndemo = true\n{secrets}"), &[]).is_ok(), "loopback is fine");
        assert!(
            load(&format!("[listen]\napi = \"0.0.0.0:7701\"\n{secrets}"), &[]).is_ok(),
            "demo off is fine"
        );
    }

    #[test]
    fn new_edge_limits_are_validated() {
        let error = load("[limits]\npending_handshakes_per_ip = 0\n", &[]).unwrap_err().to_string();
        assert_eq!(error, "config key `limits.pending_handshakes_per_ip`: must be greater than 0");
        assert_eq!(load("", &[]).unwrap().limits.pending_handshakes_per_ip, 32);
        let error = load("[auth]\nmax_token_ttl_s = 0\n", &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `auth.max_token_ttl_s`"), "{error}");
        assert_eq!(load("[auth]\nmax_token_ttl_s = 900\n", &[]).unwrap().auth.max_token_ttl_s, Some(900));
    }

    #[test]
    fn tls_paths_are_relative_to_the_config_file_and_bad_files_name_their_key() {
        let dir = std::env::temp_dir().join(format!("starling-config-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("certs/node.crt"), generated.cert.pem()).unwrap();
        std::fs::write(dir.join("certs/node.key"), generated.signing_key.serialize_pem()).unwrap();
        let load_file = |text: &str| {
            let path = dir.join("node.toml");
            std::fs::write(&path, format!("{text}\n[[namespaces]]\nname = \"chat\"\n")).unwrap();
            Config::load(Some(&path), Vec::new())
        };
        let absolute = dir.join("certs/node.key");
        let config = load_file(&format!(
            "[listen.tls]\ncert = \"certs/node.crt\"\nkey = \"{}\"\n",
            absolute.display()
        ))
        .unwrap();
        let tls = config.listen.tls.as_ref().unwrap();
        assert_eq!(tls.cert, dir.join("certs/node.crt"), "relative: from the file's folder");
        assert_eq!(tls.key, absolute, "absolute: as is");
        assert!(config.to_masked_toml().contains("[listen.tls]"));

        let error = load_file("[listen.tls]\ncert = \"certs/missing.crt\"\nkey = \"certs/node.key\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("config key `listen.tls.cert`: cannot read") && error.contains("missing.crt"),
            "{error}"
        );
        let error = load_file("[listen.tls]\ncert = \"certs/node.key\"\nkey = \"certs/node.key\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("config key `listen.tls.cert`") && error.contains("no certificate"),
            "{error}"
        );
        let error = load_file("[listen.tls]\ncert = \"certs/node.crt\"\nkey = \"certs/node.crt\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("config key `listen.tls.key`") && error.contains("no private key"),
            "{error}"
        );
        let error = load_file("[listen.tls]\ncert = \"certs/node.crt\"\n").unwrap_err().to_string();
        assert!(error.contains("listen.tls") && error.contains("key"), "{error}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn masked_output_hides_secrets() {
        let mut config = Config::dev();
        config.auth.jwt_hs256_secret = Some("super-secret-value-that-is-long-enough".into());
        config.auth.api_key = Some("api-key-value-123".into());
        let text = config.to_masked_toml();
        assert!(!text.contains("super-secret") && !text.contains("api-key-value"), "{text}");
        assert!(text.contains("********"));
    }

    #[test]
    fn a_config_without_namespaces_is_refused_because_every_join_would_be() {
        let error = load_exactly("[node]\nname = \"n\"\n", &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `namespaces`: no namespace is configured"), "{error}");
        assert!(error.contains("[[namespaces]]") && error.contains("[[apps]]"), "says what to add: {error}");
        let error = load_exactly("", &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `namespaces`"), "an empty file too: {error}");
    }

    #[test]
    fn a_config_with_only_pusher_apps_is_valid() {
        let apps = "[[apps]]\nid = \"app-1\"\nkey = \"app-key\"\nsecret = \"app-secret\"\n";
        let config = load_exactly(apps, &[]).unwrap();
        assert!(config.namespaces.is_empty() && config.apps.len() == 1);
    }

    #[test]
    fn the_dev_node_and_the_example_configs_pass_validation() {
        Config::dev().validate().unwrap();
        Config::load_over(Config::dev(), Vec::new()).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["config/dev.toml", "config/pusher.toml", "config/cluster/node-1.toml"] {
            Config::load(Some(&root.join(file)), Vec::new()).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn an_environment_variable_that_sets_a_list_is_named_for_an_error_inside_it() {
        let env = [("STARLING_NAMESPACES", r#"[{name = "Chat"}]"#)];
        let error = load_exactly("", &env).unwrap_err().to_string();
        assert!(
            error.starts_with("environment variable STARLING_NAMESPACES (config key `namespaces[0].name`): "),
            "{error}"
        );
    }

    #[test]
    fn a_rule_between_keys_names_the_variables_that_set_them() {
        let error = load("", &[("STARLING_LISTEN__CLIENT", "0.0.0.0:7601")]).unwrap_err().to_string();
        assert!(error.starts_with("config key `auth`: listening on a non-loopback address"), "{error}");
        assert!(error.ends_with("(listen.client is set by STARLING_LISTEN__CLIENT)"), "{error}");
        assert!(mentions_key("when listen.api is not", "listen.api"));
        assert!(mentions_key("(listen.client or listen.api)", "listen.api"));
        assert!(!mentions_key("listen.api_x is", "listen.api"));
        assert!(!mentions_key("xlisten.api is", "listen.api"));
    }

    #[test]
    fn token_secrets_follow_the_servers_rule() {
        assert!(check_hs256_secret(&"s".repeat(MIN_HS256_SECRET_BYTES)).is_ok());
        let rule = check_hs256_secret("abc").unwrap_err();
        assert_eq!(rule, "must be at least 32 bytes (256 bits, as HS256 needs)");
        let error = load("[auth]\njwt_hs256_secret = \"abc\"\n", &[]).unwrap_err().to_string();
        assert_eq!(error, format!("config key `auth.jwt_hs256_secret`: {rule}"));
    }

    #[test]
    fn a_bad_value_from_an_environment_variable_names_the_variable_and_the_key() {
        let env = [("STARLING_LIMITS__MAX_CONNECTIONS", "lots")];
        let error = load("", &env).unwrap_err().to_string();
        assert!(
            error.starts_with("environment variable STARLING_LIMITS__MAX_CONNECTIONS (config key `limits.max_connections`): "),
            "{error}"
        );
        let error = load("", &[("STARLING_LIMITS__MAX_CONNECTIONS", "0")]).unwrap_err().to_string();
        assert_eq!(
            error,
            "environment variable STARLING_LIMITS__MAX_CONNECTIONS (config key `limits.max_connections`): must be greater than 0"
        );
        // The same mistake in the file names the key only.
        let error = load("[limits]\nmax_connections = 0\n", &[]).unwrap_err().to_string();
        assert_eq!(error, "config key `limits.max_connections`: must be greater than 0");
    }

    #[test]
    fn positions_inside_a_character_never_split_it() {
        let text = "a\nké = = 1";
        for offset in 0..=text.len() + 3 {
            let (line, column) = line_and_column(text, offset);
            assert!((1..=2).contains(&line) && column >= 1);
        }
        assert_eq!(line_and_column(text, 4), (2, 2), "inside `é`: at `é`");
    }

    #[test]
    fn a_toml_syntax_error_says_where() {
        let error = load_exactly("[node]\nname = \"n\"\nport = = 3\n", &[]).unwrap_err().to_string();
        assert!(error.contains("is not valid TOML at line 3, column 8: "), "{error}");
    }

    #[test]
    fn app_webhooks_need_an_http_url_and_known_events_and_default_to_every_event() {
        let app = "[[apps]]\nid = \"a1\"\nkey = \"k1\"\nsecret = \"s1\"\n";
        let config = load(&format!("{app}[[apps.webhooks]]\nurl = \"http://127.0.0.1:9/h\"\n"), &[]).unwrap();
        assert_eq!(config.apps[0].webhooks[0].events.len(), WEBHOOK_EVENTS.len());
        assert_eq!(config.apps[0].webhook_deadline_ms, 300_000);
        let error = load(&format!("{app}[[apps.webhooks]]\nurl = \"ftp://x/h\"\n"), &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "config key `apps[0].webhooks[0].url`: must be an http:// or https:// URL with a host"
        );
        let hook =
            "[[apps.webhooks]]\nurl = \"https://hooks.example/p\"\nevents = [\"member_added\", \"joined\"]\n";
        let error = load(&format!("{app}{hook}"), &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("config key `apps[0].webhooks[0].events`: `joined` is not one of"),
            "{error}"
        );
    }

    #[test]
    fn listen_addresses_may_name_a_host() {
        let config = load("[listen]\nclient = \"localhost:7601\"\n", &[]).unwrap();
        assert!(config.listen.client.ip().is_loopback());
        let error = load("[listen]\napi = \"localhost\"\n", &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `listen.api`: `localhost` has no port"), "{error}");
        let error = load("", &[("STARLING_LISTEN__CLIENT", "localhost:x")]).unwrap_err().to_string();
        assert!(
            error.starts_with("environment variable STARLING_LISTEN__CLIENT (config key `listen.client`)"),
            "{error}"
        );
    }
}
