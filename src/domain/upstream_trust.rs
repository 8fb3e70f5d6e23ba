//! Per-provider restrictions on where its JWKS may come from: the host names the URL and
//! every redirect hop may name, and the SHA-256 pins of the public keys (SPKI) its TLS
//! certificate chain must carry. Empty lists mean "no restriction beyond the egress rules".

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};
use url::{Host, Url};

use super::ValidationError;

/// Most entries accepted in each list.
const MAX_ENTRIES: usize = 16;

/// Where one provider's JWKS may be fetched from, beyond the server-wide egress rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTrust {
    /// Host names the URL and every redirect hop must match; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<HostPattern>,
    /// Pins of which at least one must match a certificate of the IdP's chain; empty pins
    /// nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spki_pins: Vec<SpkiPin>,
}

impl UpstreamTrust {
    /// Parses the policy's `allowed_hosts` and `spki_sha256_pins` fields.
    pub fn parse(allowed_hosts: &[String], pins: &[String]) -> Result<Self, ValidationError> {
        Ok(Self {
            allowed_hosts: parse_list("policy.allowed_hosts", allowed_hosts, HostPattern::parse)?,
            spki_pins: parse_list("policy.spki_sha256_pins", pins, SpkiPin::parse)?,
        })
    }

    /// Checks that `url` (the registered one or a redirect hop) names an allowed host and,
    /// when pins are set, uses https (pins can only be checked in a TLS handshake).
    pub fn check(&self, url: &Url) -> Result<(), String> {
        if !self.spki_pins.is_empty() && url.scheme() != "https" {
            return Err("uses plain http although the provider pins its certificate keys".into());
        }
        if self.allowed_hosts.is_empty() {
            return Ok(());
        }
        match url.host() {
            Some(Host::Domain(host)) if self.allowed_hosts.iter().any(|p| p.matches(host)) => {
                Ok(())
            }
            Some(host) => Err(format!("host {host} is not in policy.allowed_hosts")),
            None => Err("names no host".into()),
        }
    }
}

/// Parses each of `values`, at most `MAX_ENTRIES`; errors name `field[i]`.
pub(super) fn parse_list<T>(
    field: &'static str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ValidationError> {
    if values.len() > MAX_ENTRIES {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_ENTRIES} entries"),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            parse(value).map_err(|reason| ValidationError::new(format!("{field}[{i}]"), reason))
        })
        .collect()
}

/// A host name (`idp.example.com`, or a single label such as `keycloak` inside a cluster), or
/// every subdomain of a name of two labels or more (`*.example.com`, which does not match
/// `example.com` itself). Stored lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    suffix: String,
    subdomains: bool,
}

impl HostPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(value: &str) -> Result<Self, String> {
        let (subdomains, name) = match value.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        match Host::parse(name) {
            Ok(Host::Domain(domain))
                if !domain.contains('*') && (!subdomains || domain.contains('.')) =>
            {
                Ok(Self {
                    suffix: domain,
                    subdomains,
                })
            }
            _ => Err(format!(
                "{value:?} is not a host name, or a `*.` wildcard over a name of two labels or more"
            )),
        }
    }

    /// Whether `host` (as the URL parser normalised it: lower-case, punycode) matches.
    pub fn matches(&self, host: &str) -> bool {
        if !self.subdomains {
            return host == self.suffix;
        }
        host.strip_suffix(&self.suffix)
            .and_then(|label| label.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty())
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains {
            f.write_str("*.")?;
        }
        f.write_str(&self.suffix)
    }
}

impl TryFrom<String> for HostPattern {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> String {
        pattern.to_string()
    }
}

/// The SHA-256 digest of a DER SubjectPublicKeyInfo, written in base64 as in HPKP
/// (`openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256
/// -binary | base64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpkiPin([u8; 32]);

