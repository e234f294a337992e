//! Item embeddings in Milvus, the distributed vector database, searched with user vectors.
//!
//! A small client over plain gRPC (tonic + prost; the few `MilvusService` messages it needs are
//! written by hand in `proto.rs` with their `.proto` field numbers, so there is no protoc and no
//! build script). It works against Milvus standalone, a cluster's proxy and Milvus Lite 3.
//!
//! - [`MilvusClient`] (async) and [`BlockingClient`]: create a collection of `i64` ids
//!   ([`ID_FIELD`]) and `f32` vectors ([`VECTOR_FIELD`]), insert in batches, build a FLAT or HNSW
//!   inner-product index ([`IndexKind`]), load, search top-K ([`Hit`]: id and score), drop.
//! - [`compare_top_k`]: a server's top-K against the exact top-K, where items of equal score may be
//!   ordered differently ([`Agreement`]).
//! - [`lite::LiteServer`]: a Milvus Lite server on a free loopback port, killed on drop (tests).
//!
//! Scores are inner products, the same as `dssm-retrieval`'s indexes, so a FLAT collection returns
//! the exact top-K of the exported item embeddings.
//!
//! *Invariant:* no other crate of this workspace; vectors come in as row-major `&[f32]` with a
//! dimension and ids as `i64`. Reading the export's Parquet files belongs to the caller (`dssm milvus`).
//!
//! ```no_run
//! use std::time::Duration;
//! use dssm_milvus::{BlockingClient, ClientConfig, IndexKind, SearchParams};
//!
//! let mut milvus = BlockingClient::connect(&ClientConfig::new("http://127.0.0.1:19530"))?;
//! // Three items in 2-d.
//! let (ids, vectors) = ([10_i64, 20, 30], [1.0_f32, 0.0, 0.0, 1.0, 0.6, 0.8]);
//! milvus.create_collection("items", 2)?;
//! milvus.insert_batches("items", &ids, &vectors, 2, 10_000, |_| {})?;
//! milvus.create_index("items", IndexKind::Flat)?;
//! milvus.load_collection("items", Duration::from_secs(60))?;
//! let hits = milvus.search("items", &[0.0, 1.0], 2, SearchParams::top(2))?;
//! assert_eq!(hits[0].iter().map(|h| h.id).collect::<Vec<_>>(), [20, 30]);
//! milvus.drop_collection("items")?;
//! # Ok::<(), dssm_milvus::Error>(())
//! ```
#![deny(missing_docs)]

mod blocking;
mod client;
mod compare;
mod error;
pub mod lite;
mod proto;

pub use blocking::BlockingClient;
pub use client::{
    ClientConfig, Hit, ID_FIELD, IndexKind, MilvusClient, SearchParams, VECTOR_FIELD,
};
pub use compare::{Agreement, AgreementCounts, compare_top_k};
pub use error::{Error, Result};
