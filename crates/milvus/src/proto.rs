//! The few Milvus protocol messages this client sends and reads, written by hand with prost-derive.
//!
//! Field numbers are those of Milvus's `common.proto`, `schema.proto` and `milvus.proto`
//! (packages `milvus.proto.common`, `milvus.proto.schema`, `milvus.proto.milvus`). Only the fields we
//! set or read are declared: protobuf skips unknown fields when decoding, and a field left out is
//! simply never sent. Enums are declared as `int32` with the numbers as constants, which is the same
//! on the wire.

// Field names follow the .proto files; prost needs no more than that.
#![allow(missing_docs)]

/// `milvus.proto.schema.DataType` values used here.
pub mod data_type {
    pub const INT64: i32 = 5;
    pub const FLOAT_VECTOR: i32 = 101;
}

/// `milvus.proto.common.PlaceholderType::FloatVector`.
pub const PLACEHOLDER_FLOAT_VECTOR: i32 = 101;
/// `milvus.proto.common.DslType::BoolExprV1`.
pub const DSL_BOOL_EXPR_V1: i32 = 1;
/// `milvus.proto.common.ConsistencyLevel::Strong`.
pub const CONSISTENCY_STRONG: i32 = 0;

/// `milvus.proto.common.LoadState` values.
pub mod load_state {
    pub const NOT_EXIST: i32 = 0;
    pub const NOT_LOAD: i32 = 1;
    pub const LOADING: i32 = 2;
    pub const LOADED: i32 = 3;
}

// ---- milvus.proto.common ----

#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// Deprecated `ErrorCode`; older servers set only this one.
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    #[prost(string, tag = "2")]
    pub reason: String,
    #[prost(int32, tag = "3")]
    pub code: i32,
    #[prost(bool, tag = "4")]
    pub retriable: bool,
    #[prost(string, tag = "5")]
    pub detail: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValuePair {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PlaceholderValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(int32, tag = "2")]
    pub r#type: i32,
    /// One query vector per entry, little-endian `f32`s.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub values: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PlaceholderGroup {
    #[prost(message, repeated, tag = "1")]
    pub placeholders: Vec<PlaceholderValue>,
}

// ---- milvus.proto.schema ----

