//! `OptionalJson<T>`: a JSON request body that may be left out entirely.
//!
//! poem-openapi's `Json<Option<T>>` documents an optional body but still
//! answers 415 when a request has no `Content-Type`, which is what a body-less
//! `fetch(url, {method: "POST"})` sends. Here a request without a body (or
//! with an empty one) is `None`; a body must be JSON (`application/json`).

use poem::{Request, RequestBody, Result};
use poem_openapi::error::ContentTypeError;
use poem_openapi::payload::{Json, ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

/// An optional JSON request body.
pub struct OptionalJson<T>(pub Option<T>);

impl<'a, T: Type + ParseFromJSON> ApiExtractor<'a> for OptionalJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Json<T> as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <Json<T> as Payload>::CONTENT_TYPE,
                schema: <Json<T> as Payload>::schema_ref(),
            }],
            required: false,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> Result<Self> {
        match request.content_type() {
            Some(ct) if <Json<T> as Payload>::check_content_type(ct) => {
                let Json(value) = <Json<Option<T>> as ParsePayload>::from_request(request, body).await?;
                Ok(Self(value))
            }
            Some(ct) => Err(ContentTypeError::NotSupported {
                content_type: ct.to_owned(),
            }
            .into()),
            None => {
                let bytes = body.take()?.into_bytes().await?;
                if bytes.is_empty() {
                    Ok(Self(None))
                } else {
                    Err(ContentTypeError::ExpectContentType.into())
                }
            }
        }
    }
}
