//! JWKS URLs and the egress rules that decide which URLs and addresses keyrelay may fetch
//! from: https only, no credentials, only public addresses unless an allowlist permits others,
//! loopback only in development. The rules apply to the registered URL, to every redirect hop
//! and to every address a host name resolves to (see `dns`).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use url::{Host, Url};

use super::ValidationError;

const MAX_URL_LEN: usize = 2048;

/// Which URLs and addresses keyrelay may fetch from.
#[derive(Debug, Clone, Default)]
pub struct EgressRules {
    /// Development only: also allow plain `http` and loopback hosts (`localhost`, 127.0.0.0/8,
    /// ::1).
    pub allow_http_and_loopback: bool,
    /// Networks allowed although not public (an IdP inside the company network, say).
    pub allowed_networks: Vec<IpNet>,
}

impl EgressRules {
    /// Checks one URL, the registered one or a redirect hop; the error says why it is refused.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http_and_loopback => {}
            "http" => {
                return Err(
                    "must use https (plain http needs a server started with --dev-allow-http-loopback)"
                        .into(),
                );
            }
            other => return Err(format!("scheme {other:?} is not allowed; use https")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        let host = url.host().ok_or("must name a host")?;
        match host {
            Host::Ipv4(ip) => self.permits(IpAddr::V4(ip)),
            Host::Ipv6(ip) => self.permits(IpAddr::V6(ip)),
            Host::Domain(_)
                if classify_host(&host) == HostClass::Loopback && !self.allow_http_and_loopback =>
            {
                Err(format!(
                    "host {host} is a loopback address (allowed only with --dev-allow-http-loopback)"
                ))
            }
            Host::Domain(_) => Ok(()),
        }
    }

    /// Checks one address keyrelay would connect to.
    pub fn permits(&self, ip: IpAddr) -> Result<(), String> {
        if self.allowed_networks.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match classify_ip(ip) {
            HostClass::Public => Ok(()),
            HostClass::Loopback if self.allow_http_and_loopback => Ok(()),
            HostClass::Loopback => Err(format!(
                "{ip} is a loopback address (allowed only with --dev-allow-http-loopback)"
            )),
            HostClass::NonPublic => Err(format!(
                "{ip} is not a public address; keyrelay does not fetch from private networks unless --egress-allow permits it"
            )),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HostClass {
    Public,
    Loopback,
    NonPublic,
}

fn classify_host(host: &Host<&str>) -> HostClass {
    match host {
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                HostClass::Loopback
            } else {
                HostClass::Public
            }
        }
        Host::Ipv4(ip) => classify_ip(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => classify_ip(IpAddr::V6(*ip)),
    }
}

fn classify_ip(ip: IpAddr) -> HostClass {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() {
        return HostClass::Loopback;
    }
    let non_public = match ip {
        IpAddr::V4(v4) => is_non_public_v4(v4),
        IpAddr::V6(v6) => is_non_public_v6(v6),
    };
    if non_public {
        HostClass::NonPublic
    } else {
        HostClass::Public
    }
}

fn is_non_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    let carrier_grade_nat = a == 100 && (64..128).contains(&b);
    ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || carrier_grade_nat
        || a == 0
}

fn is_non_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let unique_local = first & 0xfe00 == 0xfc00;
    let link_local = first & 0xffc0 == 0xfe80;
    ip.is_multicast() || ip.is_unspecified() || unique_local || link_local
}

/// An absolute URL of a JWKS document that passed the egress rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl(Url);

impl JwksUrl {
    /// Parses and checks the `jwks_url` field of a registration.
    pub fn parse(value: &str, rules: &EgressRules) -> Result<Self, ValidationError> {
        if value.len() > MAX_URL_LEN {
            return Err(ValidationError::new(
                "jwks_url",
                format!("must be at most {MAX_URL_LEN} bytes"),
            ));
        }
        let url = Url::parse(value).map_err(|err| {
            ValidationError::new("jwks_url", format!("not an absolute URL: {err}"))
        })?;
        rules
            .check(&url)
            .map_err(|reason| ValidationError::new("jwks_url", reason))?;
        Ok(Self(url))
    }

    /// A URL read back from the store: checked when registered, and every fetch checks it again.
    pub fn parse_stored(value: &str) -> Result<Self, ValidationError> {
        Url::parse(value)
            .map(Self)
            .map_err(|err| ValidationError::new("jwks_url", format!("not an absolute URL: {err}")))
    }

    /// The URL.
    pub fn as_url(&self) -> &Url {
        &self.0
    }

    /// The URL as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The URL for logs and traces: the query string and fragment, which may carry secrets,
    /// are left out.
    pub fn redacted(&self) -> String {
        redacted_url(&self.0)
    }
}

/// `url` for logs and traces: the query string and fragment, which may carry secrets, are
/// left out.
pub fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    let had_query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    if had_query {
        format!("{shown}?<redacted>")
    } else {
        shown.to_string()
    }
}

