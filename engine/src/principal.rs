//! Who a request speaks for, from its internal token and its principal headers, and what that
//! principal may reach. One rule for every `/internal/v1` route and for `/api/sync/token` (the
//! threat model is docs/security.md, "Internal tokens"):
//!
//! - A token that names a principal (`user_id` or `guest_scope`) binds it: principal headers may
//!   only repeat it; a header of the other kind, or another value, is `403 claim_mismatch`. A token
//!   naming both is malformed.
//! - A token that names none falls back to the headers, and then exactly one principal header is
//!   required: none is `401 invalid_principal`, both is `400 ambiguous_principal`.
//! - `oa_org_id` is the request's tenant. Tenancy fails closed: a resource recorded under an org is
//!   reachable only with that org's claim, and an org-less token reaches only org-less resources.
//! - `oa_role = "operator"` reaches every principal's and every org's resources.

use aggregates::ids::{GuestScope, IdError, OrgId, Owner, UserId};

use crate::auth::InternalClaims;

/// The principal headers of `/internal/v1`.
pub const USER_HEADER: &str = "x-oa-user-id";
pub const GUEST_HEADER: &str = "x-oa-guest-scope";

/// Why a request has no usable principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    /// No principal claim and no principal header (or an id that does not parse): `401`.
    #[error("missing or invalid principal headers")]
    Missing,
    /// No principal claim and both principal headers: `400`.
    #[error("send exactly one of x-oa-user-id and x-oa-guest-scope")]
    Ambiguous,
    /// A header contradicts the token's principal: `403`.
    #[error("token claim {claim} does not match the request")]
    Mismatch { claim: &'static str },
    /// The token itself is unusable (both principal claims, or an invalid id in a claim): `401`.
    #[error("malformed signature token: {0}")]
    MalformedToken(&'static str),
}

impl PrincipalError {
    /// The stable `details.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            PrincipalError::Missing => "invalid_principal",
            PrincipalError::Ambiguous => "ambiguous_principal",
            PrincipalError::Mismatch { .. } => "claim_mismatch",
            PrincipalError::MalformedToken(_) => "malformed_token",
        }
    }
}

/// Why a resource is out of reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("resource belongs to another principal")]
    NotOwner,
    #[error("resource belongs to another organisation")]
    OrgMismatch,
}

/// The acting principal of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPrincipal {
    /// Whom the request speaks for. `None` only for an operator token that names nobody.
    pub owner: Option<Owner>,
    /// The tenant (`oa_org_id`).
    pub org: Option<OrgId>,
    /// `oa_role = "operator"`.
    pub operator: bool,
}

impl RequestPrincipal {
    /// Whether this principal may reach a resource owned by `owner` in `org`.
    ///
    /// # Errors
    /// [`Denied`] naming the first check that failed (ownership, then tenancy).
    pub fn may_access(&self, owner: Option<&Owner>, org: Option<&OrgId>) -> Result<(), Denied> {
        let owned = match (&self.owner, owner) {
            (Some(mine), Some(theirs)) => owns(self.operator, mine, theirs),
            _ => self.operator,
        };
        if !owned {
            return Err(Denied::NotOwner);
        }
        if !in_tenant(self.operator, self.org.as_ref(), org) {
            return Err(Denied::OrgMismatch);
        }
        Ok(())
    }

    /// `user:<id>`, `guest:<scope>`, or `operator` for an operator naming nobody.
    pub fn reference(&self) -> String {
        match &self.owner {
            Some(owner) => owner.reference(),
            None => "operator".to_owned(),
        }
    }
}

/// The ownership rule: the same user or the same guest scope (a user id and a guest scope with
/// the same text are different principals), or anything for the operator.
pub fn owns(operator: bool, mine: &Owner, theirs: &Owner) -> bool {
    operator || mine == theirs
}

/// The tenancy rule (fails closed): the caller's org is the recorded one, both absent counting
/// as equal; the operator reaches every org.
pub fn in_tenant(operator: bool, mine: Option<&OrgId>, recorded: Option<&OrgId>) -> bool {
    operator || mine == recorded
}

fn parse<T>(value: &str, parse: fn(String) -> Result<T, IdError>) -> Option<T> {
    parse(value.to_owned()).ok()
}

