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

/// The two API calls a reflector needs. Implemented for [`Api`] (every
/// object the `Api` reaches) and for [`ApiSource`] (only those matching its
/// selectors); tests implement it with a scripted fake.
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
        let params = watch_params(timeout_secs, None, None);
        async move {
            let events = Api::watch(self, &params, resource_version).await?;
            Ok(events.boxed())
        }
        .boxed()
    }
}

/// An [`Api`] narrowed by a label selector and/or a field selector, both
/// sent with every list page and every watch call, so the cache only ever
/// holds matching objects (an object that stops matching is reported by
/// the watch as deleted).
///
/// ```text
/// let source = ApiSource::new(Api::<Pod>::all(client))
///     .label_selector("app.kubernetes.io/managed-by=bitcoin-controller");
/// let informer = Informer::new(source, resync);
/// ```
#[derive(Clone)]
pub struct ApiSource<K> {
    api: Api<K>,
    label_selector: Option<String>,
    field_selector: Option<String>,
}

impl<K> ApiSource<K> {
    /// Every object `api` reaches, until a selector is set.
    pub fn new(api: Api<K>) -> Self {
        Self {
            api,
            label_selector: None,
            field_selector: None,
        }
    }

    /// Only objects whose labels match `selector` (e.g. `a=b,c!=d`,
    /// `env in (x,y)`); replaces a selector set before.
    pub fn label_selector(mut self, selector: impl Into<String>) -> Self {
        self.label_selector = Some(selector.into());
        self
    }

    /// Only objects whose fields match `selector` (e.g.
    /// `metadata.name=x`); replaces a selector set before.
    pub fn field_selector(mut self, selector: impl Into<String>) -> Self {
        self.field_selector = Some(selector.into());
        self
    }

    /// The parameters of a list page: the reflector's paging plus the
    /// selectors.
    pub(super) fn list_params(&self, page: &ListParams) -> ListParams {
        ListParams {
            label_selector: self.label_selector.clone(),
            field_selector: self.field_selector.clone(),
            ..page.clone()
        }
    }

    /// The parameters of a watch call.
    pub(super) fn watch_params(&self, timeout_secs: u32) -> WatchParams {
        watch_params(
            timeout_secs,
            self.label_selector.as_deref(),
            self.field_selector.as_deref(),
        )
    }
}

impl<K> From<Api<K>> for ApiSource<K> {
    fn from(api: Api<K>) -> Self {
        Self::new(api)
    }
}

/// A watch with bookmarks that the server ends after `timeout_secs`.
fn watch_params(timeout_secs: u32, labels: Option<&str>, fields: Option<&str>) -> WatchParams {
    let mut params = WatchParams::default().timeout(timeout_secs);
    params.bookmarks = true;
    params.label_selector = labels.map(str::to_owned);
    params.field_selector = fields.map(str::to_owned);
    params
}

impl<K> ListerWatcher<K> for ApiSource<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn list<'a>(
        &'a self,
        params: &'a ListParams,
    ) -> BoxFuture<'a, Result<ObjectList<K>, kube_client::Error>> {
        let params = self.list_params(params);
        async move { self.api.list(&params).await }.boxed()
    }

    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
        timeout_secs: u32,
    ) -> BoxFuture<'a, Result<WatchStream<K>, kube_client::Error>> {
        let params = self.watch_params(timeout_secs);
        async move {
            let events = self.api.watch(&params, resource_version).await?;
            Ok(events.boxed())
        }
        .boxed()
    }
}
