//! The browser Origin allow-list checked before a WebSocket upgrade.

/// Allowed origins, compared exactly (scheme, host and port), ASCII
/// case-insensitively. Browsers always send `Origin` on WebSocket requests;
/// a request without one comes from a non-browser client, for which the
/// header offers no protection, so it is allowed.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    any: bool,
    allowed: Vec<String>,
}

impl OriginPolicy {
    pub fn new(allowed: &[String]) -> OriginPolicy {
        OriginPolicy {
            any: allowed.iter().any(|o| o == "*"),
            allowed: allowed.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
        }
    }

    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        self.any || self.allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
    }
}

#[cfg(test)]
mod tests {
    use super::OriginPolicy;

    #[test]
    fn only_listed_origins_are_allowed() {
        let policy = OriginPolicy::new(&["http://localhost:7701/".into()]);
        assert!(policy.allows(Some("http://localhost:7701")));
        assert!(policy.allows(Some("HTTP://LOCALHOST:7701")));
        assert!(!policy.allows(Some("http://evil.example")));
        assert!(!policy.allows(Some("http://localhost:7702")));
        assert!(!policy.allows(Some("null")));
        assert!(policy.allows(None));
        assert!(OriginPolicy::new(&["*".into()]).allows(Some("http://x")));
        assert!(!OriginPolicy::new(&[]).allows(Some("http://x")));
    }
}
