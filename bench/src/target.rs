//! The servers a scenario drives: the argument block every client command
//! (`idle`, `hold`, `fanout`, `joins`, `churn`) flattens into its own.

use clap::Args;

use crate::proto::Protocol;

/// `--protocol`, `--url`, `--token` and `--app-secret`.
#[derive(Args, Clone, Debug)]
pub struct Target {
    #[arg(long, value_enum, default_value = "starling")]
    pub protocol: Protocol,
    /// Server URL(s), comma-separated; connections are spread over them.
    #[arg(long)]
    pub url: String,
    /// A token that allows the scenario's rooms (Starling only).
    #[arg(long, default_value = "")]
    pub token: String,
    /// Pusher: the app's secret, which signs private and presence
    /// subscriptions here (the app key is the end of `--url`, `/app/{key}`).
    #[arg(long, default_value = "")]
    pub app_secret: String,
}

impl Target {
    /// The URLs in `--url`.
    pub fn urls(&self) -> Vec<String> {
        split_urls(&self.url)
    }

    /// What a connection authenticates with: the token (Starling) or the
    /// app secret (Pusher); see [`crate::proto::Conn::connect`].
    pub fn credential(&self) -> &str {
        match self.protocol {
            Protocol::Pusher => &self.app_secret,
            Protocol::Starling | Protocol::Socketio => &self.token,
        }
    }

    /// The same block as command-line arguments (for a child process).
    pub fn to_args(&self) -> Vec<String> {
        let protocol = match self.protocol {
            Protocol::Starling => "starling",
            Protocol::Socketio => "socketio",
            Protocol::Pusher => "pusher",
        };
        ["--protocol", protocol, "--url", &self.url, "--token", &self.token, "--app-secret", &self.app_secret]
            .map(str::to_string)
            .to_vec()
    }
}

/// A comma-separated list of URLs, blanks dropped.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}