impl fmt::Display for JwksUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCTION: EgressRules = EgressRules {
        allow_http_and_loopback: false,
        allowed_networks: Vec::new(),
    };
    const DEVELOPMENT: EgressRules = EgressRules {
        allow_http_and_loopback: true,
        allowed_networks: Vec::new(),
    };

    fn refused(url: &str, rules: &EgressRules) -> String {
        JwksUrl::parse(url, rules).unwrap_err().reason
    }

    #[test]
    fn https_public_hosts_are_accepted() {
        let url = JwksUrl::parse("https://idp.example.com/.well-known/jwks.json", &PRODUCTION);
        assert_eq!(
            url.map(|u| u.to_string()),
            Ok("https://idp.example.com/.well-known/jwks.json".to_owned())
        );
    }

    #[test]
    fn plain_http_and_other_schemes_are_refused_in_production() {
        assert!(refused("http://idp.example.com/jwks", &PRODUCTION).contains("https"));
        assert!(refused("ftp://idp.example.com/jwks", &PRODUCTION).contains("scheme"));
        assert!(refused("ftp://idp.example.com/jwks", &DEVELOPMENT).contains("scheme"));
        assert!(refused("/jwks", &PRODUCTION).contains("absolute"));
    }

    #[test]
    fn credentials_in_the_url_are_refused() {
        assert!(
            refused("https://user:pw@idp.example.com/jwks", &PRODUCTION).contains("credentials")
        );
    }

    #[test]
    fn loopback_is_allowed_only_in_development() {
        for url in [
            "https://127.0.0.1/jwks",
            "https://127.8.9.10/jwks",
            "https://[::1]/jwks",
            "https://localhost/jwks",
            "https://api.localhost./jwks",
            "https://[::ffff:127.0.0.1]/jwks",
        ] {
            assert!(refused(url, &PRODUCTION).contains("loopback"), "{url}");
            assert!(JwksUrl::parse(url, &DEVELOPMENT).is_ok(), "{url}");
        }
        assert!(JwksUrl::parse("http://127.0.0.1:8080/jwks", &DEVELOPMENT).is_ok());
    }

    #[test]
    fn private_and_special_addresses_are_refused_even_in_development() {
        for url in [
            "https://10.1.2.3/jwks",
            "https://172.16.0.1/jwks",
            "https://192.168.1.1/jwks",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/jwks",
            "https://0.0.0.0/jwks",
            "https://224.0.0.1/jwks",
            "https://255.255.255.255/jwks",
            "https://[fd00::1]/jwks",
            "https://[fe80::1]/jwks",
            "https://[::]/jwks",
            "https://[ff02::1]/jwks",
            "https://[::ffff:10.0.0.1]/jwks",
            "https://[::ffff:169.254.169.254]/jwks",
        ] {
            assert!(
                refused(url, &DEVELOPMENT).contains("not a public address"),
                "{url}"
            );
        }
    }

    #[test]
    fn redaction_hides_query_strings() {
        let url = JwksUrl::parse(
            "https://idp.example.com/jwks?token=s3cret#frag",
            &PRODUCTION,
        )
        .unwrap();
        assert_eq!(url.redacted(), "https://idp.example.com/jwks?<redacted>");
        let plain = JwksUrl::parse("https://idp.example.com/jwks", &PRODUCTION).unwrap();
        assert_eq!(plain.redacted(), "https://idp.example.com/jwks");
    }

    #[test]
    fn the_address_filter_refuses_every_non_public_range_unless_allowlisted() {
        let blocked = [
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:192.168.1.1",
        ];
        for ip in blocked {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(PRODUCTION.permits(ip).is_err(), "{ip} must be refused");
            assert!(
                DEVELOPMENT.permits(ip).is_err(),
                "{ip} must be refused in development too"
            );
        }
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(
                PRODUCTION.permits(ip).unwrap_err().contains("loopback"),
                "{ip}"
            );
            assert!(DEVELOPMENT.permits(ip).is_ok(), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2001:4860:4860::8888",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert!(
                PRODUCTION.permits(ip.parse().unwrap()).is_ok(),
                "{ip} is public"
            );
        }
        let corporate = EgressRules {
            allow_http_and_loopback: false,
            allowed_networks: vec!["10.20.0.0/16".parse().unwrap()],
        };
        assert!(corporate.permits("10.20.3.4".parse().unwrap()).is_ok());
        assert!(corporate.permits("10.21.0.1".parse().unwrap()).is_err());
        assert!(JwksUrl::parse("https://10.20.3.4/jwks", &corporate).is_ok());
    }

    #[test]
    fn overlong_urls_are_refused() {
        let url = format!("https://idp.example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(refused(&url, &PRODUCTION).contains("at most"));
    }
}
