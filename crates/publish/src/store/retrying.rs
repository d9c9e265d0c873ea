//! [`Retrying`]: any [`ObjectStore`], with every call tried again under the one retry policy
//! ([`molt_fetch::retry::RetryPolicy`]) when the error says that may help
//! ([`StoreError::is_retryable`]: timeouts, connection failures, 5xx, throttling).
//!
//! The release tool wraps each region's store in it, and the stores themselves do not retry
//! (the S3 store has the SDK's retries off), so a request is never tried
//! `attempts × attempts` times. A conditional write that is retried after an ambiguous
//! failure may meet its own first attempt: the publisher tells that echo from a real
//! conflict by reading the object back ([`ObjectStore::put_body`]).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use molt_fetch::retry::{self, RetryPolicy};

use super::{Body, Condition, Object, ObjectMeta, ObjectStore, StoreError};

/// A store whose calls are retried under `policy`.
#[derive(Debug, Clone)]
pub struct Retrying {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl Retrying {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Retrying {
        Retrying { inner, policy }
    }

    /// `op` on the inner store under the policy; `operation` and `key` name it in the log.
    async fn retry<T, F, Fut>(&self, operation: &str, key: &str, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let what = format!("{operation} {}{key}", self.inner.describe());
        retry::run(&self.policy, &what, StoreError::is_retryable, op).await
    }
}

#[async_trait]
impl ObjectStore for Retrying {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        self.retry("GET", key, || self.inner.get(key)).await
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.retry("HEAD", key, || self.inner.stat(key)).await
    }

    async fn put_body(&self, key: &str, body: Body, cond: Condition) -> Result<(), StoreError> {
        self.retry("PUT", key, || {
            self.inner.put_body(key, body.clone(), cond.clone())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.retry("LIST", prefix, || self.inner.list(prefix)).await
    }

    async fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.retry("LIST", prefix, || self.inner.list_sized(prefix))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.retry("DELETE", key, || self.inner.delete(key)).await
    }
}
