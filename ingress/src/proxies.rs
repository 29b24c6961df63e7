//! Trusted proxies in front of the ingress (`--trusted-proxy`) and the forwarding fields the
//! upstream gets.
//!
//! A client's own `X-Forwarded-For` is kept and appended to, but never believed: the client
//! address the ingress logs and sends as `X-Real-IP` is the TCP peer. When the peer is a
//! trusted proxy, the client address is instead the nearest address in `X-Forwarded-For`, read
//! from the right, that is not itself a trusted proxy, and the proxy's `X-Forwarded-Proto` and
//! `X-Forwarded-Host` are kept.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::header::{HeaderName, HeaderValue, HOST};
use http::HeaderMap;

const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// An address range such as `10.0.0.0/8` or `::1/128`; a bare address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    network: IpAddr,
    prefix: u8,
}

impl AddrRange {
    fn contains(&self, addr: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                prefix_matches(&net.octets(), &addr.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                prefix_matches(&net.octets(), &addr.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(network: &[u8], addr: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    if network[..full] != addr[..full] {
        return false;
    }
    let rest = prefix % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    network[full] & mask == addr[full] & mask
}

impl FromStr for AddrRange {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, String> {
        let invalid = || format!("{input:?} is not an IP address or range such as 10.0.0.0/8");
        let (addr, prefix) = match input.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (input, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| invalid())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| invalid())?,
            None => max,
        };
        if prefix > max {
            return Err(format!("{input:?}: a prefix length must be at most {max}"));
        }
        Ok(Self { network, prefix })
    }
}

/// The proxies whose forwarding fields the ingress believes.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<AddrRange>);

impl TrustedProxies {
    pub(crate) fn new(ranges: Vec<AddrRange>) -> Self {
        Self(ranges)
    }

    pub(crate) fn trusts(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(addr))
    }

    /// Returns the client's address: `peer` itself unless `peer` is trusted, else the nearest
    /// untrusted address in `X-Forwarded-For`. A port is known only for the peer; other
    /// addresses get port 0.
    pub(crate) fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.trusts(peer.ip()) {
            return peer;
        }
        let mut client = peer;
        for hop in forwarded_hops(headers).rev() {
            let Some(addr) = parse_hop(hop) else {
                // Whatever wrote this entry is not a proxy that writes addresses, so the
                // nearest address known good is taken as the client.
                break;
            };
            client = SocketAddr::new(addr, 0);
            if !self.trusts(addr) {
                break;
            }
        }
        client
    }

    /// Sets the forwarding fields for the upstream: `X-Forwarded-For` gets `peer` appended,
    /// `X-Real-IP` is `client`, and `X-Forwarded-Proto` and `-Host` are the ingress's own
    /// unless a trusted peer sent them.
    pub(crate) fn set_forwarded(
        &self,
        headers: &mut HeaderMap,
        peer: SocketAddr,
        client: SocketAddr,
        scheme: &str,
    ) {
        let mut chain = forwarded_hops(headers).collect::<Vec<_>>().join(", ");
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        chain.push_str(&peer.ip().to_string());
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert(FORWARDED_FOR, value);
        }
        headers.insert(REAL_IP, ip_value(client.ip()));

        let trusted = self.trusts(peer.ip());
        if !(trusted && headers.contains_key(&FORWARDED_PROTO)) {
            if let Ok(value) = HeaderValue::from_str(scheme) {
                headers.insert(FORWARDED_PROTO, value);
            }
        }
        if !(trusted && headers.contains_key(&FORWARDED_HOST)) {
            match headers.get(HOST).cloned() {
                Some(host) => {
                    headers.insert(FORWARDED_HOST, host);
                }
                None => {
                    headers.remove(FORWARDED_HOST);
                }
            }
        }
    }
}