impl SpkiPin {
    /// Parses a base64 SHA-256 digest.
    pub fn parse(value: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(value.trim())
            .map_err(|err| format!("not base64: {err}"))?;
        let digest = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            format!(
                "a SHA-256 pin is 32 bytes (44 base64 characters), got {} bytes",
                bytes.len()
            )
        })?;
        Ok(Self(digest))
    }

    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self(Sha256::digest(spki_der).into())
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl TryFrom<String> for SpkiPin {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
    }
}

impl From<SpkiPin> for String {
    fn from(pin: SpkiPin) -> String {
        pin.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(value: &str) -> Url {
        Url::parse(value).unwrap()
    }

    fn trust(hosts: &[&str], pins: &[&str]) -> UpstreamTrust {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        UpstreamTrust::parse(&owned(hosts), &owned(pins)).unwrap()
    }

    #[test]
    fn exact_and_wildcard_host_patterns() {
        let rules = trust(&["login.example.com", "*.idp.example.net"], &[]);
        for allowed in [
            "https://login.example.com/jwks",
            "https://LOGIN.Example.com/jwks",
            "https://eu.idp.example.net/keys",
            "https://a.b.idp.example.net/keys",
        ] {
            assert_eq!(rules.check(&url(allowed)), Ok(()), "{allowed}");
        }
        for refused in [
            "https://example.com/jwks",
            "https://evil-login.example.com/jwks",
            "https://idp.example.net/keys",
            "https://xidp.example.net/keys",
            "https://login.example.com.evil.test/jwks",
            "https://127.0.0.1/jwks",
        ] {
            let reason = rules.check(&url(refused)).unwrap_err();
            assert!(
                reason.contains("not in policy.allowed_hosts"),
                "{refused}: {reason}"
            );
        }
        assert_eq!(trust(&[], &[]).check(&url("https://any.test/")), Ok(()));
        let in_cluster = trust(&["keycloak"], &[]);
        assert_eq!(
            in_cluster.check(&url("https://keycloak:8443/certs")),
            Ok(())
        );
    }

    #[test]
    fn bad_patterns_name_the_entry() {
        for bad in [
            "*",
            "*.com",
            "a.*.example.com",
            "",
            "https://x.test",
            "1.2.3.4",
        ] {
            let err =
                UpstreamTrust::parse(&["ok.example.com".into(), bad.into()], &[]).unwrap_err();
            assert_eq!(err.field, "policy.allowed_hosts[1]", "{bad}");
        }
    }

    #[test]
    fn pins_are_base64_sha256_digests() {
        let pin = SpkiPin::of_spki(b"spki");
        assert_eq!(SpkiPin::parse(&pin.to_string()), Ok(pin));
        assert!(
            SpkiPin::parse("not base64!")
                .unwrap_err()
                .contains("not base64")
        );
        assert!(SpkiPin::parse("AAAA").unwrap_err().contains("32 bytes"));
        let too_many: Vec<String> = (0..17).map(|_| pin.to_string()).collect();
        let err = UpstreamTrust::parse(&[], &too_many).unwrap_err();
        assert_eq!(err.field, "policy.spki_sha256_pins");
    }

    #[test]
    fn pinned_providers_need_https_everywhere() {
        let pin = SpkiPin::of_spki(b"spki").to_string();
        let rules = trust(&[], &[&pin]);
        assert!(
            rules
                .check(&url("http://idp.test/jwks"))
                .unwrap_err()
                .contains("plain http")
        );
        assert_eq!(rules.check(&url("https://idp.test/jwks")), Ok(()));
    }

    #[test]
    fn stored_form_round_trips() {
        let rules = trust(&["*.example.com"], &[&SpkiPin::of_spki(b"k").to_string()]);
        let json = serde_json::to_string(&rules).unwrap();
        assert_eq!(serde_json::from_str::<UpstreamTrust>(&json).unwrap(), rules);
        assert_eq!(
            serde_json::to_string(&UpstreamTrust::default()).unwrap(),
            "{}"
        );
    }
}
