//! Talking to Bitcoin Core: a JSON-RPC client for the calls the controller
//! makes, and the node configuration (`bitcoin.conf`, `rpcauth`).

mod config;

pub use config::{
    is_valid_rpc_user, random_password, random_salt, render_bitcoin_conf, rpcauth, P2P_PORT,
    RPC_PORT,
};
