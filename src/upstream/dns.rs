//! Resolving identity-provider host names for the fetcher. Every address an answer holds is
//! checked against the egress rules and only the permitted ones are returned, so the HTTP
//! client connects to exactly the addresses that were checked: no second lookup that DNS
//! rebinding could swap, and no request to a private network through a public-looking name.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use async_trait::async_trait;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::EgressRules;

/// Where addresses come from: the system resolver in production, a fixed table in tests.
#[async_trait]
pub trait HostLookup: Send + Sync + 'static {
    /// The addresses `host` resolves to.
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemLookup;

#[async_trait]
impl HostLookup for SystemLookup {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, 0))
            .await?
            .map(|addr| addr.ip())
            .collect())
    }
}

/// The addresses of `host` that `rules` permit, or why none is.
pub fn permitted(
    rules: &EgressRules,
    host: &str,
    addresses: &[IpAddr],
) -> Result<Vec<IpAddr>, String> {
    let mut refusals = Vec::new();
    let allowed: Vec<IpAddr> = addresses
        .iter()
        .copied()
        .filter(|ip| match rules.permits(*ip) {
            Ok(()) => true,
            Err(reason) => {
                refusals.push(reason);
                false
            }
        })
        .collect();
    match (allowed.is_empty(), refusals.first()) {
        (false, _) => Ok(allowed),
        (true, Some(reason)) => Err(format!("{host} resolves to no permitted address: {reason}")),
        (true, None) => Err(format!("{host} resolves to no address")),
    }
}

/// A `reqwest` resolver that keeps only permitted addresses.
pub struct GuardedResolver {
    lookup: Arc<dyn HostLookup>,
    rules: Arc<EgressRules>,
}

impl GuardedResolver {
    /// Resolves through `lookup`, filtered by `rules`.
    pub fn new(lookup: Arc<dyn HostLookup>, rules: Arc<EgressRules>) -> Self {
        Self { lookup, rules }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = Arc::clone(&self.lookup);
        let rules = Arc::clone(&self.rules);
        Box::pin(async move {
            let host = name.as_str();
            let addresses = lookup.lookup(host).await?;
            let allowed = permitted(&rules, host, &addresses)?;
            let addrs: Addrs = Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(loopback: bool) -> EgressRules {
        EgressRules {
            allow_http_and_loopback: loopback,
            allowed_networks: Vec::new(),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn only_permitted_addresses_are_kept() {
        let answer = ips(&["10.0.0.7", "93.184.216.34", "169.254.169.254"]);
        assert_eq!(
            permitted(&rules(false), "idp.example.com", &answer),
            Ok(ips(&["93.184.216.34"]))
        );
    }

    #[test]
    fn a_name_resolving_only_to_private_or_loopback_addresses_is_refused() {
        let private =
            permitted(&rules(true), "internal.example.com", &ips(&["10.0.0.7"])).unwrap_err();
        assert!(private.contains("not a public address"), "{private}");
        let metadata = permitted(
            &rules(true),
            "metadata.example.com",
            &ips(&["169.254.169.254"]),
        )
        .unwrap_err();
        assert!(metadata.contains("169.254.169.254"), "{metadata}");
        let rebound =
            permitted(&rules(false), "rebind.example.com", &ips(&["127.0.0.1"])).unwrap_err();
        assert!(rebound.contains("loopback"), "{rebound}");
        assert!(permitted(&rules(false), "empty.example.com", &[]).is_err());
    }

    #[test]
    fn answers_that_change_between_lookups_are_checked_each_time() {
        // A rebinding attack answers a public address first and an internal one next: every
        // answer is filtered on its own, so the second cannot be connected to.
        let first = permitted(
            &rules(false),
            "rebind.example.com",
            &ips(&["93.184.216.34"]),
        );
        let second = permitted(&rules(false), "rebind.example.com", &ips(&["127.0.0.1"]));
        assert!(first.is_ok() && second.is_err());
    }
}
