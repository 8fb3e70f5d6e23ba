//! Checking one token: find its key by `kid` (asking keyrelay once when it is unknown), take
//! the algorithm from the key, then validate signature, time and claims with `jsonwebtoken`.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, errors::ErrorKind, jwk::Jwk};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    algorithms,
    keys::{HeldKey, Holding, KeySet},
    watch::Verifier,
};

/// What a token must satisfy beyond a valid signature and time window.
#[derive(Debug, Clone)]
pub struct Expectations {
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    provider: Option<String>,
}

impl Default for Expectations {
    fn default() -> Self {
        Self::new()
    }
}

impl Expectations {
    /// No issuer or audience requirement, 60 s leeway, keys of any watched provider.
    pub fn new() -> Self {
        Self {
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(60),
            provider: None,
        }
    }

    /// Accept this `iss` (call again to accept several).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into());
        self
    }

    /// Require this `aud` (call again to accept several).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Clock skew allowed on `exp` and `nbf`.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Only keys of this provider may verify the token.
    pub fn provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = Some(provider.into());
        self
    }
}

/// Why a token was refused. Messages say exactly what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a JWT, or a header keyrelay cannot use (including `alg: none`).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names no `kid`.
    #[error("the token header has no kid")]
    NoKid,
    /// An administrator revoked this `kid` in keyrelay (AdminService.RevokeKey): keyrelay
    /// withholds the key, and the verifier refuses it without asking for it.
    #[error("kid {kid:?} of {provider} was revoked by a keyrelay administrator")]
    Revoked {
        /// The token's kid.
        kid: String,
        /// `tenant/provider` that revoked it.
        provider: String,
    },
    /// No held key has this `kid`, even after asking keyrelay.
    #[error("no key with kid {kid:?} for {scope}")]
    UnknownKid {
        /// The token's kid.
        kid: String,
        /// The tenant or provider searched.
        scope: String,
    },
    /// The token's `alg` is not one the key permits.
    #[error("algorithm {token} is not permitted by key {kid:?} (it permits {permitted})")]
    AlgorithmNotPermitted {
        /// The token's `alg`.
        token: String,
        /// The key's kid.
        kid: String,
        /// What the key permits.
        permitted: String,
    },
    /// The signature does not verify.
    #[error("invalid signature")]
    Signature,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    /// `iss` is not an expected issuer.
    #[error("issuer is not one of the expected")]
    Issuer,
    /// `aud` is not an expected audience.
    #[error("audience is not one of the expected")]
    Audience,
    /// A required claim (`exp`) is missing, or the claims do not have the requested shape.
    #[error("claims: {0}")]
    Claims(String),
}

impl Verifier {
    /// Verifies `token` and returns its claims.
    pub async fn verify<C: DeserializeOwned>(
        &self,
        token: &str,
        expected: &Expectations,
    ) -> Result<C, VerifyError> {
        let header = checked_header(token)?;
        let key = self.key_for(token, &header.kid, expected).await?;
        check(token, &header, key.jwk(), key.named_alg(), expected)
    }

    /// The key with `kid` among the providers `expected` allows, asking keyrelay for each
    /// provider once when none has it. A provider registered by issuer verifies only tokens
    /// of that issuer (a provider of another issuer holding the kid is an `Issuer` refusal). A
    /// kid that one of them revoked, and none holds, is refused without asking.
    async fn key_for(
        &self,
        token: &str,
        kid: &str,
        expected: &Expectations,
    ) -> Result<HeldKey, VerifyError> {
        let shared = &self.shared;
        let iss = || unverified_issuer(token);
        let find = || match &expected.provider {
            Some(provider) => {
                let Some(key) = shared
                    .keys
                    .get(provider)
                    .and_then(|set| HeldKey::in_set(set, kid))
                else {
                    return Ok(None);
                };
                if key.set().serves_issuer(iss().as_deref()) {
                    Ok(Some(key))
                } else {
                    Err(VerifyError::Issuer)
                }
            }
            None => match shared.keys.holding(kid, iss) {
                Holding::Key(key) => Ok(Some(key)),
                Holding::OtherIssuers => Err(VerifyError::Issuer),
                Holding::None => Ok(None),
            },
        };
        if let Some(found) = find()? {
            return Ok(found);
        }
        let providers: Vec<String> = match &expected.provider {
            Some(provider) => vec![provider.clone()],
            None => shared
                .keys
                .all()
                .iter()
                .map(|keys| keys.provider.clone())
                .collect(),
        };
        let revoked_by = providers.iter().find(|provider| {
            shared
                .keys
                .get(provider)
                .is_some_and(|keys| keys.is_revoked(kid))
        });
        if let Some(provider) = revoked_by {
            return Err(VerifyError::Revoked {
                kid: kid.to_owned(),
                provider: format!("{}/{provider}", shared.tenant),
            });
        }
        for provider in &providers {
            shared.resolve_kid(provider, kid).await;
        }
        find()?.ok_or_else(|| VerifyError::UnknownKid {
            kid: kid.to_owned(),
            scope: match &expected.provider {
                Some(provider) => format!("{}/{provider}", shared.tenant),
                None => format!("tenant {}", shared.tenant),
            },
        })
    }
}

