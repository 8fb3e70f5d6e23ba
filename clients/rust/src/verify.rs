//! Checking one token: find its key by `kid` (asking keyrelay once when it is unknown), take
//! the algorithm from the key, then validate signature, time and claims with `jsonwebtoken`.

use std::time::Duration;

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind, jwk::Jwk,
};
use serde::de::DeserializeOwned;

use crate::{algorithms, watch::Verifier};

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
        let header = decode_header(token).map_err(|err| VerifyError::Malformed(err.to_string()))?;
        let kid = header.kid.ok_or(VerifyError::NoKid)?;
        let jwk = self.key_for(&kid, expected).await?;
        let permitted = algorithms::permitted(&jwk);
        if !permitted.contains(&header.alg) {
            return Err(VerifyError::AlgorithmNotPermitted {
                token: format!("{:?}", header.alg),
                kid,
                permitted: format!("{permitted:?}"),
            });
        }
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|err| VerifyError::Malformed(format!("key {kid}: {err}")))?;
        let data = decode::<C>(token, &key, &validation(header.alg, expected)).map_err(refusal)?;
        Ok(data.claims)
    }

    /// The key with `kid` among the providers `expected` allows, asking keyrelay for each
    /// provider once when none has it.
    async fn key_for(&self, kid: &str, expected: &Expectations) -> Result<Jwk, VerifyError> {
        let shared = &self.shared;
        let providers: Vec<String> = match &expected.provider {
            Some(provider) => vec![provider.clone()],
            None => shared
                .keys
                .all()
                .iter()
                .map(|keys| keys.provider.clone())
                .collect(),
        };
        let find = || {
            providers
                .iter()
                .find_map(|provider| shared.keys.get(provider)?.find(kid).cloned())
        };
        if let Some(jwk) = find() {
            return Ok(jwk);
        }
        for provider in &providers {
            shared.resolve_kid(provider, kid).await;
        }
        find().ok_or_else(|| VerifyError::UnknownKid {
            kid: kid.to_owned(),
            scope: match &expected.provider {
                Some(provider) => format!("{}/{provider}", shared.tenant),
                None => format!("tenant {}", shared.tenant),
            },
        })
    }
}

fn validation(alg: Algorithm, expected: &Expectations) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = expected.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    if !expected.issuers.is_empty() {
        validation.set_issuer(&expected.issuers);
    }
    if expected.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&expected.audiences);
    }
    validation
}

fn refusal(err: jsonwebtoken::errors::Error) -> VerifyError {
    match err.kind() {
        ErrorKind::InvalidSignature => VerifyError::Signature,
        ErrorKind::ExpiredSignature => VerifyError::Expired,
        ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
        ErrorKind::InvalidIssuer => VerifyError::Issuer,
        ErrorKind::InvalidAudience => VerifyError::Audience,
        ErrorKind::MissingRequiredClaim(claim) => {
            VerifyError::Claims(format!("missing required claim {claim}"))
        }
        _ => VerifyError::Malformed(err.to_string()),
    }
}
