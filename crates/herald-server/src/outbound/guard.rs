//! The guarded HTTP client: every call herald makes to a URL a customer
//! chose (callbacks, flows' webhook nodes, live agents' endpoints) goes
//! through it, so that none of them reaches an internal address
//! (CONTRACT §5.5) unless the operator allows private callbacks.
//!
//! Three ways around such a guard are closed here:
//! - a literal internal address in the URL ([`GuardedClient::check`]);
//! - a name that resolves to one: the client's own resolver refuses it, so
//!   the check holds for the address actually connected to;
//! - a proxy, which would resolve the name itself: proxy variables of the
//!   environment (`HTTP_PROXY` and the like) are never read, and with a
//!   proxy the operator names (`--outbound-proxy`), every name is resolved
//!   and checked here before the request is handed over. The proxy then
//!   resolves it again; a name whose answer changes between the two looks
//!   is the one gap, closed only by a proxy that enforces its own policy.
//!
//! Redirects are never followed: a public URL could bounce the call to an
//! internal address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use herald_core::net::is_internal;
use herald_core::secret::SecretUrl;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The most idle connections kept to one host, unless
/// [`GuardedClient::keeping_idle`] says otherwise.
const POOL_PER_HOST: usize = 256;

/// Why a call is not made at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("refused: {0} is an internal address")]
    Internal(IpAddr),
    /// Only when a proxy is set: the name must be checked here first.
    #[error("the host name could not be resolved")]
    Unresolved,
}

/// Resolves names like the system does, then refuses internal addresses, so
/// that a public name pointing at loopback or a private network is refused
/// just like the literal address would be.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| is_internal(a.ip())) {
                return Err(Box::new(Refused::Internal(bad.ip())) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A client for calls to URLs that customers choose. Build one per use
/// (its timeout is the ceiling of its calls) and share it.
#[derive(Clone)]
pub struct GuardedClient {
    client: reqwest::Client,
    allow_private: bool,
    timeout: Duration,
    proxy: Option<SecretUrl>,
}

impl GuardedClient {
    /// `allow_private` turns the guard off (tests, demos, receivers on the
    /// same network); `proxy` was checked by [`check_proxy`].
    pub fn new(allow_private: bool, timeout: Duration, proxy: Option<&SecretUrl>) -> Self {
        Self::build(allow_private, timeout, proxy, POOL_PER_HOST)
    }

    /// The same client, keeping up to `idle` connections to one host.
    pub fn keeping_idle(self, idle: usize) -> Self {
        Self::build(self.allow_private, self.timeout, self.proxy.as_ref(), idle)
    }

    fn build(
        allow_private: bool,
        timeout: Duration,
        proxy: Option<&SecretUrl>,
        idle: usize,
    ) -> Self {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(idle)
            .no_proxy();
        if let Some(proxy) = proxy {
            let proxy = reqwest::Proxy::all(proxy.expose()).expect("checked at start-up");
            builder = builder.proxy(proxy);
        }
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        GuardedClient {
            client: builder
                .build()
                .expect("the HTTP client's settings are valid"),
            allow_private,
            timeout,
            proxy: proxy.cloned(),
        }
    }

    /// The client to build requests with, once [`GuardedClient::check`]
    /// has passed the URL.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Refuses a URL whose host is an internal address: a literal one
    /// (literals never reach the resolver), or, when a proxy would resolve
    /// the name instead of this client, a name that resolves to one.
    pub async fn check(&self, url: &reqwest::Url) -> Result<(), Refused> {
        if self.allow_private {
            return Ok(());
        }
        let host = match url.host() {
            Some(url::Host::Ipv4(ip)) => return refuse_if_internal(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => return refuse_if_internal(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => name,
            None => return Ok(()),
        };
        if self.proxy.is_none() {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Refused::Unresolved)?;
        for addr in addrs {
            refuse_if_internal(addr.ip())?;
        }
        Ok(())
    }
}

fn refuse_if_internal(ip: IpAddr) -> Result<(), Refused> {
    if is_internal(ip) {
        Err(Refused::Internal(ip))
    } else {
        Ok(())
    }
}

/// The refusal, if a request failed because the client's resolver found an
/// internal address behind the URL's name.
pub fn refused_by_resolver(e: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = err.source();
    }
    None
}

/// Checks `--outbound-proxy` at start-up: an `http://` or `https://` URL
/// that reqwest takes.
pub fn check_proxy(proxy: &SecretUrl) -> anyhow::Result<()> {
    let ok = url::Url::parse(proxy.expose())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .is_some_and(|_| reqwest::Proxy::all(proxy.expose()).is_ok());
    if !ok {
        anyhow::bail!(
            "HERALD_OUTBOUND_PROXY (--outbound-proxy) must be an http:// or https:// URL, \
             such as http://proxy.internal:3128 (got {proxy})"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_internal_addresses_are_refused() {
        let guard = GuardedClient::new(false, Duration::from_secs(1), None);
        for (url, ip) in [
            ("http://127.0.0.1:9/", "127.0.0.1"),
            ("http://[::1]/", "::1"),
            ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
            ("http://2130706433/", "127.0.0.1"),
            ("http://10.1.2.3/", "10.1.2.3"),
        ] {
            let url = reqwest::Url::parse(url).unwrap();
            assert_eq!(
                guard.check(&url).await,
                Err(Refused::Internal(ip.parse().unwrap())),
                "{url}"
            );
        }
        let public = reqwest::Url::parse("https://93.184.215.14/").unwrap();
        assert_eq!(guard.check(&public).await, Ok(()));
        let open = GuardedClient::new(true, Duration::from_secs(1), None);
        let local = reqwest::Url::parse("http://127.0.0.1/").unwrap();
        assert_eq!(open.check(&local).await, Ok(()));
    }

    #[tokio::test]
    async fn behind_a_proxy_names_are_resolved_and_checked_here() {
        let proxy = SecretUrl::new("http://127.0.0.1:9");
        let guard = GuardedClient::new(false, Duration::from_secs(1), Some(&proxy));
        let url = reqwest::Url::parse("http://localhost:8080/").unwrap();
        assert!(
            matches!(guard.check(&url).await, Err(Refused::Internal(ip)) if ip.is_loopback()),
            "localhost passed the guard"
        );
        // Without a proxy the client's resolver does it, at connect time.
        let direct = GuardedClient::new(false, Duration::from_secs(1), None);
        assert_eq!(direct.check(&url).await, Ok(()));
    }

    #[test]
    fn proxies_are_checked_at_start_up() {
        for good in ["http://proxy.internal:3128", "https://user:pw@proxy:443"] {
            assert!(check_proxy(&SecretUrl::new(good)).is_ok(), "{good}");
        }
        for bad in [
            "proxy:3128",
            "socks5://proxy:1080",
            "ftp://proxy",
            "http://",
        ] {
            let error = check_proxy(&SecretUrl::new(bad)).unwrap_err().to_string();
            assert!(error.starts_with("HERALD_OUTBOUND_PROXY"), "{bad}: {error}");
        }
        let error = check_proxy(&SecretUrl::new("socks5://u:s3cret@proxy"))
            .unwrap_err()
            .to_string();
        assert!(!error.contains("s3cret"), "{error}");
    }
}