#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldSchema {
    #[prost(int64, tag = "1")]
    pub field_id: i64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(bool, tag = "3")]
    pub is_primary_key: bool,
    #[prost(string, tag = "4")]
    pub description: String,
    #[prost(int32, tag = "5")]
    pub data_type: i32,
    #[prost(message, repeated, tag = "6")]
    pub type_params: Vec<KeyValuePair>,
    #[prost(message, repeated, tag = "7")]
    pub index_params: Vec<KeyValuePair>,
    #[prost(bool, tag = "8")]
    pub auto_id: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CollectionSchema {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub description: String,
    #[prost(message, repeated, tag = "4")]
    pub fields: Vec<FieldSchema>,
    #[prost(bool, tag = "5")]
    pub enable_dynamic_field: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LongArray {
    #[prost(int64, repeated, tag = "1")]
    pub data: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FloatArray {
    #[prost(float, repeated, tag = "1")]
    pub data: Vec<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StringArray {
    #[prost(string, repeated, tag = "1")]
    pub data: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScalarField {
    #[prost(oneof = "scalar_field::Data", tags = "3")]
    pub data: Option<scalar_field::Data>,
}

pub mod scalar_field {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        #[prost(message, tag = "3")]
        LongData(super::LongArray),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VectorField {
    #[prost(int64, tag = "1")]
    pub dim: i64,
    #[prost(oneof = "vector_field::Data", tags = "2")]
    pub data: Option<vector_field::Data>,
}

pub mod vector_field {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        #[prost(message, tag = "2")]
        FloatVector(super::FloatArray),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldData {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub field_name: String,
    #[prost(oneof = "field_data::Field", tags = "3, 4")]
    pub field: Option<field_data::Field>,
    #[prost(int64, tag = "5")]
    pub field_id: i64,
}

pub mod field_data {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Field {
        #[prost(message, tag = "3")]
        Scalars(super::ScalarField),
        #[prost(message, tag = "4")]
        Vectors(super::VectorField),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Ids {
    #[prost(oneof = "ids::IdField", tags = "1, 2")]
    pub id_field: Option<ids::IdField>,
}

pub mod ids {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum IdField {
        #[prost(message, tag = "1")]
        IntId(super::LongArray),
        #[prost(message, tag = "2")]
        StrId(super::StringArray),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SearchResultData {
    #[prost(int64, tag = "1")]
    pub num_queries: i64,
    #[prost(int64, tag = "2")]
    pub top_k: i64,
    #[prost(float, repeated, tag = "4")]
    pub scores: Vec<f32>,
    #[prost(message, optional, tag = "5")]
    pub ids: Option<Ids>,
    /// Hits per query (a query may have fewer than `top_k`).
    #[prost(int64, repeated, tag = "6")]
    pub topks: Vec<i64>,
}

// ---- milvus.proto.milvus ----

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateCollectionRequest {
    #[prost(string, tag = "2")]
    pub db_name: String,
    #[prost(string, tag = "3")]
    pub collection_name: String,
    /// A serialised [`CollectionSchema`].
    #[prost(bytes = "vec", tag = "4")]
    pub schema: Vec<u8>,
    #[prost(int32, tag = "5")]
    pub shards_num: i32,
    #[prost(int32, tag = "6")]
    pub consistency_level: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DropCollectionRequest {
    #[prost(string, tag = "2")]
    pub db_name: String,
    #[prost(string, tag = "3")]
    pub collection_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HasCollectionRequest {
    #[prost(string, tag = "2")]
    pub db_name: String,
    #[prost(string, tag = "3")]
    pub collection_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BoolResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(bool, tag = "2")]
    pub value: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InsertRequest {
    #[prost(string, tag = "2")]
    pub db_name: String,
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(string, tag = "4")]
    pub partition_name: String,
    #[prost(message, repeated, tag = "5")]
    pub fields_data: Vec<FieldData>,
    #[prost(uint32, tag = "7")]
    pub num_rows: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MutationResult {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(int64, tag = "6")]
    pub insert_cnt: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FlushRequest {
    #[prost(string, tag = "2")]
    pub db_name: String,
    #[prost(string, repeated, tag = "3")]
    pub collection_names: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FlushResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateIndexRequest {
    #[prost(string, tag = "2")]
    pub db_name: String,
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(string, tag = "4")]
    pub field_name: String,
    #[prost(message, repeated, tag = "5")]
    pub extra_params: Vec<KeyValuePair>,
    #[prost(string, tag = "6")]
    pub index_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LoadCollectionRequest {
    #[prost(string, tag = "2")]
    pub db_name: String,
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(int32, tag = "4")]
    pub replica_number: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetLoadStateRequest {
    #[prost(string, tag = "2")]
    pub collection_name: String,
    #[prost(string, tag = "4")]
    pub db_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetLoadStateResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(int32, tag = "2")]
    pub state: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SearchRequest {
    #[prost(string, tag = "2")]
    pub db_name: String,
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(string, repeated, tag = "4")]
    pub partition_names: Vec<String>,
    /// The filter expression; empty for none.
    #[prost(string, tag = "5")]
    pub dsl: String,
    /// A serialised [`PlaceholderGroup`] (the `search_input` oneof's vector case).
    #[prost(bytes = "vec", tag = "6")]
    pub placeholder_group: Vec<u8>,
    #[prost(int32, tag = "7")]
    pub dsl_type: i32,
    #[prost(string, repeated, tag = "8")]
    pub output_fields: Vec<String>,
    #[prost(message, repeated, tag = "9")]
    pub search_params: Vec<KeyValuePair>,
    #[prost(uint64, tag = "11")]
    pub guarantee_timestamp: u64,
    #[prost(int64, tag = "12")]
    pub nq: i64,
    #[prost(int32, tag = "14")]
    pub consistency_level: i32,
    #[prost(bool, tag = "15")]
    pub use_default_consistency: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SearchResults {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(message, optional, tag = "2")]
    pub results: Option<SearchResultData>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Bytes written by hand from the .proto field numbers: a check that the tags above are right.
    #[test]
    fn field_numbers_match_the_proto_files() {
        let status = Status {
            error_code: 0,
            reason: "x".into(),
            code: 100,
            retriable: false,
            detail: String::new(),
        };
        // reason = 2 (string "x"), code = 3 (varint 100).
        assert_eq!(status.encode_to_vec(), vec![0x12, 1, b'x', 0x18, 100]);

        let field = FieldData {
            r#type: data_type::INT64,
            field_name: "id".into(),
            field: Some(field_data::Field::Scalars(ScalarField {
                data: Some(scalar_field::Data::LongData(LongArray { data: vec![7] })),
            })),
            field_id: 0,
        };
        // type = 1 (5); field_name = 2 ("id"); scalars = 3 { long_data = 3 { data = 1 packed [7] } }.
        assert_eq!(
            field.encode_to_vec(),
            vec![0x08, 5, 0x12, 2, b'i', b'd', 0x1a, 5, 0x1a, 3, 0x0a, 1, 7]
        );

        let request = SearchRequest {
            collection_name: "c".into(),
            nq: 2,
            ..Default::default()
        };
        // collection_name = 3, nq = 12.
        assert_eq!(request.encode_to_vec(), vec![0x1a, 1, b'c', 0x60, 2]);

        let ids = Ids {
            id_field: Some(ids::IdField::IntId(LongArray { data: vec![1, 2] })),
        };
        let results = SearchResultData {
            num_queries: 1,
            top_k: 2,
            scores: vec![1.0, 0.5],
            ids: Some(ids),
            topks: vec![2],
        };
        let back = SearchResultData::decode(results.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, results);
    }
}
