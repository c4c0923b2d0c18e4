//! The servers a scenario drives: the argument block every client command
//! (`idle`, `hold`, `fanout`, `joins`, `churn`) flattens into its own.

use clap::Args;

use crate::proto::Protocol;

/// `--protocol`, `--url` and `--token`.
#[derive(Args, Clone, Debug)]
pub struct Target {
    #[arg(long, value_enum, default_value = "starling")]
    pub protocol: Protocol,
    /// Server URL(s), comma-separated; connections are spread over them.
    #[arg(long)]
    pub url: String,
    /// A token that allows the scenario's rooms (ignored by Socket.IO).
    #[arg(long, default_value = "")]
    pub token: String,
}

impl Target {
    /// The URLs in `--url`.
    pub fn urls(&self) -> Vec<String> {
        split_urls(&self.url)
    }

    /// The same block as command-line arguments (for a child process).
    pub fn to_args(&self) -> Vec<String> {
        let protocol = match self.protocol {
            Protocol::Starling => "starling",
            Protocol::Socketio => "socketio",
        };
        ["--protocol", protocol, "--url", &self.url, "--token", &self.token].map(str::to_string).to_vec()
    }
}

/// A comma-separated list of URLs, blanks dropped.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}
