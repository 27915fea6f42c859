//! The `ingest` section: where `hookq ingest` (or a worker with
//! `ingest.enabled`) takes the webhooks that realtime servers send, and the
//! check that no endpoint sends hookq's own deliveries back to it.

use super::reader::Obj;
use super::{Diagnostics, ms};
use crate::endpoint::{Endpoint, EndpointTarget};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The route realtime servers post their webhooks to.
pub const ROUTE: &str = "/pusher/webhooks";

/// `ingest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSettings {
    /// `enabled`: a worker serves the ingest in its own process too.
    pub enabled: bool,
    /// `addr`: where the ingest listens (`ip:port`).
    pub addr: SocketAddr,
    /// `max_body_bytes`: a larger request is answered 413.
    pub max_body_bytes: usize,
    /// `dedup_window_ms`: the same body from the same app within it is enqueued once.
    pub dedup_window: Duration,
    /// `header_timeout_ms`: how long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// `body_timeout_ms`: how long a client may take to send its body.
    pub body_timeout: Duration,
    /// `urls`: the URLs senders reach the ingest at (behind a load balancer,
    /// a Kubernetes service); an endpoint under one of them is refused.
    pub urls: Vec<url::Url>,
}

pub(super) fn read_ingest(o: &mut Obj, d: &mut Diagnostics) -> IngestSettings {
    let default_addr = SocketAddr::from(([0, 0, 0, 0], 8080));
    let addr = match o.nonempty_str("addr", d) {
        None => default_addr,
        Some(text) => text.parse().unwrap_or_else(|_| {
            d.error(&o.at("addr"), format!("{text:?} is not an ip:port address"));
            default_addr
        }),
    };
    let path = o.at("urls");
    let urls = o
        .strings("urls", d)
        .into_iter()
        .enumerate()
        .filter_map(|(i, u)| match url::Url::parse(&u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            _ => {
                d.error(
                    &format!("{path}[{i}]"),
                    format!("{u:?} is not an absolute http(s) URL"),
                );
                None
            }
        })
        .collect();
    let settings = IngestSettings {
        enabled: o.bool("enabled", false, d),
        addr,
        max_body_bytes: o.u64("max_body_bytes", 1024 * 1024, 64, d) as usize,
        dedup_window: ms(o.u64("dedup_window_ms", 300_000, 0, d)),
        header_timeout: ms(o.u64("header_timeout_ms", 10_000, 1, d)),
        body_timeout: ms(o.u64("body_timeout_ms", 10_000, 1, d)),
        urls,
    };
    o.finish(d);
    settings
}

impl IngestSettings {
    /// Whether `url` leads back to this ingest: under one of `urls`, or the
    /// ingest's route on its own port of this host (a loopback name, or the
    /// address it listens on).
    pub fn is_ingest_url(&self, url: &url::Url) -> bool {
        let under = |base: &url::Url| {
            url.scheme() == base.scheme()
                && url.host() == base.host()
                && url.port_or_known_default() == base.port_or_known_default()
                && url.path().starts_with(base.path().trim_end_matches('/'))
        };
        if self.urls.iter().any(under) {
            return true;
        }
        let own_route = url.path().trim_end_matches('/') == ROUTE
            && url.port_or_known_default() == Some(self.addr.port());
        let this_host = match url.host() {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => self.is_local(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.is_local(IpAddr::V6(ip)),
            None => false,
        };
        own_route && this_host
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || ip == self.addr.ip()
    }
}

/// Refuses endpoints that would send hookq's deliveries back into its own
/// ingest (a loop that never ends); `path(i)` is the JSON path of endpoint `i`.
pub(super) fn check_loops(
    endpoints: &[Endpoint],
    ingest: &IngestSettings,
    path: impl Fn(usize) -> String,
    d: &mut Diagnostics,
) {
    for (i, e) in endpoints.iter().enumerate() {
        if let EndpointTarget::Http(url) = &e.target
            && ingest.is_ingest_url(url)
        {
            d.error(
                &format!("{}.url", path(i)),
                "points at hookq's own ingest: deliveries would come back as new webhooks \
                 forever; the realtime server's webhook points at the ingest, hookq's \
                 endpoints at the real receivers",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(addr: &str, urls: &[&str]) -> IngestSettings {
        IngestSettings {
            enabled: false,
            addr: addr.parse().unwrap(),
            max_body_bytes: 1024,
            dedup_window: Duration::ZERO,
            header_timeout: Duration::ZERO,
            body_timeout: Duration::ZERO,
            urls: urls.iter().map(|u| url::Url::parse(u).unwrap()).collect(),
        }
    }

    #[test]
    fn knows_its_own_urls() {
        let s = settings("0.0.0.0:8080", &["https://hooks.example.com/in/"]);
        for (url, loops) in [
            ("http://127.0.0.1:8080/pusher/webhooks", true),
            ("http://localhost:8080/pusher/webhooks/", true),
            ("http://[::1]:8080/pusher/webhooks", true),
            ("http://127.0.0.1:8081/pusher/webhooks", false),
            ("http://127.0.0.1:8080/hooks", false),
            ("http://10.1.2.3:8080/pusher/webhooks", false),
            ("https://hooks.example.com/in/pusher/webhooks", true),
            ("https://hooks.example.com/other", false),
            ("http://hooks.example.com/in/pusher/webhooks", false),
        ] {
            let u = url::Url::parse(url).unwrap();
            assert_eq!(s.is_ingest_url(&u), loops, "{url}");
        }
        let bound = settings("10.1.2.3:9000", &[]);
        let u = url::Url::parse("http://10.1.2.3:9000/pusher/webhooks").unwrap();
        assert!(bound.is_ingest_url(&u));
    }
}
