//! The `starling` command line: `serve` (the default), `check-config`, `token`,
//! `cert` and `cluster`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use starling::auth::{mint_token, MintRequest};
use starling::{Config, Node};

#[derive(Parser)]
#[command(name = "starling", version, about = "Clustered real-time WebSocket server with no external broker")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML). Without one, a single dev node runs on loopback.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default).
    Serve,
    /// Validate a config file and print the effective config, secrets masked.
    CheckConfig { file: PathBuf },
    /// Mint an HS256 token (for development and tests).
    Token {
        /// The shared secret (auth.jwt_hs256_secret).
        #[arg(long, env = "STARLING_TOKEN_SECRET", hide_env_values = true)]
        secret: String,
        /// The user id.
        #[arg(long)]
        sub: String,
        /// Room glob the user may join; repeat for several.
        #[arg(long = "rooms", default_value = "*")]
        rooms: Vec<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// `meta` claim, a JSON object.
        #[arg(long)]
        meta: Option<String>,
        #[arg(long)]
        aud: Option<String>,
        #[arg(long)]
        iss: Option<String>,
    },
    /// Make the certificates and the gossip key of a secure cluster.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Operate a running cluster through a node's HTTP API.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Remove a dead node from the Raft group for good (its voter seat or
    /// learner place): `DELETE /api/cluster/nodes/NAME` on any node. The
    /// API address and key come from --config (a node's config file) or
    /// from --api and --api-key.
    RemoveNode {
        /// The node name (`node.name`) to remove; it must be stopped.
        name: String,
        /// The API base URL of any node, e.g. http://10.0.0.11:7701.
        #[arg(long)]
        api: Option<String>,
        /// The API key (auth.api_key).
        #[arg(long, env = "STARLING_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// A PEM CA certificate to trust for an https API (with a private CA).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write DIR/ca.crt, DIR/ca.key and DIR/gossip.key (keys 0600; existing files are never overwritten).
    CreateCa {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write DIR/NAME.crt and DIR/NAME.key, signed by DIR/ca.crt and DIR/ca.key, for node NAME.
    CreateNode {
        /// The node name (`node.name`); the certificate is valid for it.
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// Another DNS name or IP address the certificate is valid for; repeat for several.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

/// Errors are printed as one line per cause (`error: ...: ...`), never
/// as a backtrace, whatever `RUST_BACKTRACE` says: they are messages for
/// the operator, not crashes.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_message(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `a: b: c`, leaving out a cause
/// whose text the line already ends with (an error that prints its source
/// would otherwise repeat it).
fn error_message(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config),
        Command::CheckConfig { file } => {
            let config = Config::load(Some(&file), std::env::vars())?;
            print!("{}", config.to_masked_toml());
            Ok(())
        }
        Command::Token { secret, sub, rooms, ttl, meta, aud, iss } => {
            let meta = match meta {
                Some(text) => Some(serde_json::from_str(&text).context("--meta must be a JSON object")?),
                None => None,
            };
            // The server's rule for auth.jwt_hs256_secret: a token signed
            // with a secret it refuses would never be accepted.
            if let Err(rule) = starling::config::check_hs256_secret(&secret) {
                anyhow::bail!(
                    "--secret {rule}: the server refuses a shorter auth.jwt_hs256_secret, so no token signed with it would be accepted"
                );
            }
            let request = MintRequest { sub, rooms, ttl, meta, audience: aud, issuer: iss };
            println!("{}", mint_token(&secret, &request)?);
            Ok(())
        }
        Command::Cert(CertCommand::CreateCa { dir }) => {
            for path in starling::certs::create_ca(&dir)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Cert(CertCommand::CreateNode { name, dir, hosts }) => {
            for path in starling::certs::create_node(&name, &dir, &hosts)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Cluster(ClusterCommand::RemoveNode { name, api, api_key, ca }) => {
            remove_node(&name, cli.config.as_deref(), api, api_key, ca.as_deref())
        }
    }
}

/// `starling cluster remove-node`: the API's answer, as one line.
fn remove_node(
    name: &str,
    config: Option<&std::path::Path>,
    api: Option<String>,
    api_key: Option<String>,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => Some(Config::load(Some(path), std::env::vars())?),
        None => None,
    };
    let base = match (api, &config) {
        (Some(api), _) => api,
        (None, Some(config)) => {
            let mut addr = config.listen.api;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let scheme = if config.listen.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{addr}")
        }
        (None, None) => {
            anyhow::bail!("give --api URL (and --api-key), or --config with a node's config file")
        }
    };
    let Some(key) = api_key.or_else(|| config.as_ref().and_then(|c| c.auth.api_key.clone())) else {
        anyhow::bail!(
            "no API key: give --api-key (or STARLING_API_KEY), or a --config that sets auth.api_key"
        );
    };
    starling::tls::install_default_provider();
    let mut client = reqwest::Client::builder().timeout(Duration::from_secs(15));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
        let certificate =
            reqwest::Certificate::from_pem(&pem).with_context(|| format!("--ca {}", ca.display()))?;
        client = client.add_root_certificate(certificate);
    }
    let client = client.build()?;
    // The url crate encodes the name as one path segment.
    let mut url = reqwest::Url::parse(&base).with_context(|| format!("API URL {base}"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("API URL {base} cannot take a path"))?
        .pop_if_empty()
        .extend(["api", "cluster", "nodes", name]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, body) = runtime.block_on(async {
        let response = client
            .delete(url.clone())
            .bearer_auth(&key)
            .send()
            .await
            .with_context(|| format!("DELETE {url}"))?;
        let status = response.status();
        let body = response.text().await.with_context(|| format!("DELETE {url}"))?;
        anyhow::Ok((status, body))
    })?;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let message = json["error"]["message"].as_str().unwrap_or(body.trim());
        anyhow::bail!("{url} answered {status}: {message}");
    }
    let list = |key: &str| {
        let names: Vec<&str> =
            json[key].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let seat = if json["was_voter"].as_bool() == Some(true) { "voter" } else { "learner" };
    println!("removed {name} (a {seat}); voters now: {}; learners: {}", list("voters"), list("learners"));
    Ok(())
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = match &path {
        Some(path) => Config::load(Some(path), std::env::vars())?,
        None => {
            let mut config = Config::dev();
            // Env overrides apply to the dev node too.
            let overrides: Vec<_> = std::env::vars().filter(|(k, _)| k.starts_with("STARLING_")).collect();
            if !overrides.is_empty() {
                config = Config::load_over(config, overrides)?;
            }
            config
        }
    };
    // Before the runtime: the span exporter's HTTP client must not be
    // built inside it.
    let telemetry = starling::telemetry::init(
        &config.log,
        &config.telemetry,
        &config.node.name,
        &starling::telemetry::OtelEnv::from_process(),
    )?;
    let generated = config.needs_generated_secrets().then(|| generate_secrets(&mut config));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let exporting = telemetry.exporting();
    let served = runtime.block_on(async move {
        let node = Node::start(config.clone()).await?;
        if exporting {
            tracing::info!("exporting traces over OTLP/HTTP");
        }
        match generated {
            Some(secret) => print_dev_banner(&config, &node, secret.as_deref())?,
            None => print_node_banner(&config, &node, path.as_deref()),
        }
        wait_for_signal().await?;
        node.shutdown().await;
        Ok(())
    });
    // Spans still buffered go out before the process ends.
    telemetry.shutdown();
    served
}

/// Fills in a missing token secret and API key (loopback only, enforced by
/// validation). Returns the token secret if it was generated.
fn generate_secrets(config: &mut Config) -> Option<String> {
    let random = || {
        let bytes: [u8; 24] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    if config.auth.api_key.is_none() {
        config.auth.api_key = Some(random());
    }
    if config.auth.jwt_hs256_secret.is_none() && config.auth.jwt_public_key_pem.is_none() {
        let secret = random();
        config.auth.jwt_hs256_secret = Some(secret.clone());
        return Some(secret);
    }
    None
}

fn print_dev_banner(config: &Config, node: &Node, secret: Option<&str>) -> anyhow::Result<()> {
    let api_key = config.auth.api_key.as_deref().unwrap_or_default();
    println!("Starling dev node `{}` is running (version {}).", config.node.name, env!("CARGO_PKG_VERSION"));
    println!("  WebSocket:  {}", node.client_url());
    println!("  HTTP API:   {}", node.api_url());
    if config.api.demo {
        println!("  Demo chat:  {}/  (open it in two tabs)", node.api_url());
    }
    println!("  API key:    {api_key}");
    if let Some(secret) = secret {
        let request = MintRequest {
            sub: "alice".into(),
            rooms: vec!["chat:*".into()],
            ttl: Duration::from_secs(3600),
            meta: None,
            audience: config.auth.jwt_audience.clone(),
            issuer: config.auth.jwt_issuer.clone(),
        };
        println!("  JWT secret: {secret}");
        println!("  Sample token (alice, chat:*, 1h): {}", mint_token(secret, &request)?);
    }
    println!("These secrets are generated at each start and are for this process only.");
    Ok(())
}

/// What a node started from a config file tells its operator: where it
/// listens and where its secrets come from (never the secrets).
fn print_node_banner(config: &Config, node: &Node, path: Option<&std::path::Path>) {
    let source = path.map_or_else(|| "STARLING_* variables".to_string(), |p| p.display().to_string());
    println!(
        "Starling node `{}` is running (version {}, config: {source}).",
        config.node.name,
        env!("CARGO_PKG_VERSION")
    );
    println!("  WebSocket:  {}", node.client_url());
    println!("  HTTP API:   {}  (Authorization: Bearer <auth.api_key>)", node.api_url());
    if config.api.demo {
        println!("  Demo chat:  {}/", node.api_url());
    }
    if let (Some(peer), Some(gossip)) = (node.peer_addr(), node.gossip_addr()) {
        let security =
            if config.cluster.insecure { "insecure (loopback only)" } else { "mutual TLS, sealed gossip" };
        println!(
            "  Cluster:    peer {peer}, gossip {gossip}, {security}; see {}/api/cluster",
            node.api_url()
        );
        let seeds = if config.cluster.seeds.is_empty() {
            "none (other nodes seed from this one)".to_string()
        } else {
            config.cluster.seeds.join(", ")
        };
        println!(
            "  Peers:      gossip seeds {seeds}; the first Raft group forms when {} nodes are up",
            config.cluster.bootstrap_expect
        );
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    Ok(())
}
