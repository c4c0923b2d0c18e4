//! Listen addresses as operators write them: `IP:PORT`, or `HOST:PORT`
//! with a host name resolved once at load (`localhost:7601`).

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Deserializer};

/// `text` as a socket address; a host name resolves to its first IPv4
/// address if it has one (what `localhost` means to most operators).
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = "expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:7601 or localhost:7601";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` has no port: {expected}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("`{text}` is not an address: {expected}"));
    }
    let resolved: Vec<SocketAddr> = (host, port.parse::<u16>().unwrap_or(0))
        .to_socket_addrs()
        .map_err(|error| format!("`{text}`: host `{host}` does not resolve ({error}); {expected}"))?
        .collect();
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("`{text}`: host `{host}` has no address; {expected}"))
}

/// Serde's `deserialize_with` for a listen address.
pub fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_socket_addr(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_an_ip_or_a_host_name_and_always_a_port() {
        assert_eq!(parse_socket_addr("0.0.0.0:7601").unwrap(), "0.0.0.0:7601".parse().unwrap());
        assert_eq!(parse_socket_addr("[::1]:7601").unwrap(), "[::1]:7601".parse().unwrap());
        let localhost = parse_socket_addr("localhost:7601").unwrap();
        assert!(localhost.ip().is_loopback() && localhost.port() == 7601, "{localhost}");
        assert!(parse_socket_addr("localhost").unwrap_err().contains("has no port"));
        assert!(parse_socket_addr("localhost:http").unwrap_err().contains("is not an address"));
        assert!(parse_socket_addr(":7601").unwrap_err().contains("is not an address"));
        let unknown = parse_socket_addr("no-such-host.invalid:7601").unwrap_err();
        assert!(unknown.contains("does not resolve"), "{unknown}");
    }
}
