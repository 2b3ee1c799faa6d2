//! Informers: local caches of API objects kept current by a reflector, with
//! event handlers and periodic resync, in the style of client-go's
//! `SharedIndexInformer` (one informer per kind, shared by the controller).

mod source;

pub use source::{ListerWatcher, WatchStream};
