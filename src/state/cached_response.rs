//! What keyrelay keeps of an identity provider's last good response for its next
//! revalidation: only the header fields the HTTP caching rules read (RFC 9111), as one short
//! string, instead of a whole parsed cache policy with the request's and response's header maps.
//! A policy is rebuilt from it when a 304 arrives.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The response header fields that decide freshness and revalidation: what a 304 updates and
/// what the lifetime is computed from.
const KEPT: [&str; 8] = [
    "cache-control",
    "expires",
    "date",
    "age",
    "pragma",
    "vary",
    "etag",
    "last-modified",
];

/// The caching header fields of a stored response, one `name: value` per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResponse(Box<str>);

impl CachedResponse {
    /// Keeps the caching fields of `headers`; values that are not visible ASCII are left out,
    /// as the validators are.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let kept = KEPT.iter().flat_map(|name| {
            headers
                .get_all(*name)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .map(move |value| format!("{name}: {value}\n"))
        });
        Self(kept.collect::<String>().into_boxed_str())
    }

    /// The kept fields as a header map, to rebuild a cache policy from.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in self.0.lines() {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(name, value);
            }
        }
        headers
    }

    /// These fields after a 304 that carried `not_modified`: each kept field the stored
    /// response has takes the 304's values when the 304 sends it (RFC 9111, 4.3.4, as
    /// http-cache-semantics merges them); fields the stored response lacks are not added.
    pub fn updated_by(&self, not_modified: &HeaderMap) -> HeaderMap {
        let mut headers = self.headers();
        let names: Vec<HeaderName> = headers.keys().cloned().collect();
        for name in names {
            if not_modified.contains_key(&name) {
                headers.remove(&name);
                for value in not_modified.get_all(&name) {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers
    }

    /// A cache policy as keyrelay stored it before this type (http-cache-semantics' serde
    /// form): the caching fields of its response headers.
    fn from_stored_policy(policy: &Value) -> Result<Self, String> {
        let response = policy
            .get("res")
            .and_then(Value::as_object)
            .ok_or("a stored cache policy without response headers")?;
        let mut headers = HeaderMap::new();
        for (name, values) in response {
            let values = match values {
                Value::Array(values) => values.iter().filter_map(Value::as_str).collect(),
                value => value.as_str().into_iter().collect::<Vec<_>>(),
            };
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            for value in values {
                if let Ok(value) = HeaderValue::from_str(value) {
                    headers.append(name.clone(), value);
                }
            }
        }
        Ok(Self::from_headers(&headers))
    }
}

impl Serialize for CachedResponse {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CachedResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(fields) => Ok(Self(fields.into_boxed_str())),
            policy @ Value::Object(_) => {
                Self::from_stored_policy(&policy).map_err(serde::de::Error::custom)
            }
            other => Err(serde::de::Error::custom(format!(
                "a cached response is a string of header fields, not {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_cache_semantics::CachePolicy;

    use super::*;

    fn response_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("cache-control", "max-age=3600"),
            ("etag", "\"v1\""),
            ("date", "Wed, 02 Dec 2026 17:00:00 GMT"),
            ("content-type", "application/json"),
            ("content-security-policy", "default-src 'none'"),
            ("vary", "accept"),
            ("vary", "origin"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_the_caching_fields_are_kept_and_read_back() {
        let cached = CachedResponse::from_headers(&response_headers());
        assert_eq!(
            &*cached.0,
            "cache-control: max-age=3600\ndate: Wed, 02 Dec 2026 17:00:00 GMT\nvary: accept\nvary: origin\netag: \"v1\"\n"
        );
        let headers = cached.headers();
        assert_eq!(headers.len(), 5);
        assert_eq!(headers.get_all("vary").iter().count(), 2);
        assert!(headers.get("content-type").is_none());
        let stored = serde_json::to_string(&cached).expect("serializes");
        assert_eq!(
            serde_json::from_str::<CachedResponse>(&stored).ok(),
            Some(cached)
        );
    }

    #[test]
    fn a_304_updates_the_fields_the_stored_response_has_and_adds_none() {
        let cached = CachedResponse::from_headers(&response_headers());
        let mut not_modified = HeaderMap::new();
        not_modified.insert("cache-control", HeaderValue::from_static("max-age=60"));
        not_modified.insert(
            "expires",
            HeaderValue::from_static("Thu, 03 Dec 2026 00:00:00 GMT"),
        );
        let merged = cached.updated_by(&not_modified);
        assert_eq!(
            merged.get("cache-control").map(|v| v.as_bytes()),
            Some(&b"max-age=60"[..])
        );
        assert!(
            merged.get("expires").is_none(),
            "not in the stored response"
        );
        assert_eq!(
            merged.get("etag").map(|v| v.as_bytes()),
            Some(&b"\"v1\""[..])
        );
    }

    #[test]
    fn a_cache_policy_stored_by_an_earlier_version_is_read_as_its_caching_fields() {
        let request = http::Request::get("https://idp.example.com/jwks")
            .body(())
            .expect("request");
        let mut response = http::Response::builder()
            .status(200)
            .body(())
            .expect("response");
        *response.headers_mut() = response_headers();
        let policy = CachePolicy::new(&request, &response);
        let stored = serde_json::to_string(&policy).expect("serializes");
        let read: CachedResponse = serde_json::from_str(&stored).expect("a legacy policy reads");
        assert_eq!(read, CachedResponse::from_headers(&response_headers()));
        assert!(serde_json::from_str::<CachedResponse>("7").is_err());
        assert!(serde_json::from_str::<CachedResponse>("{}").is_err());
    }
}
