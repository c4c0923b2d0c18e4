//! Certificates for test clusters, made by the same code as `starling cert`:
//! one CA and gossip key per test process, one certificate per node name.
//! Cluster tests run with TLS and a sealed gossip, as production does.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use starling::Config;

pub struct TestCerts {
    pub dir: PathBuf,
    /// Serialises making node certificates (tests run in parallel).
    made: Mutex<()>,
}

/// This process's cluster CA (made on first use).
pub fn test_certs() -> &'static TestCerts {
    static CERTS: OnceLock<TestCerts> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("starling-test-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        starling::certs::create_ca(&dir).expect("create the test CA");
        TestCerts { dir, made: Mutex::new(()) }
    })
}

impl TestCerts {
    /// The certificate and key paths of node `name`, made on first use.
    pub fn node(&self, name: &str) -> (PathBuf, PathBuf) {
        let _made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        let (cert, key) = (self.dir.join(format!("{name}.crt")), self.dir.join(format!("{name}.key")));
        if !cert.exists() {
            starling::certs::create_node(name, &self.dir, &["127.0.0.1".into()])
                .expect("create a node certificate");
        }
        (cert, key)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn gossip_key_file(&self) -> PathBuf {
        self.dir.join("gossip.key")
    }

    /// `STARLING_` variables that turn a node started from an insecure
    /// example config into a secure one.
    pub fn env(&self, name: &str) -> Vec<(String, String)> {
        let (cert, key) = self.node(name);
        let path = |p: PathBuf| p.display().to_string();
        vec![
            ("STARLING_CLUSTER__INSECURE".into(), "false".into()),
            ("STARLING_CLUSTER__TLS__CA".into(), path(self.ca())),
            ("STARLING_CLUSTER__TLS__CERT".into(), path(cert)),
            ("STARLING_CLUSTER__TLS__KEY".into(), path(key)),
            ("STARLING_CLUSTER__GOSSIP_KEY_FILE".into(), path(self.gossip_key_file())),
        ]
    }

    /// Makes an in-process node's config secure.
    pub fn apply(&self, config: &mut Config) {
        let (cert, key) = self.node(&config.node.name);
        config.cluster.insecure = false;
        config.cluster.gossip_key_file = Some(self.gossip_key_file());
        config.cluster.tls = Some(starling::config::ClusterTlsConfig { ca: self.ca(), cert, key });
    }
}
