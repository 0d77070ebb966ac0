//! `OptionalJson<T>`: a JSON request body that may be left out entirely.
//!
//! poem-openapi's `Json<Option<T>>` documents an optional body but still
//! answers 415 when a request has no `Content-Type`, which is what a body-less
//! `fetch(url, {method: "POST"})` sends. Here a request without a body (or
//! with an empty one) is `None`; a body must be JSON (`application/json`) and
//! a `T` (`null` is not a way to leave it out).
//!
//! `T` is a closed object: it refuses unknown properties
//! (`#[oai(deny_unknown_fields)]`), and the OpenAPI document says so with an
//! `additionalProperties` schema that no value satisfies (poem-openapi cannot
//! write `false`), so generated clients and schema-driven tests send none.
//! Its optional properties take `null` as "left out" (poem-openapi's `Option`),
//! which the document states with `nullable: true`.

use poem::{Request, RequestBody, Result};
use poem_openapi::error::{ContentTypeError, ParseRequestPayloadError};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

/// An optional JSON request body.
pub(crate) struct OptionalJson<T>(pub Option<T>);

/// The `additionalProperties` of a closed object: a schema no value satisfies.
fn no_other_property() -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        description: Some("None: a property not listed is refused with 400 `invalid_request`."),
        min_length: Some(1),
        max_length: Some(0),
        ..MetaSchema::new("string")
    }))
}

impl<'a, T: Type + ParseFromJSON> ApiExtractor<'a> for OptionalJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Json<T> as Payload>::register(registry);
        if let MetaSchemaRef::Reference(name) = T::schema_ref()
            && let Some(schema) = registry.schemas.get_mut(&name)
        {
            schema.additional_properties = Some(Box::new(no_other_property()));
            for (property, field) in &mut schema.properties {
                if let MetaSchemaRef::Inline(field) = field
                    && !schema.required.contains(property)
                {
                    field.nullable = true;
                }
            }
        }
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
        let content_type = request.content_type();
        if let Some(ct) = content_type
            && !<Json<T> as Payload>::check_content_type(ct)
        {
            return Err(ContentTypeError::NotSupported {
                content_type: ct.to_owned(),
            }
            .into());
        }
        let bytes = body.take()?.into_bytes().await?;
        if bytes.is_empty() {
            return Ok(Self(None));
        }
        if content_type.is_none() {
            return Err(ContentTypeError::ExpectContentType.into());
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| ParseRequestPayloadError { reason: e.to_string() })?;
        let value = T::parse_from_json(Some(value)).map_err(|e| ParseRequestPayloadError {
            reason: e.into_message(),
        })?;
        Ok(Self(Some(value)))
    }
}
