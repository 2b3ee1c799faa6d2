//! Talking to Bitcoin Core: a JSON-RPC client for the calls the controller
//! makes, and the node configuration (`bitcoin.conf`, `rpcauth`).

mod config;
mod rpc;

pub use config::{
    cache_sizes, derived_salt, extra_line_key, extra_line_problem, is_valid_rpc_user,
    node_option_lines, random_password, render_bitcoin_conf, rpcauth, CacheSizes, OWNED_KEYS,
    P2P_PORT, RPC_PORT, TYPED_KEYS,
};
pub use rpc::{
    AddedNodeAddress, AddedNodeInfo, BlockchainInfo, NetworkInfo, PeerInfo, RpcClient, RpcConfig,
    RpcError, RpcMetrics, RPC_NODE_ALREADY_ADDED, RPC_NODE_NOT_ADDED, RPC_NODE_NOT_CONNECTED,
};
