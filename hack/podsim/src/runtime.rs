//! The "container runtime": one regtest node per bitcoin pod.

use crate::net::RpcTarget;
use regtest_node::{Config, Node, NodeOptions};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// bitcoind would refuse this bitcoin.conf.
    #[error("bitcoin.conf: {0}")]
    Config(String),
    #[error("starting node: {0}")]
    Io(#[from] std::io::Error),
}

pub struct PodNode {
    node: Node,
}

impl PodNode {
    pub async fn start(ip: IpAddr, conf: &str, datadir: PathBuf) -> Result<PodNode, StartError> {
        let config = Config::parse(conf).map_err(|e| StartError::Config(e.to_string()))?;
        std::fs::create_dir_all(&datadir)?;
        let node = Node::start(NodeOptions {
            bind_ip: ip,
            config,
            datadir: Some(datadir),
        })
        .await
        .map_err(|e| match e.kind() {
            // e.g. a chain other than regtest: the config's fault
            std::io::ErrorKind::InvalidInput => StartError::Config(e.to_string()),
            _ => StartError::Io(e),
        })?;
        Ok(PodNode { node })
    }

    pub fn rpc_target(&self) -> RpcTarget {
        RpcTarget {
            addr: self.node.rpc_addr(),
            cookie: self.node.cookie().to_string(),
        }
    }

    pub fn describe(&self) -> String {
        format!("rpc {} p2p {}", self.node.rpc_addr(), self.node.p2p_addr())
    }

    pub fn set_rpc_hang(&self, hang: bool) {
        self.node.set_rpc_hang(hang);
    }

    /// Resolves when the node shut down by itself (RPC `stop`).
    pub async fn stopped(&self) {
        self.node.stopped().await
    }

    pub async fn stop(self) {
        self.node.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::run_probe;
    use crate::probe::Action;
    use std::time::Duration;

    /// The probe path end to end against a real regtest node: cookie auth,
    /// the rpc-hang fault, and a stopped node.
    #[tokio::test]
    async fn getnetworkinfo_probe_against_regtest_node() {
        let pid = std::process::id();
        let ip: IpAddr = format!("127.77.{}.{}", (pid >> 8) % 250, 2 + pid % 250)
            .parse()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("podsim-runtime-{pid}"));
        let conf = "regtest=1\nserver=1\n[regtest]\nrpcbind=0.0.0.0\nrpcallowip=0.0.0.0/0\n";
        let node = PodNode::start(ip, conf, dir.clone()).await.unwrap();
        let target = node.rpc_target();
        assert_eq!(target.addr, std::net::SocketAddr::new(ip, 18443));
        assert!(target.cookie.starts_with("__cookie__:"));
        let t = Duration::from_secs(2);
        run_probe(&Action::GetNetworkInfo, ip, Some(&target), t)
            .await
            .unwrap();
        run_probe(
            &Action::Tcp {
                host: None,
                port: 18444,
            },
            ip,
            None,
            t,
        )
        .await
        .unwrap();
        let wrong = crate::net::RpcTarget {
            addr: target.addr,
            cookie: "__cookie__:nope".into(),
        };
        assert!(run_probe(&Action::GetNetworkInfo, ip, Some(&wrong), t)
            .await
            .is_err());

        node.set_rpc_hang(true);
        let short = Duration::from_millis(300);
        let err = run_probe(&Action::GetNetworkInfo, ip, Some(&target), short)
            .await
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        node.set_rpc_hang(false);
        run_probe(&Action::GetNetworkInfo, ip, Some(&target), t)
            .await
            .unwrap();

        node.stop().await;
        assert!(run_probe(&Action::GetNetworkInfo, ip, Some(&target), t)
            .await
            .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn bad_config_is_a_config_error() {
        let dir = std::env::temp_dir().join(format!("podsim-runtime-bad-{}", std::process::id()));
        let ip: IpAddr = "127.77.251.2".parse().unwrap();
        let err = PodNode::start(ip, "regtest=1\nrpcauth=garbage\n", dir.clone())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, StartError::Config(_)), "{err}");
        let err = PodNode::start(ip, "testnet=1\n", dir.clone())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, StartError::Config(_)), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
