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
        .await?;
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

    pub async fn stop(self) {
        self.node.stop().await;
    }
}
