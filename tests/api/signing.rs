//! Test signing keys (generated for these tests only) and tokens minted with them.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A private key an identity provider signs with, and its public coordinates.
pub struct SigningKey {
    pub kid: &'static str,
    alg: Algorithm,
    pem: &'static str,
    x: &'static str,
    /// Only for EC keys.
    y: Option<&'static str>,
}

pub const ED_1: SigningKey = SigningKey {
    kid: "ed-2026-1",
    alg: Algorithm::EdDSA,
    pem: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGU0ZA4nd57WJxsUZM/iR4fnh60njuVi2Bz2OW9VJjFA\n-----END PRIVATE KEY-----\n",
    x: "uV8nFHuNEdTc6Kxy_kqz3Xtg8JZstNh5Xjh15ErYpY4",
    y: None,
};

pub const ED_2: SigningKey = SigningKey {
    kid: "ed-2026-2",
    alg: Algorithm::EdDSA,
    pem: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKToznNCFzcr5w3jtnurvbSWIl7Uf/UlIrZTci+R94/I\n-----END PRIVATE KEY-----\n",
    x: "v0Hndat-_5tbx31fAFaUqQlze6kikC3v8CSucFw9pm8",
    y: None,
};

pub const EC_1: SigningKey = SigningKey {
    kid: "ec-2026-1",
    alg: Algorithm::ES256,
    pem: "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgI+clGrO+2HHUkTDn\ndrAvZjZe43jQRhxLkg6Vy7j5Aj2hRANCAARAgzF6t+Fu0VrpVZjUaAuvfPP+6Fek\nTdGfsDLNGcLAgtqHLLGA8E8lAKtjX6d32HmJHdXiR0euIo3FWZo6lzBk\n-----END PRIVATE KEY-----\n",
    x: "QIMxerfhbtFa6VWY1GgLr3zz_uhXpE3Rn7AyzRnCwII",
    y: Some("2ocssYDwTyUAq2Nfp3fYeYkd1eJHR64ijcVZmjqXMGQ"),
};

impl SigningKey {
    /// The public JWK (no `alg`: the verifier derives it from the key type).
    pub fn jwk(&self) -> Value {
        match self.y {
            Some(y) => {
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "x": self.x, "y": y})
            }
            None => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "use": "sig", "x": self.x})
            }
        }
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// A token with these claims, signed by this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.to_owned());
        self.sign_with(&header, claims)
    }

    /// A token with this header and these claims, signed by this key.
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        let key = match self.alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(self.pem.as_bytes()),
            _ => EncodingKey::from_ec_pem(self.pem.as_bytes()),
        }
        .expect("test key parses");
        jsonwebtoken::encode(header, claims, &key).expect("token signs")
    }
}

/// A JWKS document with these keys.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// Standard claims valid for ten minutes from now (system time: verifiers check it).
pub fn claims(subject: &str) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    json!({"iss": "https://idp.example.com", "aud": "api", "sub": subject, "iat": now, "exp": now + 600})
}
