//! Schemas and limits the route declarations share: [`ApiId`], the schema of every validated id,
//! built from `aggregates::ids`' own rules, and [`MAX_TEXT_CHARS`], the free-text limit (counted
//! in characters, as the document's `maxLength` is). Route files and the OpenAPI document
//! ([`super::openapi`]) both use it; it uses neither.

use std::borrow::Cow;

use aggregates::ids::{ID_PUNCTUATION, MAX_ID_LEN};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// Longest accepted free-text field of a command body (`reason`, `source`, `adapter`, refs…), in
/// characters, as the document's `maxLength` counts them (JSON Schema counts code points); the
/// body limit bounds the bytes.
pub const MAX_TEXT_CHARS: usize = 1024;

/// Whether `text` is longer than [`MAX_TEXT_CHARS`] characters.
pub fn too_long(text: &str) -> bool {
    // A character is at most 4 bytes and at least 1: most texts are decided without counting.
    text.len() > MAX_TEXT_CHARS
        && (text.len() > 4 * MAX_TEXT_CHARS || text.chars().nth(MAX_TEXT_CHARS).is_some())
}

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
