//! Validated identifier newtypes. Every id that crosses a crate boundary is one of these, never a
//! bare `String`: the constructor is the single place that decides what a well-formed id is.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// The characters an id may hold besides ASCII letters and digits (the API's OpenAPI document
/// builds its id `pattern` from this).
pub const ID_PUNCTUATION: &str = "-_.:@/+=~";

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {MAX_ID_LEN} bytes")]
    TooLong { kind: &'static str },
    #[error("{kind} contains {found:?}; allowed are ASCII letters, digits and - _ . : @ / + = ~")]
    BadCharacter { kind: &'static str, found: char },
}

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind });
    }
    if let Some(found) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(*c)))
    {
        return Err(IdError::BadCharacter { kind, found });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The name used for this id in error messages and API fields.
            pub const KIND: &'static str = $kind;

            /// Validates and wraps `value`.
            ///
            /// # Errors
            /// [`IdError`] when the value is empty, too long or has a disallowed character.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Self::parse(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Identifies one execution run.
    RunId, "run_id"
);
id_type!(
    /// The conversation a run belongs to.
    ThreadId, "thread_id"
);
id_type!(
    /// Identifies one worker (e.g. a Codex session on a desktop or in the cloud).
    WorkerId, "worker_id"
);
id_type!(
    /// A run frame's idempotency key, unique per run.
    FrameId, "frame_id"
);
id_type!(
    /// A worker request's idempotency key, unique per worker.
    RequestId, "request_id"
);
id_type!(
    /// An authenticated user, as the control plane names it (`x-oa-user-id`).
    UserId, "user_id"
);
id_type!(
    /// A guest principal's scope (`x-oa-guest-scope`).
    GuestScope, "guest_scope"
);
id_type!(
    /// The organisation (tenant) a run or worker belongs to, from the `oa_org_id` token claim.
    /// Optional everywhere: events recorded before tenants existed have none.
    OrgId, "org_id"
);

/// Who owns a run or a worker: a user or a guest scope. Ownership is recorded when the aggregate
/// is created and every later request is checked against it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Owner {
    User(UserId),
    Guest(GuestScope),
}

impl Owner {
    /// `user:<id>` or `guest:<scope>`, the form used in logs, metadata and idempotency scopes.
    pub fn reference(&self) -> String {
        match self {
            Owner::User(id) => format!("user:{id}"),
            Owner::Guest(scope) => format!("guest:{scope}"),
        }
    }

    pub fn user_id(&self) -> Option<&UserId> {
        match self {
            Owner::User(id) => Some(id),
            Owner::Guest(_) => None,
        }
    }

    pub fn guest_scope(&self) -> Option<&GuestScope> {
        match self {
            Owner::Guest(scope) => Some(scope),
            Owner::User(_) => None,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reference())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_id_shapes_clients_already_use() {
        for ok in [
            "run_123",
            "01951d2a-6c15-7c9f-99c2-cf8ad72a23f0",
            "desktopw:desktop:shared",
            "user@example.com",
        ] {
            assert!(RunId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_empty_long_and_odd_ids_with_a_precise_reason() {
        assert_eq!(RunId::parse(""), Err(IdError::Empty { kind: "run_id" }));
        assert_eq!(
            WorkerId::parse("x".repeat(129)),
            Err(IdError::TooLong { kind: "worker_id" })
        );
        assert_eq!(
            ThreadId::parse("a b"),
            Err(IdError::BadCharacter {
                kind: "thread_id",
                found: ' '
            })
        );
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<FrameId>("\"frm_1\"").is_ok());
        assert!(serde_json::from_str::<FrameId>("\"\"").is_err());
    }

    #[test]
    fn owner_reference_names_the_kind() {
        let user = Owner::User(UserId::parse("42").unwrap());
        assert_eq!(user.reference(), "user:42");
        let json = serde_json::to_string(&user).unwrap();
        assert_eq!(json, r#"{"kind":"user","id":"42"}"#);
    }
}
