//! `PreparedJson<T>`: a JSON body avemint serializes itself, documented as `T`.
//!
//! poem-openapi's `Json<T>` turns `T` into a `serde_json::Value` tree and then
//! into bytes on every response. The two hot endpoints avoid that: the JWKS is
//! rendered once per key set (its `ETag` is the hash of exactly these bytes),
//! and a token answer is written straight from the minted token. The OpenAPI
//! document is the same as for `Json<T>`.

use std::marker::PhantomData;

use bytes::Bytes;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};
use serde::Serialize;

/// JSON bytes that are an instance of `T`'s schema.
pub(crate) struct PreparedJson<T> {
    bytes: Bytes,
    documented_as: PhantomData<fn() -> T>,
}

impl<T> PreparedJson<T> {
    /// Wraps bytes already serialized from `T`'s data (for example, rendered once and shared).
    pub(crate) fn from_bytes(bytes: Bytes) -> Self {
        Self {
            bytes,
            documented_as: PhantomData,
        }
    }

    /// Serializes `value`, a borrowed view with `T`'s fields.
    pub(crate) fn serialize(value: &impl Serialize) -> Result<Self, serde_json::Error> {
        serde_json::to_vec(value).map(|v| Self::from_bytes(Bytes::from(v)))
    }
}

impl<T: Type + ToJSON> Payload for PreparedJson<T> {
    const CONTENT_TYPE: &'static str = <Json<T> as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        <Json<T> as Payload>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        <Json<T> as Payload>::register(registry);
    }
}

impl<T: Type + ToJSON> ApiResponse for PreparedJson<T> {
    fn meta() -> MetaResponses {
        <Json<T> as ApiResponse>::meta()
    }

    fn register(registry: &mut Registry) {
        <Json<T> as ApiResponse>::register(registry);
    }
}

impl<T: Type + ToJSON> IntoResponse for PreparedJson<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .status(StatusCode::OK)
            .content_type(Self::CONTENT_TYPE)
            .body(self.bytes)
    }
}