/// Verifies `token` with the keys of the JWKS document `jwks` alone, by the same rules as
/// [`Verifier::verify`] (the rules every keyrelay SDK follows, in clients/conformance). A
/// `kid` the set lacks is `UnknownKid`.
pub fn verify_with_key_set<C: DeserializeOwned>(
    token: &str,
    jwks: &[u8],
    expected: &Expectations,
) -> Result<C, VerifyError> {
    let header = checked_header(token)?;
    let keys =
        KeySet::parse(jwks).map_err(|err| VerifyError::Malformed(format!("key set: {err}")))?;
    let jwk = keys
        .find(&header.kid)
        .ok_or_else(|| VerifyError::UnknownKid {
            kid: header.kid.clone(),
            scope: "the key set".into(),
        })?;
    check(token, &header, jwk, keys.named_alg(&header.kid), expected)
}

/// The token's `iss`, read before its signature is checked, only to pick the provider whose
/// keys verify it; `None` when the payload has no string `iss` (or is no JSON object).
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    let claims: serde_json::Map<String, Value> = serde_json::from_slice(&payload).ok()?;
    match claims.get("iss") {
        Some(Value::String(iss)) => Some(iss.clone()),
        _ => None,
    }
}

/// The parts of a token's header verification needs, once its shape is checked.
struct CheckedHeader {
    /// The token's algorithm; `None` for one the JOSE library cannot verify (ES512, say),
    /// which no key permits.
    alg: Option<Algorithm>,
    /// The `alg` as written.
    alg_name: String,
    kid: String,
}

/// Checks the token's shape: three base64url parts, a JSON object header with a string `alg`
/// other than `none`, a string `kid`, and no `crit` (no SDK understands an extension).
fn checked_header(token: &str) -> Result<CheckedHeader, VerifyError> {
    let malformed = |why: &str| VerifyError::Malformed(why.to_owned());
    let mut parts = token.split('.');
    let (Some(encoded), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a JWT has three dot-separated parts"));
    };
    let raw = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| malformed("the header is not base64url"))?;
    let fields: serde_json::Map<String, Value> =
        serde_json::from_slice(&raw).map_err(|_| malformed("the header is not a JSON object"))?;
    if fields.contains_key("crit") {
        return Err(malformed(
            "the header has crit extensions, which keyrelay does not support",
        ));
    }
    let alg_name = match fields.get("alg") {
        Some(Value::String(alg)) if !alg.eq_ignore_ascii_case("none") => alg.clone(),
        Some(Value::String(_)) => return Err(malformed("alg none is never accepted")),
        _ => return Err(malformed("the header has no string alg")),
    };
    let kid = match fields.get("kid") {
        None => return Err(VerifyError::NoKid),
        Some(Value::String(kid)) => kid.clone(),
        Some(_) => return Err(malformed("the header's kid is not a string")),
    };
    Ok(CheckedHeader {
        alg: alg_name.parse().ok(),
        alg_name,
        kid,
    })
}

/// The algorithm from the key, then signature, time and claims.
fn check<C: DeserializeOwned>(
    token: &str,
    header: &CheckedHeader,
    jwk: &Jwk,
    named_alg: Option<&str>,
    expected: &Expectations,
) -> Result<C, VerifyError> {
    let permitted = algorithms::permitted(jwk, named_alg);
    let Some(alg) = header.alg.filter(|alg| permitted.contains(alg)) else {
        return Err(VerifyError::AlgorithmNotPermitted {
            token: header.alg_name.clone(),
            kid: header.kid.clone(),
            permitted: format!("{permitted:?}"),
        });
    };
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|err| VerifyError::Malformed(format!("key {}: {err}", header.kid)))?;
    let data = decode::<C>(token, &key, &validation(alg, expected)).map_err(refusal)?;
    Ok(data.claims)
}

fn validation(alg: Algorithm, expected: &Expectations) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = expected.leeway.as_secs();
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if !expected.issuers.is_empty() {
        validation.set_issuer(&expected.issuers);
        required.push("iss");
    }
    if expected.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&expected.audiences);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn refusal(err: jsonwebtoken::errors::Error) -> VerifyError {
    match err.kind() {
        ErrorKind::InvalidSignature => VerifyError::Signature,
        ErrorKind::ExpiredSignature => VerifyError::Expired,
        ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
        ErrorKind::InvalidIssuer => VerifyError::Issuer,
        ErrorKind::InvalidAudience => VerifyError::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => VerifyError::Issuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => VerifyError::Audience,
        ErrorKind::MissingRequiredClaim(claim) => {
            VerifyError::Claims(format!("missing required claim {claim}"))
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            VerifyError::Claims(format!("claim {claim} is not a number"))
        }
        _ => VerifyError::Malformed(err.to_string()),
    }
}

impl VerifyError {
    /// The refusal's kind, as the conformance vectors name it (`malformed`, `no_kid`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::NoKid => "no_kid",
            VerifyError::UnknownKid { .. } => "unknown_kid",
            VerifyError::Revoked { .. } => "revoked",
            VerifyError::AlgorithmNotPermitted { .. } => "algorithm_not_permitted",
            VerifyError::Signature => "signature",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::Issuer => "issuer",
            VerifyError::Audience => "audience",
            VerifyError::Claims(_) => "claims",
        }
    }
}
