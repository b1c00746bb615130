//! One forwarding datastore for tests: [`Hooked`] passes every call to the store it wraps,
//! and lets a [`Hooks`] value refuse a write before it reaches the store (an injected
//! conflict or outage, a pause) and see its outcome after.

use std::future::Future;

use crate::model::IpamBlock;
use crate::store::{
    BatchWrite, Datastore, HandleSnapshot, Kind, Labelled, NodeSnapshot, Op, OpCounts, Resource,
    Revision, Scope, StoreError, Stored,
};

/// What a test wants to do around the writes of a [`Hooked`] store. Reads pass untouched.
pub trait Hooks: Send + Sync {
    /// Called before a create, update, delete or commit (`kind` and `name` of the object;
    /// a commit is reported as `Op::Update` of an `IPAMBlock` named `"batch"`). An error is
    /// returned to the caller instead of writing.
    fn before_write(
        &self,
        op: Op,
        kind: Kind,
        name: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (op, kind, name);
        async { Ok(()) }
    }

    /// Called with each write's error, if it failed in the store.
    fn after_write(&self, op: Op, kind: Kind, error: Option<&StoreError>) {
        let _ = (op, kind, error);
    }
}

/// A store that forwards to `inner`, running `hooks` around every write.
pub struct Hooked<D, H> {
    /// The wrapped store.
    pub inner: D,
    /// What runs around its writes.
    pub hooks: H,
}

impl<D, H> Hooked<D, H> {
    /// Wraps `inner`.
    pub fn new(inner: D, hooks: H) -> Self {
        Hooked { inner, hooks }
    }

    fn seen<T>(&self, op: Op, kind: Kind, r: Result<T, StoreError>) -> Result<T, StoreError>
    where
        H: Hooks,
    {
        self.hooks.after_write(op, kind, r.as_ref().err());
        r
    }
}

impl<D: Datastore, H: Hooks> Datastore for Hooked<D, H> {
    async fn get<R: Resource>(&self, name: &str) -> Result<Stored<R>, StoreError> {
        self.inner.get(name).await
    }

    async fn list<R: Resource>(&self, scope: Scope<'_>) -> Result<Vec<Stored<R>>, StoreError> {
        self.inner.list(scope).await
    }

    async fn create<R: Resource>(&self, name: &str, value: R) -> Result<Revision, StoreError> {
        self.hooks.before_write(Op::Create, R::KIND, name).await?;
        let r = self.inner.create(name, value).await;
        self.seen(Op::Create, R::KIND, r)
    }

    async fn update<R: Resource>(
        &self,
        name: &str,
        value: R,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        self.hooks.before_write(Op::Update, R::KIND, name).await?;
        let r = self.inner.update(name, value, revision).await;
        self.seen(Op::Update, R::KIND, r)
    }

    async fn delete<R: Resource>(&self, name: &str, revision: &Revision) -> Result<(), StoreError> {
        self.hooks.before_write(Op::Delete, R::KIND, name).await?;
        let r = self.inner.delete::<R>(name, revision).await;
        self.seen(Op::Delete, R::KIND, r)
    }

    fn op_counts(&self) -> OpCounts {
        self.inner.op_counts()
    }

    async fn labels(&self, object: Labelled<'_>) -> Result<Option<crate::Labels>, StoreError> {
        self.inner.labels(object).await
    }

    async fn node_snapshot(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        self.inner.node_snapshot(node).await
    }

    async fn upgrade_node(&self, node: &str) -> Result<Option<usize>, StoreError> {
        self.inner.upgrade_node(node).await
    }

    fn supports_commit(&self) -> bool {
        self.inner.supports_commit()
    }

    fn commits_releases(&self) -> bool {
        self.inner.commits_releases()
    }

    fn max_commit_writes(&self) -> usize {
        self.inner.max_commit_writes()
    }

    async fn handle_snapshot(&self, handle: &str) -> Result<HandleSnapshot, StoreError> {
        self.inner.handle_snapshot(handle).await
    }

    async fn commit(&self, writes: Vec<BatchWrite>) -> Result<Vec<Option<Revision>>, StoreError> {
        self.hooks
            .before_write(Op::Update, IpamBlock::KIND, "batch")
            .await?;
        let r = self.inner.commit(writes).await;
        self.seen(Op::Update, IpamBlock::KIND, r)
    }
}