/// Resolves the principal of a request from its verified claims and its principal headers
/// (already trimmed; empty counts as absent).
///
/// # Errors
/// [`PrincipalError`] as documented on its variants.
pub fn resolve(
    claims: &InternalClaims,
    user_header: Option<&str>,
    guest_header: Option<&str>,
) -> Result<RequestPrincipal, PrincipalError> {
    let org = claims
        .oa_org_id
        .as_deref()
        .map(|org| {
            parse(org, OrgId::parse).ok_or(PrincipalError::MalformedToken("invalid oa_org_id"))
        })
        .transpose()?;
    let owner = match (claims.user_id.as_deref(), claims.guest_scope.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(PrincipalError::MalformedToken(
                "a token names at most one of user_id and guest_scope",
            ))
        }
        (Some(user), None) => {
            if user_header.is_some_and(|h| h != user) {
                return Err(PrincipalError::Mismatch { claim: "user_id" });
            }
            if guest_header.is_some() {
                return Err(PrincipalError::Mismatch { claim: "user_id" });
            }
            let user = parse(user, UserId::parse)
                .ok_or(PrincipalError::MalformedToken("invalid user_id"))?;
            Some(Owner::User(user))
        }
        (None, Some(guest)) => {
            if guest_header.is_some_and(|h| h != guest) {
                return Err(PrincipalError::Mismatch {
                    claim: "guest_scope",
                });
            }
            if user_header.is_some() {
                return Err(PrincipalError::Mismatch {
                    claim: "guest_scope",
                });
            }
            let guest = parse(guest, GuestScope::parse)
                .ok_or(PrincipalError::MalformedToken("invalid guest_scope"))?;
            Some(Owner::Guest(guest))
        }
        (None, None) => match (user_header, guest_header) {
            (Some(_), Some(_)) => return Err(PrincipalError::Ambiguous),
            (Some(user), None) => Some(Owner::User(
                parse(user, UserId::parse).ok_or(PrincipalError::Missing)?,
            )),
            (None, Some(guest)) => Some(Owner::Guest(
                parse(guest, GuestScope::parse).ok_or(PrincipalError::Missing)?,
            )),
            (None, None) if claims.is_operator() => None,
            (None, None) => return Err(PrincipalError::Missing),
        },
    };
    Ok(RequestPrincipal {
        owner,
        org,
        operator: claims.is_operator(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(user: Option<&str>, guest: Option<&str>) -> InternalClaims {
        InternalClaims {
            user_id: user.map(str::to_owned),
            guest_scope: guest.map(str::to_owned),
            ..InternalClaims::new(0, 60)
        }
    }

    fn user(id: &str) -> Owner {
        Owner::User(UserId::parse(id).unwrap())
    }

    fn guest(id: &str) -> Owner {
        Owner::Guest(GuestScope::parse(id).unwrap())
    }

    #[test]
    fn a_claimed_principal_binds_and_headers_may_only_repeat_it() {
        let c = claims(Some("1"), None);
        assert_eq!(resolve(&c, None, None).unwrap().owner, Some(user("1")));
        assert_eq!(resolve(&c, Some("1"), None).unwrap().owner, Some(user("1")));
        assert_eq!(
            resolve(&c, Some("2"), None),
            Err(PrincipalError::Mismatch { claim: "user_id" })
        );
        assert_eq!(
            resolve(&c, None, Some("g1")),
            Err(PrincipalError::Mismatch { claim: "user_id" })
        );
        let g = claims(None, Some("g1"));
        assert_eq!(resolve(&g, None, None).unwrap().owner, Some(guest("g1")));
        assert_eq!(
            resolve(&g, Some("2"), None),
            Err(PrincipalError::Mismatch {
                claim: "guest_scope"
            })
        );
        assert!(matches!(
            resolve(&claims(Some("1"), Some("g1")), None, None),
            Err(PrincipalError::MalformedToken(_))
        ));
    }

    #[test]
    fn without_a_claim_exactly_one_header_names_the_principal() {
        let c = claims(None, None);
        assert_eq!(resolve(&c, Some("2"), None).unwrap().owner, Some(user("2")));
        assert_eq!(
            resolve(&c, None, Some("g")).unwrap().owner,
            Some(guest("g"))
        );
        assert_eq!(
            resolve(&c, Some("2"), Some("g")),
            Err(PrincipalError::Ambiguous)
        );
        assert_eq!(resolve(&c, None, None), Err(PrincipalError::Missing));
        assert_eq!(
            resolve(&c, Some("bad id!"), None),
            Err(PrincipalError::Missing)
        );
    }

    #[test]
    fn tenancy_fails_closed_and_the_operator_reaches_everything() {
        let org = |o: &str| OrgId::parse(o).unwrap();
        let mut c = claims(Some("1"), None);
        let p = resolve(&c, None, None).unwrap();
        assert_eq!(p.may_access(Some(&user("1")), None), Ok(()));
        assert_eq!(
            p.may_access(Some(&user("1")), Some(&org("a"))),
            Err(Denied::OrgMismatch)
        );
        assert_eq!(p.may_access(Some(&user("2")), None), Err(Denied::NotOwner));
        assert_eq!(p.may_access(Some(&guest("1")), None), Err(Denied::NotOwner));
        assert_eq!(p.may_access(None, None), Err(Denied::NotOwner));
        c.oa_org_id = Some("a".into());
        let p = resolve(&c, None, None).unwrap();
        assert_eq!(p.may_access(Some(&user("1")), Some(&org("a"))), Ok(()));
        assert_eq!(
            p.may_access(Some(&user("1")), None),
            Err(Denied::OrgMismatch)
        );
        assert_eq!(
            p.may_access(Some(&user("1")), Some(&org("b"))),
            Err(Denied::OrgMismatch)
        );
        let op = InternalClaims {
            oa_role: Some("operator".into()),
            ..claims(None, None)
        };
        let p = resolve(&op, None, None).unwrap();
        assert_eq!(p.owner, None);
        assert_eq!(p.reference(), "operator");
        assert_eq!(p.may_access(Some(&user("9")), Some(&org("z"))), Ok(()));
    }
}
