//! bitcoin-controller: a Kubernetes controller for private Bitcoin regtest networks.
//!
//! The shape mirrors `kubernetes/sample-controller`: informers keep local caches,
//! event handlers turn changes into keys on a rate-limited workqueue, and workers
//! run a level-based reconcile for each key. See `docs/architecture.md`.

pub mod api;
pub mod bitcoin;
pub mod controller;
pub mod informer;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod server;
pub mod workqueue;
