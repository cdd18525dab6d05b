//! Schemas the route declarations share: [`ApiId`], the schema of every validated id, built from
//! `aggregates::ids`' own rules. Route files and the OpenAPI document ([`super::openapi`]) both
//! use it; it uses neither.

use std::borrow::Cow;

use aggregates::ids::{ID_PUNCTUATION, MAX_ID_LEN};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// The schema of an id in a path, query or body: what `aggregates::ids` accepts (1 to
/// [`MAX_ID_LEN`] ASCII letters, digits and [`ID_PUNCTUATION`]). Use it as
/// `value_type = ApiId` on fields and parameters whose Rust type is an id or a string parsed
/// into one.
pub struct ApiId;

/// The `pattern` of [`ApiId`], from the same character set the parser uses.
pub fn id_pattern() -> String {
    // `-` goes last in the class, where it is a literal in every regex dialect.
    let (dash, rest): (String, String) = ID_PUNCTUATION.chars().partition(|c| *c == '-');
    format!("^[A-Za-z0-9{rest}{dash}]+$")
}

impl PartialSchema for ApiId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_ID_LEN))
            .pattern(Some(id_pattern()))
            .description(Some(format!(
                "1 to {MAX_ID_LEN} ASCII letters, digits and `{ID_PUNCTUATION}`"
            )))
            .into()
    }
}

impl ToSchema for ApiId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Id")
    }
}
