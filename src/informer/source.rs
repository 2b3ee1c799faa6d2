//! Where a reflector gets its objects from: the list and watch calls.

use std::fmt::Debug;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube_client::api::{ListParams, WatchEvent, WatchParams};
use kube_client::core::ObjectList;
use kube_client::{Api, Resource};
use serde::de::DeserializeOwned;

/// The events of one watch call, until the server ends it.
pub type WatchStream<K> = BoxStream<'static, Result<WatchEvent<K>, kube_client::Error>>;

/// The two API calls a reflector needs. Implemented for [`Api`]; tests
/// implement it with a scripted fake.
pub trait ListerWatcher<K: Clone>: Send + Sync {
    /// One page of a list; `params` carries `limit` and, after the first
    /// page, the `continue_token` of the previous one.
    fn list<'a>(
        &'a self,
        params: &'a ListParams,
    ) -> BoxFuture<'a, Result<ObjectList<K>, kube_client::Error>>;

    /// Watches from `resource_version`, with bookmarks; the server ends the
    /// call after `timeout_secs`.
    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
        timeout_secs: u32,
    ) -> BoxFuture<'a, Result<WatchStream<K>, kube_client::Error>>;
}

impl<K> ListerWatcher<K> for Api<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn list<'a>(
        &'a self,
        params: &'a ListParams,
    ) -> BoxFuture<'a, Result<ObjectList<K>, kube_client::Error>> {
        Api::list(self, params).boxed()
    }

    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
        timeout_secs: u32,
    ) -> BoxFuture<'a, Result<WatchStream<K>, kube_client::Error>> {
        async move {
            let mut params = WatchParams::default().timeout(timeout_secs);
            params.bookmarks = true;
            let events = Api::watch(self, &params, resource_version).await?;
            Ok(events.boxed())
        }
        .boxed()
    }
}
