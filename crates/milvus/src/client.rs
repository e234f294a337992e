//! [`MilvusClient`]: the async client over one gRPC channel.

use std::time::{Duration, Instant};

use prost::Message;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::proto;

/// The primary-key field of every collection this client creates: `INT64`, not auto-generated.
pub const ID_FIELD: &str = "id";
/// The vector field of every collection this client creates: `FLOAT_VECTOR` of the collection's dim.
pub const VECTOR_FIELD: &str = "embedding";

/// Largest gRPC message sent or accepted (Milvus standalone's own default limit is 256 MiB for
/// receiving, 64 MiB for an insert request: [`MilvusClient::insert`] callers pick batches well below).
const MAX_MESSAGE_BYTES: usize = 256 << 20;

const SERVICE: &str = "/milvus.proto.milvus.MilvusService/";

/// How [`MilvusClient`] connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://host:port` of Milvus's gRPC endpoint (standalone and Milvus Lite: port 19530).
    pub uri: String,
    /// The database; empty for Milvus's `default` database.
    pub db_name: String,
    /// Time allowed to establish the connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Time allowed for one call. Default 120 s (an insert batch or an index build on a busy server).
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// The defaults for `uri`: the default database, 10 s to connect, 120 s per call.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            db_name: String::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// The vector index built on [`VECTOR_FIELD`]. Both use the inner product (`IP`) as the score, the
/// same score as `dssm-retrieval`'s exact and HNSW indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// Brute force: exact top-K.
    Flat,
    /// An HNSW graph: approximate; `ef` is given per search ([`SearchParams::ef`]).
    Hnsw {
        /// Links per node (Milvus's `M`).
        m: u32,
        /// Candidate list size while building (`efConstruction`).
        ef_construction: u32,
    },
}

impl IndexKind {
    /// HNSW with Milvus's usual parameters (`M` 16, `efConstruction` 200).
    pub const HNSW_DEFAULT: IndexKind = IndexKind::Hnsw {
        m: 16,
        ef_construction: 200,
    };

    fn params(self) -> Vec<proto::KeyValuePair> {
        let (index_type, params) = match self {
            IndexKind::Flat => ("FLAT", "{}".to_string()),
            IndexKind::Hnsw { m, ef_construction } => (
                "HNSW",
                format!(r#"{{"M": {m}, "efConstruction": {ef_construction}}}"#),
            ),
        };
        vec![
            kv("index_type", index_type),
            kv("metric_type", "IP"),
            kv("params", &params),
        ]
    }
}

/// One search's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParams {
    /// How many hits per query.
    pub k: usize,
    /// HNSW's candidate list size while searching (at least `k`); `None` for a FLAT index or the
    /// server's default.
    pub ef: Option<usize>,
}

impl SearchParams {
    /// The best `k`, with no index-specific parameter.
    pub fn top(k: usize) -> Self {
        Self { k, ef: None }
    }
}

/// One search result: a primary key and its inner-product score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The `id` field of the row.
    pub id: i64,
    /// The inner product of the query and the row's vector.
    pub score: f32,
}

/// An async Milvus client over one gRPC channel (Milvus standalone, a cluster's proxy, Milvus Lite).
///
/// It speaks the handful of `MilvusService` calls a vector catalogue needs: collections with an
/// `INT64` key [`ID_FIELD`] and a `FLOAT_VECTOR` [`VECTOR_FIELD`], batched inserts, a FLAT or HNSW
/// inner-product index, loading, and top-K search. Vectors are row-major `&[f32]` with a dimension.
/// For code without an async runtime, see [`crate::BlockingClient`].
#[derive(Debug, Clone)]
pub struct MilvusClient {
    grpc: tonic::client::Grpc<Channel>,
    db_name: String,
    uri: String,
}

