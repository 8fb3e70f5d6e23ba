//! Access tokens: their bearer form `krt_<id>_<secret>`, their roles, and the record kept of
//! each (the secret only as a SHA-256 digest).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{TenantId, ValidationError};

const PREFIX: &str = "krt_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
const MAX_DESCRIPTION_CHARS: usize = 200;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// AdminService calls within the token's scope, and reading keys.
    Admin,
    /// Reading keys of the token's tenant.
    Verifier,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Verifier => "verifier",
        }
    }

    /// Parses a stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "admin" => Some(Role::Admin),
            "verifier" => Some(Role::Verifier),
            _ => None,
        }
    }
}

/// The public identifier of a token: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(String);

impl TokenId {
    /// Parses the `id` field of a request.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let valid = value.len() == ID_BYTES * 2
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(ValidationError::new(
                "id",
                "must be a token id: 16 lowercase hex digits",
            ))
        }
    }

    /// The identifier as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// SHA-256 of a token's secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretDigest(pub [u8; 32]);

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretDigest(<redacted>)")
    }
}

impl SecretDigest {
    fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Whether `secret` has this digest, in time independent of where they differ.
    pub fn matches(&self, secret: &str) -> bool {
        Self::of(secret).0.ct_eq(&self.0).into()
    }
}

/// A newly generated token: the bearer string to hand out once, and what is kept of it.
#[derive(Debug)]
pub struct GeneratedToken {
    /// The id.
    pub id: TokenId,
    /// `krt_<id>_<secret>`, sent as `authorization: Bearer <bearer>`.
    pub bearer: String,
    /// The digest of the secret part.
    pub digest: SecretDigest,
}

impl GeneratedToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        let id = TokenId(hex(&rand::random::<[u8; ID_BYTES]>()));
        let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; SECRET_BYTES]>());
        Self {
            bearer: format!("{PREFIX}{}_{secret}", id.as_str()),
            digest: SecretDigest::of(&secret),
            id,
        }
    }
}

/// A presented bearer string split into id and secret; `None` when it is not of token form.
pub fn split_bearer(bearer: &str) -> Option<(TokenId, &str)> {
    let rest = bearer.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_BYTES * 2)?;
    let secret = secret.strip_prefix('_')?;
    Some((TokenId::parse(id).ok()?, secret))
}

/// Checks the `description` field of a request.
pub fn parse_description(value: &str) -> Result<String, ValidationError> {
    let count = value.chars().count();
    if count == 0 || count > MAX_DESCRIPTION_CHARS {
        return Err(ValidationError::new(
            "description",
            format!("must be 1-{MAX_DESCRIPTION_CHARS} characters, got {count}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "description",
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// What is kept of an issued token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The id.
    pub id: TokenId,
    /// The digest of the secret part.
    pub digest: SecretDigest,
    /// What it may do.
    pub role: Role,
    /// Its tenant; `None`: every tenant (admin tokens only).
    pub tenant: Option<TenantId>,
    /// Who holds it.
    pub description: String,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// The actor that issued it.
    pub created_by: String,
    /// When it stops being accepted.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// Whether the token is accepted at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expiry| now < expiry)
    }

    /// The token as shown in the audit log: everything but the digest.
    pub fn audit_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.as_str(),
            "role": self.role.as_str(),
            "tenant": self.tenant.as_ref().map(TenantId::as_str),
            "description": self.description,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_split_back_into_id_and_a_matching_secret() {
        let token = GeneratedToken::generate();
        let (id, secret) = split_bearer(&token.bearer).unwrap();
        assert_eq!(id, token.id);
        assert!(token.digest.matches(secret));
        assert!(!token.digest.matches(&format!("{secret}x")));
        assert_ne!(GeneratedToken::generate().bearer, token.bearer);
    }

    #[test]
    fn other_bearer_strings_are_not_tokens() {
        for bearer in [
            "",
            "admin-secret",
            "krt_",
            "krt_0123456789abcdef",
            "krt_0123456789abcdefsecret",
            "krt_0123456789ABCDEF_secret",
            "krt_0123456789abcde_secret",
            "krt_ü123456789abcdef_secret",
        ] {
            assert!(split_bearer(bearer).is_none(), "{bearer}");
        }
        assert!(split_bearer("krt_0123456789abcdef_").is_some());
    }

    #[test]
    fn descriptions_are_bounded_and_printable() {
        assert!(parse_description("ci pipeline of team a").is_ok());
        for bad in ["", "a\nb", &"x".repeat(201)] {
            assert_eq!(parse_description(bad).unwrap_err().field, "description");
        }
    }

    #[test]
    fn revoked_and_expired_tokens_are_inactive() {
        let now = Utc::now();
        let mut record = TokenRecord {
            id: TokenId::parse("0123456789abcdef").unwrap(),
            digest: SecretDigest::of("s"),
            role: Role::Verifier,
            tenant: None,
            description: "d".into(),
            created_at: now,
            created_by: "admin".into(),
            expires_at: Some(now + chrono::Duration::seconds(1)),
            revoked_at: None,
        };
        assert!(record.is_active(now));
        assert!(!record.is_active(now + chrono::Duration::seconds(1)));
        record.expires_at = None;
        record.revoked_at = Some(now);
        assert!(!record.is_active(now));
    }
}
