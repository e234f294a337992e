//! [`BlockingClient`]: the same calls as [`MilvusClient`], for code without an async runtime.

use std::time::Duration;

use crate::client::{ClientConfig, Hit, IndexKind, MilvusClient, SearchParams};
use crate::error::{Error, Result};

/// [`MilvusClient`] driven by its own single-threaded Tokio runtime. Do not call it from inside
/// another Tokio runtime (use [`MilvusClient`] there).
#[derive(Debug)]
pub struct BlockingClient {
    runtime: tokio::runtime::Runtime,
    client: MilvusClient,
}

impl BlockingClient {
    /// Connects to `config.uri`.
    pub fn connect(config: &ClientConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Connect {
                uri: config.uri.clone(),
                message: format!("cannot start the client's runtime: {e}"),
            })?;
        let client = runtime.block_on(MilvusClient::connect(config))?;
        Ok(Self { runtime, client })
    }

    /// See [`MilvusClient::has_collection`].
    pub fn has_collection(&mut self, collection: &str) -> Result<bool> {
        self.runtime
            .block_on(self.client.has_collection(collection))
    }

    /// See [`MilvusClient::create_collection`].
    pub fn create_collection(&mut self, collection: &str, dim: usize) -> Result<()> {
        self.runtime
            .block_on(self.client.create_collection(collection, dim))
    }

    /// See [`MilvusClient::drop_collection`].
    pub fn drop_collection(&mut self, collection: &str) -> Result<()> {
        self.runtime
            .block_on(self.client.drop_collection(collection))
    }

    /// See [`MilvusClient::insert_batches`].
    pub fn insert_batches(
        &mut self,
        collection: &str,
        ids: &[i64],
        vectors: &[f32],
        dim: usize,
        batch_rows: usize,
        progress: impl FnMut(usize),
    ) -> Result<u64> {
        self.runtime.block_on(
            self.client
                .insert_batches(collection, ids, vectors, dim, batch_rows, progress),
        )
    }

    /// See [`MilvusClient::create_index`].
    pub fn create_index(&mut self, collection: &str, kind: IndexKind) -> Result<()> {
        self.runtime
            .block_on(self.client.create_index(collection, kind))
    }

    /// See [`MilvusClient::load_collection`].
    pub fn load_collection(&mut self, collection: &str, wait: Duration) -> Result<()> {
        self.runtime
            .block_on(self.client.load_collection(collection, wait))
    }

    /// See [`MilvusClient::search`].
    pub fn search(
        &mut self,
        collection: &str,
        queries: &[f32],
        dim: usize,
        params: SearchParams,
    ) -> Result<Vec<Vec<Hit>>> {
        self.runtime
            .block_on(self.client.search(collection, queries, dim, params))
    }
}