impl MilvusClient {
    /// Connects to `config.uri`.
    pub async fn connect(config: &ClientConfig) -> Result<Self> {
        let uri = config.uri.clone();
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| Error::InvalidUri {
                uri: uri.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout);
        let channel = endpoint.connect().await.map_err(|e| Error::Connect {
            uri: uri.clone(),
            message: error_chain(&e),
        })?;
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            grpc,
            db_name: config.db_name.clone(),
            uri,
        })
    }

    /// The URI this client talks to.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// True when the collection exists.
    pub async fn has_collection(&mut self, collection: &str) -> Result<bool> {
        let request = proto::HasCollectionRequest {
            db_name: self.db_name.clone(),
            collection_name: collection.to_string(),
        };
        let response: proto::BoolResponse = self.call("HasCollection", collection, request).await?;
        check("HasCollection", collection, response.status.as_ref())?;
        Ok(response.value)
    }

    /// Creates a collection of `dim`-dimensional vectors: [`ID_FIELD`] (`INT64`, primary key, given
    /// by the caller) and [`VECTOR_FIELD`] (`FLOAT_VECTOR`), one shard, strong consistency.
    pub async fn create_collection(&mut self, collection: &str, dim: usize) -> Result<()> {
        if dim == 0 {
            return Err(input(
                "CreateCollection",
                collection,
                "dim must be at least 1",
            ));
        }
        let schema = proto::CollectionSchema {
            name: collection.to_string(),
            description: "dssm item embeddings".to_string(),
            fields: vec![
                proto::FieldSchema {
                    field_id: 100,
                    name: ID_FIELD.to_string(),
                    is_primary_key: true,
                    data_type: proto::data_type::INT64,
                    ..Default::default()
                },
                proto::FieldSchema {
                    field_id: 101,
                    name: VECTOR_FIELD.to_string(),
                    data_type: proto::data_type::FLOAT_VECTOR,
                    type_params: vec![kv("dim", &dim.to_string())],
                    ..Default::default()
                },
            ],
            enable_dynamic_field: false,
        };
        let request = proto::CreateCollectionRequest {
            db_name: self.db_name.clone(),
            collection_name: collection.to_string(),
            schema: schema.encode_to_vec(),
            shards_num: 1,
            consistency_level: proto::CONSISTENCY_STRONG,
        };
        let status: proto::Status = self.call("CreateCollection", collection, request).await?;
        check("CreateCollection", collection, Some(&status))
    }

    /// Drops the collection and its data.
    pub async fn drop_collection(&mut self, collection: &str) -> Result<()> {
        let request = proto::DropCollectionRequest {
            db_name: self.db_name.clone(),
            collection_name: collection.to_string(),
        };
        let status: proto::Status = self.call("DropCollection", collection, request).await?;
        check("DropCollection", collection, Some(&status))
    }

    /// Inserts rows (`ids[i]` with the vector `vectors[i * dim..(i + 1) * dim]`) in one request and
    /// returns the count Milvus reports inserted. Keep a request well under 64 MiB (Milvus's default
    /// limit): [`MilvusClient::insert_batches`] splits for you.
    pub async fn insert(
        &mut self,
        collection: &str,
        ids: &[i64],
        vectors: &[f32],
        dim: usize,
    ) -> Result<u64> {
        let rows = rows_of("Insert", collection, vectors, dim)?;
        if rows != ids.len() {
            return Err(input(
                "Insert",
                collection,
                &format!("{} ids for {rows} vectors", ids.len()),
            ));
        }
        let num_rows = u32::try_from(rows).map_err(|_| {
            input(
                "Insert",
                collection,
                "more than u32::MAX rows in one request",
            )
        })?;
        let request = proto::InsertRequest {
            db_name: self.db_name.clone(),
            collection_name: collection.to_string(),
            partition_name: String::new(),
            fields_data: vec![
                proto::FieldData {
                    r#type: proto::data_type::INT64,
                    field_name: ID_FIELD.to_string(),
                    field: Some(proto::field_data::Field::Scalars(proto::ScalarField {
                        data: Some(proto::scalar_field::Data::LongData(proto::LongArray {
                            data: ids.to_vec(),
                        })),
                    })),
                    field_id: 0,
                },
                proto::FieldData {
                    r#type: proto::data_type::FLOAT_VECTOR,
                    field_name: VECTOR_FIELD.to_string(),
                    field: Some(proto::field_data::Field::Vectors(proto::VectorField {
                        dim: dim as i64,
                        data: Some(proto::vector_field::Data::FloatVector(proto::FloatArray {
                            data: vectors.to_vec(),
                        })),
                    })),
                    field_id: 0,
                },
            ],
            num_rows,
        };
        let result: proto::MutationResult = self.call("Insert", collection, request).await?;
        check("Insert", collection, result.status.as_ref())?;
        if result.insert_cnt != rows as i64 {
            return Err(Error::Response {
                operation: "Insert",
                collection: collection.to_string(),
                message: format!("sent {rows} rows, Milvus reports {}", result.insert_cnt),
            });
        }
        Ok(rows as u64)
    }

    /// Inserts every row in requests of at most `batch_rows` rows, in order, then flushes; returns
    /// the rows inserted. `progress` is called after each request with the rows inserted so far.
    pub async fn insert_batches(
        &mut self,
        collection: &str,
        ids: &[i64],
        vectors: &[f32],
        dim: usize,
        batch_rows: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<u64> {
        let rows = rows_of("Insert", collection, vectors, dim)?;
        if rows != ids.len() {
            return Err(input(
                "Insert",
                collection,
                &format!("{} ids for {rows} vectors", ids.len()),
            ));
        }
        if batch_rows == 0 {
            return Err(input("Insert", collection, "batch_rows must be at least 1"));
        }
        let mut inserted = 0;
        for start in (0..rows).step_by(batch_rows) {
            let end = (start + batch_rows).min(rows);
            inserted += self
                .insert(
                    collection,
                    &ids[start..end],
                    &vectors[start * dim..end * dim],
                    dim,
                )
                .await?;
            progress(end);
        }
        self.flush(collection).await?;
        Ok(inserted)
    }

    /// Seals what was inserted into persistent segments (Milvus builds indexes on sealed segments).
    pub async fn flush(&mut self, collection: &str) -> Result<()> {
        let request = proto::FlushRequest {
            db_name: self.db_name.clone(),
            collection_names: vec![collection.to_string()],
        };
        let response: proto::FlushResponse = self.call("Flush", collection, request).await?;
        check("Flush", collection, response.status.as_ref())
    }

    /// Builds `kind` on [`VECTOR_FIELD`] with the inner product as metric.
    pub async fn create_index(&mut self, collection: &str, kind: IndexKind) -> Result<()> {
        let request = proto::CreateIndexRequest {
            db_name: self.db_name.clone(),
            collection_name: collection.to_string(),
            field_name: VECTOR_FIELD.to_string(),
            extra_params: kind.params(),
            index_name: format!("{VECTOR_FIELD}_idx"),
        };
        let status: proto::Status = self.call("CreateIndex", collection, request).await?;
        check("CreateIndex", collection, Some(&status))
    }

    /// Loads the collection for search and waits (polling every 100 ms, up to `wait`) until Milvus
    /// reports it loaded.
    pub async fn load_collection(&mut self, collection: &str, wait: Duration) -> Result<()> {
        let request = proto::LoadCollectionRequest {
            db_name: self.db_name.clone(),
            collection_name: collection.to_string(),
            replica_number: 1,
        };
        let status: proto::Status = self.call("LoadCollection", collection, request).await?;
        check("LoadCollection", collection, Some(&status))?;
        let started = Instant::now();
        loop {
            let request = proto::GetLoadStateRequest {
                collection_name: collection.to_string(),
                db_name: self.db_name.clone(),
            };
            let response: proto::GetLoadStateResponse =
                self.call("GetLoadState", collection, request).await?;
            check("GetLoadState", collection, response.status.as_ref())?;
            match response.state {
                proto::load_state::LOADED => return Ok(()),
                proto::load_state::NOT_EXIST => {
                    return Err(Error::Response {
                        operation: "GetLoadState",
                        collection: collection.to_string(),
                        message: "the collection does not exist".to_string(),
                    });
                }
                proto::load_state::LOADING | proto::load_state::NOT_LOAD => {}
                other => {
                    return Err(Error::Response {
                        operation: "GetLoadState",
                        collection: collection.to_string(),
                        message: format!("unknown load state {other}"),
                    });
                }
            }
            if started.elapsed() >= wait {
                return Err(Error::Timeout {
                    operation: "LoadCollection",
                    collection: collection.to_string(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The best `params.k` rows by inner product for each `dim`-long row of `queries`, best first,
    /// with strong consistency (every insert acknowledged before the call is seen).
    pub async fn search(
        &mut self,
        collection: &str,
        queries: &[f32],
        dim: usize,
        params: SearchParams,
    ) -> Result<Vec<Vec<Hit>>> {
        let nq = rows_of("Search", collection, queries, dim)?;
        if params.k == 0 {
            return Err(input("Search", collection, "k must be at least 1"));
        }
        if nq == 0 {
            return Ok(Vec::new());
        }
        let placeholder = proto::PlaceholderGroup {
            placeholders: vec![proto::PlaceholderValue {
                tag: "$0".to_string(),
                r#type: proto::PLACEHOLDER_FLOAT_VECTOR,
                values: queries
                    .chunks_exact(dim)
                    .map(|row| row.iter().flat_map(|x| x.to_le_bytes()).collect())
                    .collect(),
            }],
        };
        let inner = match params.ef {
            Some(ef) => format!(r#"{{"ef": {ef}}}"#),
            None => "{}".to_string(),
        };
        let request = proto::SearchRequest {
            db_name: self.db_name.clone(),
            collection_name: collection.to_string(),
            partition_names: Vec::new(),
            dsl: String::new(),
            placeholder_group: placeholder.encode_to_vec(),
            dsl_type: proto::DSL_BOOL_EXPR_V1,
            output_fields: Vec::new(),
            search_params: vec![
                kv("anns_field", VECTOR_FIELD),
                kv("topk", &params.k.to_string()),
                kv("metric_type", "IP"),
                kv("params", &inner),
                kv("round_decimal", "-1"),
            ],
            guarantee_timestamp: 0,
            nq: nq as i64,
            consistency_level: proto::CONSISTENCY_STRONG,
            use_default_consistency: false,
        };
        let response: proto::SearchResults = self.call("Search", collection, request).await?;
        check("Search", collection, response.status.as_ref())?;
        split_hits(collection, nq, response.results.unwrap_or_default())
    }

    async fn call<Req, Resp>(
        &mut self,
        operation: &'static str,
        collection: &str,
        request: Req,
    ) -> Result<Resp>
    where
        Req: Message + Send + Sync + 'static,
        Resp: Message + Default + Send + Sync + 'static,
    {
        let rpc_error = |code: String, message: String| Error::Rpc {
            operation,
            collection: collection.to_string(),
            code,
            message,
        };
        self.grpc
            .ready()
            .await
            .map_err(|e| rpc_error("unavailable".to_string(), error_chain(&e)))?;
        let path = http::uri::PathAndQuery::try_from(format!("{SERVICE}{operation}"))
            .map_err(|e| rpc_error("internal".to_string(), e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        self.grpc
            .unary(tonic::Request::new(request), path, codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| {
                rpc_error(format!("{:?}", status.code()), status.message().to_string())
            })
    }
}

/// Splits a `SearchResultData` into one list of hits per query.
fn split_hits(collection: &str, nq: usize, data: proto::SearchResultData) -> Result<Vec<Vec<Hit>>> {
    let bad = |message: String| Error::Response {
        operation: "Search",
        collection: collection.to_string(),
        message,
    };
    let ids = match data.ids.and_then(|ids| ids.id_field) {
        Some(proto::ids::IdField::IntId(ids)) => ids.data,
        Some(proto::ids::IdField::StrId(_)) => {
            return Err(bad(
                "string primary keys; this client expects INT64 ids".into()
            ));
        }
        None => Vec::new(),
    };
    if ids.len() != data.scores.len() {
        return Err(bad(format!(
            "{} ids but {} scores",
            ids.len(),
            data.scores.len()
        )));
    }
    // An empty `topks` means no hits at all (an empty collection).
    let topks: Vec<usize> = if data.topks.is_empty() && ids.is_empty() {
        vec![0; nq]
    } else {
        data.topks.iter().map(|&t| t.max(0) as usize).collect()
    };
    if topks.len() != nq || topks.iter().sum::<usize>() != ids.len() {
        return Err(bad(format!(
            "hit counts {:?} do not split {} hits over {nq} queries",
            data.topks,
            ids.len()
        )));
    }
    let mut out = Vec::with_capacity(nq);
    let mut start = 0;
    for count in topks {
        let end = start + count;
        out.push(
            ids[start..end]
                .iter()
                .zip(&data.scores[start..end])
                .map(|(&id, &score)| Hit { id, score })
                .collect(),
        );
        start = end;
    }
    Ok(out)
}

/// OK when both the new `code` and the deprecated `error_code` say success. A missing status is a
/// success only where the field is absent on the wire because everything in it is zero.
fn check(operation: &'static str, collection: &str, status: Option<&proto::Status>) -> Result<()> {
    match status {
        Some(s) if s.code != 0 || s.error_code != 0 => Err(Error::Milvus {
            operation,
            collection: collection.to_string(),
            code: s.code,
            error_code: s.error_code,
            reason: if s.detail.is_empty() || s.detail == s.reason {
                s.reason.clone()
            } else {
                format!("{} ({})", s.reason, s.detail)
            },
        }),
        _ => Ok(()),
    }
}

fn rows_of(
    operation: &'static str,
    collection: &str,
    vectors: &[f32],
    dim: usize,
) -> Result<usize> {
    if dim == 0 || !vectors.len().is_multiple_of(dim) {
        return Err(input(
            operation,
            collection,
            &format!("{} values do not make rows of dim {dim}", vectors.len()),
        ));
    }
    Ok(vectors.len() / dim)
}

fn input(operation: &'static str, collection: &str, message: &str) -> Error {
    Error::Input {
        operation,
        collection: collection.to_string(),
        message: message.to_string(),
    }
}

fn kv(key: &str, value: &str) -> proto::KeyValuePair {
    proto::KeyValuePair {
        key: key.to_string(),
        value: value.to_string(),
    }
}

/// An error and its sources on one line (tonic's transport errors keep the useful part in a source).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_results_split_per_query() {
        let data = proto::SearchResultData {
            num_queries: 2,
            top_k: 2,
            scores: vec![0.9, 0.5, 0.7],
            ids: Some(proto::Ids {
                id_field: Some(proto::ids::IdField::IntId(proto::LongArray {
                    data: vec![3, 1, 8],
                })),
            }),
            topks: vec![2, 1],
        };
        let hits = split_hits("c", 2, data).unwrap();
        assert_eq!(
            hits,
            vec![
                vec![Hit { id: 3, score: 0.9 }, Hit { id: 1, score: 0.5 }],
                vec![Hit { id: 8, score: 0.7 }]
            ]
        );
        // Counts that do not add up are an error naming the collection.
        let bad = proto::SearchResultData {
            scores: vec![0.9],
            ids: Some(proto::Ids {
                id_field: Some(proto::ids::IdField::IntId(proto::LongArray {
                    data: vec![3],
                })),
            }),
            topks: vec![2],
            ..Default::default()
        };
        let error = split_hits("items", 1, bad).unwrap_err().to_string();
        assert!(error.contains("\"items\""), "{error}");
        // No hits at all: one empty list per query.
        assert_eq!(
            split_hits("c", 2, proto::SearchResultData::default()).unwrap(),
            vec![vec![], vec![]]
        );
    }

    #[test]
    fn failure_status_names_operation_collection_and_code() {
        let status = proto::Status {
            code: 100,
            reason: "collection not found".into(),
            ..Default::default()
        };
        let error = check("Search", "items", Some(&status)).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("Search"), "{text}");
        assert!(text.contains("\"items\""), "{text}");
        assert!(text.contains("code 100"), "{text}");
        assert!(text.contains("collection not found"), "{text}");
        // The deprecated error_code alone is a failure too.
        let old = proto::Status {
            error_code: 4,
            ..Default::default()
        };
        assert!(check("Search", "items", Some(&old)).is_err());
        assert!(check("Search", "items", None).is_ok());
    }

    #[test]
    fn index_parameters_are_milvus_key_values() {
        let hnsw = IndexKind::HNSW_DEFAULT.params();
        let get = |key: &str| hnsw.iter().find(|p| p.key == key).map(|p| p.value.clone());
        assert_eq!(get("index_type").as_deref(), Some("HNSW"));
        assert_eq!(get("metric_type").as_deref(), Some("IP"));
        assert_eq!(
            get("params").as_deref(),
            Some(r#"{"M": 16, "efConstruction": 200}"#)
        );
        assert_eq!(IndexKind::Flat.params()[0].value, "FLAT");
    }
}