/// Returns the entries of every `X-Forwarded-For` field, in order, trimmed, empty ones
/// skipped.
fn forwarded_hops(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = &str> {
    headers
        .get_all(&FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
}

/// Reads one `X-Forwarded-For` entry: an address, optionally with a port (`[v6]:port` for
/// IPv6).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

fn ip_value(addr: IpAddr) -> HeaderValue {
    // An address always formats as valid field bytes.
    HeaderValue::from_str(&addr.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|range| range.parse().unwrap()).collect())
    }

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn ranges_parse_and_match() {
        let range: AddrRange = "10.1.0.0/16".parse().unwrap();
        assert!(range.contains("10.1.255.3".parse().unwrap()));
        assert!(!range.contains("10.2.0.1".parse().unwrap()));
        assert!(range.contains("::ffff:10.1.0.9".parse().unwrap()));
        let range: AddrRange = "192.0.2.128/25".parse().unwrap();
        assert!(range.contains("192.0.2.200".parse().unwrap()));
        assert!(!range.contains("192.0.2.100".parse().unwrap()));
        let one: AddrRange = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: AddrRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("198.51.100.1".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
            assert!(bad.parse::<AddrRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let peer: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let fields = headers(&[("x-forwarded-for", "203.0.113.1")]);
        assert_eq!(proxies(&[]).client_addr(peer, &fields), peer);
        assert_eq!(proxies(&["10.0.0.0/8"]).client_addr(peer, &fields), peer);
    }

    #[test]
    fn trusted_chain_is_read_from_the_right() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let peer: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let fields = headers(&[
            ("x-forwarded-for", "203.0.113.9, 198.51.100.1"),
            ("x-forwarded-for", "10.9.9.9"),
        ]);
        let client = trusted.client_addr(peer, &fields);
        assert_eq!(client, "198.51.100.1:0".parse().unwrap());

        // Only trusted hops: the leftmost one is as far as the chain goes.
        let fields = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        let client = trusted.client_addr(peer, &fields);
        assert_eq!(client, "10.1.1.1:0".parse().unwrap());

        // A garbled entry stops the walk at the last address that parsed.
        let fields = headers(&[("x-forwarded-for", "198.51.100.1, unknown, 10.3.3.3")]);
        let client = trusted.client_addr(peer, &fields);
        assert_eq!(client, "10.3.3.3:0".parse().unwrap());

        // No field: the proxy itself.
        assert_eq!(trusted.client_addr(peer, &HeaderMap::new()), peer);

        let fields = headers(&[("x-forwarded-for", "[2001:db8::5]:443")]);
        let client = trusted.client_addr(peer, &fields);
        assert_eq!(client, "[2001:db8::5]:0".parse().unwrap());
    }

    #[test]
    fn forwarded_fields_from_a_client_are_replaced() {
        let peer: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let mut fields = headers(&[
            ("host", "app.example.com"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "bank.example"),
            ("x-real-ip", "203.0.113.1"),
        ]);
        let proxies = proxies(&["10.0.0.0/8"]);
        let client = proxies.client_addr(peer, &fields);
        proxies.set_forwarded(&mut fields, peer, client, "http");
        assert_eq!(fields["x-forwarded-for"], "203.0.113.1, 198.51.100.7");
        assert_eq!(fields["x-real-ip"], "198.51.100.7");
        assert_eq!(fields["x-forwarded-proto"], "http");
        assert_eq!(fields["x-forwarded-host"], "app.example.com");
        assert_eq!(fields.get_all("x-real-ip").iter().count(), 1);
    }

    #[test]
    fn forwarded_fields_from_a_trusted_proxy_are_kept() {
        let peer: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let mut fields = headers(&[
            ("host", "app.example.com"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "www.example.com"),
        ]);
        let proxies = proxies(&["10.0.0.0/8"]);
        let client = proxies.client_addr(peer, &fields);
        proxies.set_forwarded(&mut fields, peer, client, "http");
        assert_eq!(fields["x-forwarded-for"], "203.0.113.1, 10.0.0.2");
        assert_eq!(fields["x-real-ip"], "203.0.113.1");
        assert_eq!(fields["x-forwarded-proto"], "https");
        assert_eq!(fields["x-forwarded-host"], "www.example.com");
    }
}
