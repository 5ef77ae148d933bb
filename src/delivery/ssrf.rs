//! SSRF guard for outgoing webhook deliveries.
//!
//! Endpoint URLs come from API clients, so without a guard a client could make hookd send
//! requests to addresses that only hookd can reach: services on loopback, hosts on the private
//! network, or the cloud metadata service at 169.254.169.254. The guard rejects every address
//! that is not public unless the operator lists its network in `allowed_networks`.
//!
//! The check runs at two points. [`validate_endpoint_url`] rejects a blocked IP literal when an
//! endpoint is registered, so the API client gets an error right away. That check cannot be
//! the only one, because a host name can resolve to a different address at delivery time (DNS
//! rebinding) and the system resolver accepts spellings such as `0x7f.1`. So
//! [`GuardedConnector`] resolves the host itself, with a [`HostResolver`], and checks each
//! resolved socket address right before it connects to that address. Because the address
//! that is checked is the address that is connected to, neither a URL spelling nor a DNS
//! answer can lead to a blocked address. This also covers redirects that the caller follows
//! with a client built on this connector.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::rt::TokioIo;
use ipnet::{IpNet, Ipv4Net};
use tokio::net::TcpStream;
use url::{Host, Url};

use super::dns::HostResolver;

/// Maximum length in bytes of an endpoint URL, before and after normalisation.
pub const MAX_ENDPOINT_URL_LEN: usize = 2048;

/// Special-purpose range of an IP address, reported as the reason when the guard blocks it.
/// Only [`AddressClass::Public`] is allowed without an entry in `allowed_networks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Globally routable unicast address.
    Public,
    /// 127.0.0.0/8 and ::1.
    Loopback,
    /// 10.0.0.0/8, 172.16.0.0/12 and 192.168.0.0/16 (RFC 1918).
    Private,
    /// 169.254.0.0/16, which contains the 169.254.169.254 metadata service, and fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10, the shared address space of carrier-grade NAT (RFC 6598).
    SharedCgnat,
    /// 224.0.0.0/4 and ff00::/8.
    Multicast,
    /// 0.0.0.0/8 ("this network") and ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32 and 3fff::/20.
    Documentation,
    /// 198.18.0.0/15 and 2001:2::/48.
    Benchmarking,
    /// 192.0.0.0/24 (IETF protocol assignments), 240.0.0.0/4, and IPv6 outside 2000::/3 that
    /// no other class covers.
    Reserved,
    /// ::ffff:0:0/96 with a public IPv4 address inside. A mapped address with a non-public
    /// IPv4 address inside gets the class of that IPv4 address.
    Ipv4Mapped,
    /// ::/96 other than :: and ::1 (deprecated IPv4-compatible addresses).
    Ipv4Compatible,
    /// 64:ff9b::/96 and 64:ff9b:1::/48, which a NAT64 gateway translates to IPv4 addresses.
    Nat64,
    /// fc00::/7 (unique local addresses, the IPv6 counterpart of private networks).
    UniqueLocal,
    /// fec0::/10 (deprecated site-local addresses).
    SiteLocal,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::SharedCgnat => "in the shared CGNAT range",
            AddressClass::Multicast => "multicast",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Documentation => "reserved for documentation",
            AddressClass::Benchmarking => "reserved for benchmarking",
            AddressClass::Reserved => "reserved",
            AddressClass::Ipv4Mapped => "IPv4-mapped",
            AddressClass::Ipv4Compatible => "IPv4-compatible",
            AddressClass::Nat64 => "a NAT64 address",
            AddressClass::UniqueLocal => "unique local",
            AddressClass::SiteLocal => "site-local",
        };
        f.write_str(text)
    }
}

/// Classifies an IP address by the special-purpose range that contains it.
///
/// This is a pure function and opens no connection.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    if ip.is_broadcast() {
        return AddressClass::Broadcast;
    }

    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => AddressClass::Unspecified,
        (10, _, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::SharedCgnat,
        (127, _, _) => AddressClass::Loopback,
        (169, 254, _) => AddressClass::LinkLocal,
        (172, 16..=31, _) => AddressClass::Private,
        (192, 0, 0) => AddressClass::Reserved,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (192, 168, _) => AddressClass::Private,
        (198, 18..=19, _) => AddressClass::Benchmarking,
        (224..=239, _, _) => AddressClass::Multicast,
        (240..=255, _, _) => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }

    // A dual-stack socket connects to a mapped address over IPv4, so the embedded address is
    // what the connection reaches, and its class is the more useful reason to report.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return match classify_v4(v4) {
            AddressClass::Public => AddressClass::Ipv4Mapped,
            class => class,
        };
    }

    let segments = ip.segments();
    match segments {
        [0, 0, 0, 0, 0, 0, _, _] => AddressClass::Ipv4Compatible,
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, ..] => AddressClass::Nat64,
        [0x2001, 0xdb8, ..] => AddressClass::Documentation,
        [0x3fff, second, ..] if second & 0xf000 == 0 => AddressClass::Documentation,
        [0x2001, 0x2, 0, ..] => AddressClass::Benchmarking,
        [first, ..] if first & 0xfe00 == 0xfc00 => AddressClass::UniqueLocal,
        [first, ..] if first & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        [first, ..] if first & 0xffc0 == 0xfec0 => AddressClass::SiteLocal,
        [first, ..] if first & 0xff00 == 0xff00 => AddressClass::Multicast,
        // IANA allocates global unicast addresses only from 2000::/3.
        [first, ..] if first & 0xe000 != 0x2000 => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// Set of networks that deliveries may reach although their addresses are not public.
///
/// Public addresses are always allowed. An empty policy, the default, allows nothing else.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    allowed: Vec<IpNet>,
}

impl NetworkPolicy {
    /// Creates a policy that also allows the given networks.
    ///
    /// An IPv6 network inside ::ffff:0:0/96, such as `::ffff:127.0.0.1/128`, is stored as the
    /// IPv4 network it maps (`127.0.0.1/32`), because [`NetworkPolicy::check`] matches
    /// IPv4-mapped addresses against IPv4 networks only.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        let allowed = allowed.into_iter().map(unmap_network).collect();
        Self { allowed }
    }

    /// Returns the allowed networks, with IPv4-mapped networks stored as IPv4 networks.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Returns `Ok` when the address is public or inside an allowed network.
    ///
    /// An IPv4-mapped IPv6 address is matched as its IPv4 address, so allowing 127.0.0.1/32
    /// allows ::ffff:127.0.0.1 but not ::1 or ::127.0.0.1.
    pub fn check(&self, ip: IpAddr) -> Result<(), BlockedAddress> {
        let class = classify(ip);
        if class == AddressClass::Public {
            return Ok(());
        }

        let matched_ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        if self.allowed.iter().any(|net| net.contains(&matched_ip)) {
            return Ok(());
        }

        Err(BlockedAddress { ip, class })
    }
}

fn unmap_network(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    match v6.network().to_ipv4_mapped() {
        Some(v4) if v6.prefix_len() >= 96 => {
            let v4_net = Ipv4Net::new(v4, v6.prefix_len() - 96)
                .expect("a prefix length of at most 128 minus 96 is a valid IPv4 prefix length");
            IpNet::V4(v4_net)
        }
        _ => net,
    }
}

/// Address that the network policy rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("address {ip} is {class} and not in allowed_networks")]
pub struct BlockedAddress {
    pub ip: IpAddr,
    pub class: AddressClass,
}

/// Reason why [`validate_endpoint_url`] rejects an endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url is {len} bytes long, the maximum is {max} bytes")]
    TooLong { len: usize, max: usize },

    #[error("invalid url ({0}), expected an absolute http or https url such as https://example.com/hooks")]
    Invalid(url::ParseError),

    #[error("url scheme must be http or https, got {0}")]
    UnsupportedScheme(String),

    #[error("url has no host, expected a host name or IP address as in https://example.com/hooks")]
    MissingHost,

    #[error("url must not contain a user name or password (user:password@host), remove them")]
    UserInfo,

    #[error("url port 0 is invalid, expected a port from 1 to 65535")]
    InvalidPort,

    /// The WHATWG rules accept the URL but hyper, which builds the delivery requests, does
    /// not, so every attempt would fail. The value is hyper's reason.
    #[error("url cannot be used in an HTTP request ({0}); check the host name for characters other than letters, digits, '-', '_' and '.'")]
    NotHttpUri(String),

    #[error(transparent)]
    Blocked(#[from] BlockedAddress),
}

/// Parses and validates an endpoint URL when an API client registers it.
///
/// The URL must be an absolute http or https URL of at most [`MAX_ENDPOINT_URL_LEN`] bytes,
/// with a host, a non-zero port, no user name or password, and it must also parse as a
/// [`hyper::Uri`], as the sender parses it for every attempt. The `url` crate normalises
/// IPv4 spellings (decimal `2130706433`, hex `0x7f.1`, octal `0177.0.0.1`, short forms such as
/// `127.1`, a trailing dot), so a host that is an IP literal after that normalisation is
/// checked against `policy` here. A host name is accepted, because its addresses are checked
/// by [`GuardedConnector`] at connect time. Returns the normalised URL.
pub fn validate_endpoint_url(raw: &str, policy: &NetworkPolicy) -> Result<Url, UrlError> {
    check_length(raw.len())?;

    let url = Url::parse(raw).map_err(|error| match error {
        url::ParseError::EmptyHost => UrlError::MissingHost,
        other => UrlError::Invalid(other),
    })?;

    let scheme = url.scheme();
    if scheme != "http" && scheme != "https" {
        return Err(UrlError::UnsupportedScheme(scheme.to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::UserInfo);
    }
    if url.port() == Some(0) {
        return Err(UrlError::InvalidPort);
    }

    match url.host() {
        None => return Err(UrlError::MissingHost),
        Some(Host::Domain(_)) => {}
        Some(Host::Ipv4(v4)) => policy.check(IpAddr::V4(v4))?,
        Some(Host::Ipv6(v6)) => policy.check(IpAddr::V6(v6))?,
    }

    // Normalisation can lengthen the URL, for example by percent-encoding.
    check_length(url.as_str().len())?;

    // The WHATWG host rules allow characters such as '"' and '{' that hyper's URI parser
    // rejects, and the sender parses the stored URL with hyper.
    if let Err(error) = url.as_str().parse::<Uri>() {
        return Err(UrlError::NotHttpUri(error.to_string()));
    }
    Ok(url)
}

fn check_length(len: usize) -> Result<(), UrlError> {
    if len > MAX_ENDPOINT_URL_LEN {
        return Err(UrlError::TooLong {
            len,
            max: MAX_ENDPOINT_URL_LEN,
        });
    }
    Ok(())
}

/// Error of [`GuardedConnector`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The policy blocks every resolved address, so no connection was attempted. The value is
    /// the first blocked address.
    #[error("blocked by the network policy: {0}")]
    Blocked(BlockedAddress),

    #[error("failed to resolve host: {0}")]
    Resolve(io::Error),

    /// Every allowed address failed. The value is the error of the last address tried.
    #[error("failed to connect: {0}")]
    Connect(io::Error),

    #[error("invalid uri for connecting: {0}")]
    InvalidUri(String),
}

/// hyper-util connector that connects only to addresses that the network policy allows.
///
/// It resolves the host itself (an IP literal directly, a name with its [`HostResolver`]) on
/// every call, drops every resolved address that the policy blocks, and tries the remaining
/// addresses in resolver order until one connects. The default port is 80 for http and 443
/// for https, and the stream has `TCP_NODELAY` set. There is no connect timeout, so the
/// caller should put a deadline on the whole request.
///
/// It works as the connector of `hyper_util::client::legacy::Client` and as the inner
/// connector of hyper-rustls' `HttpsConnector`.
#[derive(Clone)]
pub struct GuardedConnector {
    policy: Arc<NetworkPolicy>,
    resolver: HostResolver,
}

impl GuardedConnector {
    /// Creates a connector that resolves names with the system resolver and checks every
    /// resolved address against `policy`.
    pub fn new(policy: Arc<NetworkPolicy>) -> Self {
        Self::with_resolver(policy, HostResolver::System)
    }

    /// Creates a connector that resolves names with `resolver` and checks every resolved
    /// address against `policy`.
    pub fn with_resolver(policy: Arc<NetworkPolicy>, resolver: HostResolver) -> Self {
        Self { policy, resolver }
    }
}

impl fmt::Debug for GuardedConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedConnector")
            .field("allowed", &self.policy.allowed())
            .field("resolver", &self.resolver)
            .finish()
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        let resolver = self.resolver.clone();
        Box::pin(async move { connect(&policy, &resolver, &uri).await })
    }
}

/// Host part of a URI, split into an IP literal or a name that needs DNS resolution.
#[derive(Debug, PartialEq, Eq)]
enum TargetHost {
    Ip(IpAddr),
    Name(String),
}

async fn connect(
    policy: &NetworkPolicy,
    resolver: &HostResolver,
    uri: &Uri,
) -> Result<TokioIo<TcpStream>, ConnectError> {
    let (host, port) = parse_target(uri)?;
    let resolved = match host {
        TargetHost::Ip(ip) => vec![SocketAddr::new(ip, port)],
        TargetHost::Name(name) => resolver
            .resolve(&name, port)
            .await
            .map_err(ConnectError::Resolve)?,
    };
    let allowed = filter_allowed(policy, &resolved)?;
    let stream = connect_first(&allowed).await?;
    Ok(TokioIo::new(stream))
}

/// Splits a URI into its host and port, with the default port of its scheme.
fn parse_target(uri: &Uri) -> Result<(TargetHost, u16), ConnectError> {
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        Some(other) => {
            return Err(ConnectError::InvalidUri(format!(
                "scheme must be http or https, got {other} in {uri}"
            )))
        }
        None => {
            return Err(ConnectError::InvalidUri(format!(
                "missing scheme in {uri}, expected an absolute http or https uri"
            )))
        }
    };
    let port = uri.port_u16().unwrap_or(default_port);

    let host = match uri.host() {
        Some(host) if !host.is_empty() => host,
        _ => return Err(ConnectError::InvalidUri(format!("missing host in {uri}"))),
    };

    // `Uri::host` keeps the brackets around an IPv6 literal.
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(host);
    let target = match unbracketed.parse::<IpAddr>() {
        Ok(ip) => TargetHost::Ip(ip),
        Err(_) => TargetHost::Name(host.to_owned()),
    };
    Ok((target, port))
}

/// Keeps the addresses that the policy allows, in their order. Fails with the first blocked
/// address when the policy blocks all of them.
fn filter_allowed(
    policy: &NetworkPolicy,
    addresses: &[SocketAddr],
) -> Result<Vec<SocketAddr>, ConnectError> {
    let mut allowed = Vec::with_capacity(addresses.len());
    let mut first_blocked = None;

    for address in addresses {
        match policy.check(address.ip()) {
            Ok(()) => allowed.push(*address),
            Err(blocked) => {
                tracing::debug!(%address, class = %blocked.class, "skipping blocked address");
                first_blocked.get_or_insert(blocked);
            }
        }
    }

    match first_blocked {
        Some(blocked) if allowed.is_empty() => Err(ConnectError::Blocked(blocked)),
        _ => Ok(allowed),
    }
}

/// Connects to the first address that accepts, trying them in order.
async fn connect_first(addresses: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
    let mut last_error = None;

    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|error| {
                    let message = format!("{address}: failed to set TCP_NODELAY: {error}");
                    ConnectError::Connect(io::Error::new(error.kind(), message))
                })?;
                return Ok(stream);
            }
            Err(error) => {
                tracing::debug!(
                    %address,
                    %error,
                    "connect attempt failed, trying the next address"
                );
                // The OS error does not name the address, so the message gets it here.
                last_error = Some(io::Error::new(error.kind(), format!("{address}: {error}")));
            }
        }
    }

    let error =
        last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to try"));
    Err(ConnectError::Connect(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::error::Error as StdError;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::connect::Connection;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tower_service::Service;

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|_| panic!("test address {text} must parse"))
    }

    fn ip_v6(text: &str) -> Ipv6Addr {
        text.parse()
            .unwrap_or_else(|_| panic!("test address {text} must parse"))
    }

    fn net(text: &str) -> IpNet {
        text.parse()
            .unwrap_or_else(|_| panic!("test network {text} must parse"))
    }

    fn allow_localhost() -> NetworkPolicy {
        NetworkPolicy::new(vec![net("127.0.0.1/32")])
    }

    fn assert_classes(cases: &[(&str, AddressClass)]) {
        for &(address, expected) in cases {
            assert_eq!(classify(ip(address)), expected, "classify({address})");
        }
    }

    #[test]
    fn classify_ipv4_special_ranges() {
        assert_classes(&[
            ("127.0.0.1", AddressClass::Loopback),
            ("127.0.0.2", AddressClass::Loopback),
            ("127.255.255.255", AddressClass::Loopback),
            ("10.0.0.1", AddressClass::Private),
            ("10.255.255.255", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("169.254.169.254", AddressClass::LinkLocal),
            ("169.254.0.1", AddressClass::LinkLocal),
            ("100.64.0.1", AddressClass::SharedCgnat),
            ("100.127.255.255", AddressClass::SharedCgnat),
            ("224.0.0.1", AddressClass::Multicast),
            ("239.255.255.255", AddressClass::Multicast),
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Unspecified),
            ("255.255.255.255", AddressClass::Broadcast),
            ("240.0.0.1", AddressClass::Reserved),
            ("255.255.255.254", AddressClass::Reserved),
            ("192.0.0.1", AddressClass::Reserved),
            ("192.0.0.170", AddressClass::Reserved),
            ("198.18.0.1", AddressClass::Benchmarking),
            ("198.19.255.255", AddressClass::Benchmarking),
            ("192.0.2.1", AddressClass::Documentation),
            ("198.51.100.1", AddressClass::Documentation),
            ("203.0.113.1", AddressClass::Documentation),
        ]);
    }

    #[test]
    fn classify_ipv4_range_boundaries_public() {
        assert_classes(&[
            ("9.255.255.255", AddressClass::Public),
            ("11.0.0.0", AddressClass::Public),
            ("100.63.255.255", AddressClass::Public),
            ("100.128.0.0", AddressClass::Public),
            ("126.255.255.255", AddressClass::Public),
            ("128.0.0.0", AddressClass::Public),
            ("169.253.255.255", AddressClass::Public),
            ("169.255.0.0", AddressClass::Public),
            ("172.15.255.255", AddressClass::Public),
            ("172.32.0.0", AddressClass::Public),
            ("192.0.1.1", AddressClass::Public),
            ("192.167.255.255", AddressClass::Public),
            ("192.169.0.0", AddressClass::Public),
            ("198.17.255.255", AddressClass::Public),
            ("198.20.0.0", AddressClass::Public),
            ("223.255.255.255", AddressClass::Public),
            ("1.0.0.0", AddressClass::Public),
        ]);
    }

    #[test]
    fn classify_ipv6_special_ranges() {
        assert_classes(&[
            ("::1", AddressClass::Loopback),
            ("::", AddressClass::Unspecified),
            ("fc00::1", AddressClass::UniqueLocal),
            ("fd12:3456::1", AddressClass::UniqueLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("febf:ffff::1", AddressClass::LinkLocal),
            ("fec0::1", AddressClass::SiteLocal),
            ("feff::1", AddressClass::SiteLocal),
            ("ff02::1", AddressClass::Multicast),
            ("ff0e::1", AddressClass::Multicast),
            ("2001:db8::1", AddressClass::Documentation),
            ("3fff::1", AddressClass::Documentation),
            ("3fff:fff::1", AddressClass::Documentation),
            ("2001:2::1", AddressClass::Benchmarking),
            ("64:ff9b::7f00:1", AddressClass::Nat64),
            ("64:ff9b::a00:1", AddressClass::Nat64),
            ("64:ff9b:1::1", AddressClass::Nat64),
            ("::127.0.0.2", AddressClass::Ipv4Compatible),
            ("::10.0.0.1", AddressClass::Ipv4Compatible),
            ("::8.8.8.8", AddressClass::Ipv4Compatible),
            ("100::1", AddressClass::Reserved),
            ("4000::1", AddressClass::Reserved),
            ("1::1", AddressClass::Reserved),
        ]);
    }

    #[test]
    fn classify_ipv4_mapped_uses_embedded_class() {
        assert_classes(&[
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:10.0.0.1", AddressClass::Private),
            ("::ffff:169.254.169.254", AddressClass::LinkLocal),
            ("::ffff:0.0.0.0", AddressClass::Unspecified),
            ("::ffff:93.184.216.34", AddressClass::Ipv4Mapped),
        ]);
    }

    #[test]
    fn classify_public_addresses() {
        assert_classes(&[
            ("93.184.216.34", AddressClass::Public),
            ("8.8.8.8", AddressClass::Public),
            ("2606:4700::1111", AddressClass::Public),
            ("2a00:1450:4001::1", AddressClass::Public),
            ("2001:db9::1", AddressClass::Public),
            ("3fff:1000::1", AddressClass::Public),
            ("2001:3::1", AddressClass::Public),
            ("2000::1", AddressClass::Public),
        ]);
    }

    #[test]
    fn policy_default_blocks_non_public() {
        let policy = NetworkPolicy::default();

        assert_eq!(
            policy.check(ip("127.0.0.1")),
            Err(BlockedAddress {
                ip: ip("127.0.0.1"),
                class: AddressClass::Loopback
            })
        );
        assert!(policy.check(ip("169.254.169.254")).is_err());
        assert!(policy.check(ip("::1")).is_err());
        assert!(policy.check(ip("::ffff:93.184.216.34")).is_err());
        assert_eq!(policy.check(ip("93.184.216.34")), Ok(()));
        assert_eq!(policy.check(ip("2606:4700::1111")), Ok(()));
    }

    #[test]
    fn policy_allows_listed_network_only() {
        let policy = allow_localhost();

        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert!(policy.check(ip("127.0.0.2")).is_err());
        assert!(policy.check(ip("::ffff:127.0.0.2")).is_err());
        assert!(policy.check(ip("::1")).is_err());
        assert!(policy.check(ip("::127.0.0.1")).is_err());
        assert!(policy.check(ip("64:ff9b::7f00:1")).is_err());
        assert_eq!(policy.check(ip("93.184.216.34")), Ok(()));
    }

    #[test]
    fn policy_allows_ipv6_network() {
        let policy = NetworkPolicy::new(vec![net("fd00::/64"), net("10.1.0.0/16")]);

        assert_eq!(policy.check(ip("fd00::2")), Ok(()));
        assert!(policy.check(ip("fd00:0:0:1::2")).is_err());
        assert_eq!(policy.check(ip("10.1.2.3")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:10.1.2.3")), Ok(()));
        assert!(policy.check(ip("10.2.0.1")).is_err());
    }

    #[test]
    fn policy_stores_mapped_network_as_ipv4() {
        let policy = NetworkPolicy::new(vec![net("::ffff:127.0.0.1/128"), net("::ffff:0:0/95")]);

        assert_eq!(policy.allowed()[0], net("127.0.0.1/32"));
        assert_eq!(policy.allowed()[1], net("::ffff:0:0/95"));
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert!(policy.check(ip("127.0.0.2")).is_err());
    }

    #[test]
    fn blocked_address_message() {
        let blocked = allow_localhost().check(ip("127.0.0.2")).unwrap_err();
        assert_eq!(
            blocked.to_string(),
            "address 127.0.0.2 is loopback and not in allowed_networks"
        );

        let blocked = NetworkPolicy::default()
            .check(ip("100.64.0.1"))
            .unwrap_err();
        assert_eq!(
            blocked.to_string(),
            "address 100.64.0.1 is in the shared CGNAT range and not in allowed_networks"
        );
    }

    #[test]
    fn url_allowed_loopback_accepted() {
        let url = validate_endpoint_url("http://127.0.0.1:9/", &allow_localhost()).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9/");

        let url = validate_endpoint_url("http://2130706433:9/hook", &allow_localhost()).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9/hook");

        let url = validate_endpoint_url("http://0x7f.1/", &allow_localhost()).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1/");

        let url = validate_endpoint_url("http://[::ffff:127.0.0.1]/", &allow_localhost()).unwrap();
        assert_eq!(url.host(), Some(Host::Ipv6(ip_v6("::ffff:127.0.0.1"))));
    }

    #[test]
    fn url_ip_spellings_blocked() {
        let policy = allow_localhost();
        let cases = [
            ("http://127.0.0.2/", "127.0.0.2"),
            ("http://2130706434/", "127.0.0.2"),
            ("http://0x7f000002/", "127.0.0.2"),
            ("http://0177.0.0.2/", "127.0.0.2"),
            ("http://0x7f.0x00.0x00.0x02/", "127.0.0.2"),
            ("http://127.2/", "127.0.0.2"),
            ("http://127.0.2/", "127.0.0.2"),
            ("http://127.0.0.2./", "127.0.0.2"),
            ("http://%31%32%37.0.0.2/", "127.0.0.2"),
            ("http://\u{ff11}\u{ff12}\u{ff17}.0.0.2/", "127.0.0.2"),
            ("http://[::ffff:127.0.0.2]/", "::ffff:127.0.0.2"),
            ("http://[0:0:0:0:0:ffff:7f00:2]/", "::ffff:127.0.0.2"),
            ("http://[::1]/", "::1"),
            ("http://[::127.0.0.2]/", "::127.0.0.2"),
            ("http://0/", "0.0.0.0"),
        ];

        for (raw, blocked_ip) in cases {
            let result = validate_endpoint_url(raw, &policy);
            match result {
                Err(UrlError::Blocked(blocked)) => {
                    assert_eq!(blocked.ip, ip(blocked_ip), "blocked address of {raw}")
                }
                other => panic!("{raw}: expected UrlError::Blocked, got {other:?}"),
            }
        }
    }

    #[test]
    fn url_default_policy_blocks_internal_hosts() {
        let policy = NetworkPolicy::default();

        let metadata = validate_endpoint_url("http://169.254.169.254/latest/meta-data", &policy);
        assert_eq!(
            metadata.unwrap_err(),
            UrlError::Blocked(BlockedAddress {
                ip: ip("169.254.169.254"),
                class: AddressClass::LinkLocal
            })
        );

        let private = validate_endpoint_url("http://10.0.0.1/", &policy);
        assert_eq!(
            private.unwrap_err(),
            UrlError::Blocked(BlockedAddress {
                ip: ip("10.0.0.1"),
                class: AddressClass::Private
            })
        );

        let loopback = validate_endpoint_url("http://127.0.0.1:9/", &policy);
        assert!(matches!(loopback, Err(UrlError::Blocked(_))));
    }

    /// Every spelling of an internal address in a URL is blocked by the default policy with
    /// the address it normalises to. Nothing here opens a connection.
    #[test]
    fn url_internal_spellings_blocked_by_default() {
        let policy = NetworkPolicy::default();
        let cases = [
            ("http://0x7f.1/", "127.0.0.1", AddressClass::Loopback),
            ("http://2130706433/", "127.0.0.1", AddressClass::Loopback),
            ("http://127.1/", "127.0.0.1", AddressClass::Loopback),
            (
                "http://[::ffff:127.0.0.2]/",
                "::ffff:127.0.0.2",
                AddressClass::Loopback,
            ),
            ("http://[::1]/", "::1", AddressClass::Loopback),
            ("http://0.0.0.0/", "0.0.0.0", AddressClass::Unspecified),
            ("http://[::]/", "::", AddressClass::Unspecified),
            ("http://10.1.2.3/", "10.1.2.3", AddressClass::Private),
            ("http://172.16.0.1/", "172.16.0.1", AddressClass::Private),
            ("http://192.168.0.1/", "192.168.0.1", AddressClass::Private),
            (
                "http://2852039166/",
                "169.254.169.254",
                AddressClass::LinkLocal,
            ),
            (
                "http://0xa9.0xfe.0xa9.0xfe/",
                "169.254.169.254",
                AddressClass::LinkLocal,
            ),
            (
                "http://[::ffff:169.254.169.254]/",
                "::ffff:169.254.169.254",
                AddressClass::LinkLocal,
            ),
            (
                "http://[::ffff:a9fe:a9fe]/",
                "::ffff:169.254.169.254",
                AddressClass::LinkLocal,
            ),
            ("http://[fd00::1]/", "fd00::1", AddressClass::UniqueLocal),
            ("http://[fe80::1]/", "fe80::1", AddressClass::LinkLocal),
        ];

        for (raw, blocked_ip, class) in cases {
            let expected = BlockedAddress {
                ip: ip(blocked_ip),
                class,
            };
            assert_eq!(
                validate_endpoint_url(raw, &policy),
                Err(UrlError::Blocked(expected)),
                "{raw}"
            );
        }
    }

    #[test]
    fn url_ipv6_zone_id_rejected() {
        let result = validate_endpoint_url("http://[fe80::1%25eth0]/", &NetworkPolicy::default());
        assert_eq!(
            result,
            Err(UrlError::Invalid(url::ParseError::InvalidIpv6Address))
        );
    }

    #[test]
    fn url_host_names_accepted() {
        let policy = NetworkPolicy::default();

        let url = validate_endpoint_url("https://Example.COM./hooks?a=1", &policy).unwrap();
        assert_eq!(url.as_str(), "https://example.com./hooks?a=1");

        let url = validate_endpoint_url("https://localhost:8443/hooks", &policy).unwrap();
        assert_eq!(url.host_str(), Some("localhost"));

        let url = validate_endpoint_url("https://[2606:4700::1111]/", &policy).unwrap();
        assert_eq!(url.host_str(), Some("[2606:4700::1111]"));
    }

    #[test]
    fn url_unsupported_schemes_rejected() {
        let policy = NetworkPolicy::default();
        let cases = [
            ("ftp://example.com/", "ftp"),
            ("file:///etc/passwd", "file"),
            ("javascript:alert(1)", "javascript"),
            ("gopher://127.0.0.1:70/", "gopher"),
            ("ws://example.com/", "ws"),
        ];

        for (raw, scheme) in cases {
            assert_eq!(
                validate_endpoint_url(raw, &policy),
                Err(UrlError::UnsupportedScheme(scheme.to_owned())),
                "{raw}"
            );
        }

        let message = validate_endpoint_url("ftp://example.com/", &policy)
            .unwrap_err()
            .to_string();
        assert_eq!(message, "url scheme must be http or https, got ftp");
    }

    #[test]
    fn url_missing_host_rejected() {
        let policy = NetworkPolicy::default();

        for raw in ["http://", "http:///", "https://:443/", "http://?x=1"] {
            assert_eq!(
                validate_endpoint_url(raw, &policy),
                Err(UrlError::MissingHost),
                "{raw}"
            );
        }
    }

    #[test]
    fn url_relative_rejected() {
        let result = validate_endpoint_url("/hooks", &NetworkPolicy::default());
        assert_eq!(
            result,
            Err(UrlError::Invalid(url::ParseError::RelativeUrlWithoutBase))
        );
    }

    #[test]
    fn url_userinfo_rejected() {
        let policy = NetworkPolicy::default();

        for raw in [
            "https://user:pass@example.com/",
            "https://user@example.com/",
            "https://:pass@example.com/",
        ] {
            assert_eq!(
                validate_endpoint_url(raw, &policy),
                Err(UrlError::UserInfo),
                "{raw}"
            );
        }
    }

    #[test]
    fn url_host_hyper_cannot_parse_rejected() {
        let policy = NetworkPolicy::default();

        // The WHATWG rules allow '"' and some other characters in a host name, but the
        // sender's request would fail to build on every attempt.
        for raw in [
            "https://\"ücher.example/p",
            "https://\"example.com/",
            "http://a{b.example/",
            "http://a`b.example/",
        ] {
            let result = validate_endpoint_url(raw, &policy);
            assert!(
                matches!(result, Err(UrlError::NotHttpUri(_))),
                "{raw}: expected NotHttpUri, got {result:?}"
            );
        }
    }

    #[test]
    fn url_port_zero_rejected() {
        let result = validate_endpoint_url("https://example.com:0/", &NetworkPolicy::default());
        assert_eq!(result, Err(UrlError::InvalidPort));
    }

    #[test]
    fn url_length_limit() {
        let policy = NetworkPolicy::default();
        let prefix = "https://example.com/";

        let at_limit = format!(
            "{prefix}{}",
            "a".repeat(MAX_ENDPOINT_URL_LEN - prefix.len())
        );
        assert!(validate_endpoint_url(&at_limit, &policy).is_ok());

        let too_long = format!("{at_limit}a");
        assert_eq!(
            validate_endpoint_url(&too_long, &policy),
            Err(UrlError::TooLong {
                len: MAX_ENDPOINT_URL_LEN + 1,
                max: MAX_ENDPOINT_URL_LEN
            })
        );

        // Each two-byte "é" becomes the six bytes "%C3%A9", so the URL is 1020 bytes before
        // normalisation and 3020 bytes after it.
        let grows = format!("{prefix}{}", "é".repeat(500));
        assert!(grows.len() <= MAX_ENDPOINT_URL_LEN);
        assert_eq!(
            validate_endpoint_url(&grows, &policy),
            Err(UrlError::TooLong {
                len: 3020,
                max: MAX_ENDPOINT_URL_LEN
            })
        );
    }

    #[test]
    fn target_default_ports() {
        let cases = [
            (
                "http://example.com/",
                TargetHost::Name("example.com".into()),
                80,
            ),
            (
                "https://example.com/x",
                TargetHost::Name("example.com".into()),
                443,
            ),
            (
                "https://example.com:8443/",
                TargetHost::Name("example.com".into()),
                8443,
            ),
            ("http://127.0.0.1:9/", TargetHost::Ip(ip("127.0.0.1")), 9),
            ("https://[::1]/", TargetHost::Ip(ip("::1")), 443),
            (
                "http://[::ffff:127.0.0.1]:81/",
                TargetHost::Ip(ip("::ffff:127.0.0.1")),
                81,
            ),
            ("http://0x7f.1/", TargetHost::Name("0x7f.1".into()), 80),
        ];

        for (raw, host, port) in cases {
            let uri: Uri = raw.parse().unwrap();
            assert_eq!(parse_target(&uri).unwrap(), (host, port), "{raw}");
        }
    }

    #[test]
    fn target_invalid_uri_rejected() {
        for raw in ["ftp://example.com/", "/relative/path", "example.com:80"] {
            let uri: Uri = raw.parse().unwrap();
            let result = parse_target(&uri);
            assert!(
                matches!(result, Err(ConnectError::InvalidUri(_))),
                "{raw}: expected InvalidUri, got {result:?}"
            );
        }
    }

    #[test]
    fn filter_skips_blocked_addresses() {
        let allowed_v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let loopback_v6: SocketAddr = "[::1]:80".parse().unwrap();
        let other_v4: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();

        let kept = filter_allowed(
            &allow_localhost(),
            &[loopback_v6, allowed_v4, other_v4, mapped],
        )
        .unwrap();
        assert_eq!(kept, vec![allowed_v4, mapped]);
    }

    #[test]
    fn filter_all_blocked_reports_first() {
        let loopback_v6: SocketAddr = "[::1]:80".parse().unwrap();
        let other_v4: SocketAddr = "127.0.0.2:80".parse().unwrap();

        let result = filter_allowed(&allow_localhost(), &[loopback_v6, other_v4]);
        match result {
            Err(ConnectError::Blocked(blocked)) => {
                assert_eq!(blocked.ip, ip("::1"));
                assert_eq!(blocked.class, AddressClass::Loopback);
            }
            other => panic!("expected ConnectError::Blocked, got {other:?}"),
        }
    }

    /// Checks at compile time that the connector meets the bounds of hyper-util's legacy
    /// client (0.1.21) and of hyper-rustls' `HttpsConnector` (0.27.10).
    #[test]
    fn connector_meets_client_bounds() {
        fn assert_connector<S>()
        where
            S: Service<Uri> + Clone + Send + Sync + 'static,
            S::Response: hyper::rt::Read + hyper::rt::Write + Connection + Send + Unpin + 'static,
            S::Future: Send + Unpin + 'static,
            S::Error: Into<Box<dyn StdError + Send + Sync>>,
        {
        }
        assert_connector::<GuardedConnector>();
    }

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

    /// Binds a listener on 127.0.0.1 with a port chosen by the kernel.
    async fn bind_localhost() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    /// Accepts one connection, reads the request head and sends [`RESPONSE`].
    async fn serve_one(listener: TcpListener) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0_u8; 1024];
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert_ne!(
                read, 0,
                "client closed the connection before the request ended"
            );
            request.extend_from_slice(&buffer[..read]);
        }
        stream.write_all(RESPONSE).await.unwrap();
        stream.shutdown().await.unwrap();
    }

    fn client(policy: NetworkPolicy) -> Client<GuardedConnector, Empty<Bytes>> {
        let connector = GuardedConnector::new(Arc::new(policy));
        Client::builder(TokioExecutor::new()).build(connector)
    }

    fn find_connect_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a ConnectError> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(connect_error) = error.downcast_ref::<ConnectError>() {
                return Some(connect_error);
            }
            current = error.source();
        }
        None
    }

    /// Fails when a connection reaches the listener within a short wait.
    async fn assert_no_connection(listener: &TcpListener) {
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the listener accepted a connection");
    }

    #[tokio::test]
    async fn client_allowed_loopback_succeeds() {
        let (listener, port) = bind_localhost().await;
        let server = tokio::spawn(serve_one(listener));

        let uri: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let response = client(allow_localhost()).get(uri).await.unwrap();
        assert_eq!(response.status(), hyper::StatusCode::OK);

        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from_static(b"ok"));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn client_default_policy_blocks_loopback() {
        let (listener, port) = bind_localhost().await;

        let uri: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let error = client(NetworkPolicy::default()).get(uri).await.unwrap_err();

        match find_connect_error(&error) {
            Some(ConnectError::Blocked(blocked)) => {
                assert_eq!(blocked.ip, ip("127.0.0.1"));
                assert_eq!(blocked.class, AddressClass::Loopback);
            }
            other => panic!("expected ConnectError::Blocked in the error chain, got {other:?}"),
        }
        assert_no_connection(&listener).await;
    }

    #[tokio::test]
    async fn client_localhost_name_connects() {
        let (listener, port) = bind_localhost().await;
        let server = tokio::spawn(serve_one(listener));

        // If localhost resolves to ::1 first, the connector skips it as blocked.
        let uri: Uri = format!("http://localhost:{port}/").parse().unwrap();
        let response = client(allow_localhost()).get(uri).await.unwrap();
        assert_eq!(response.status(), hyper::StatusCode::OK);

        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from_static(b"ok"));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn client_other_loopback_blocked() {
        let (listener, port) = bind_localhost().await;

        // ConnectError::Blocked means that no connection to 127.0.0.2 was attempted.
        let uri: Uri = format!("http://127.0.0.2:{port}/").parse().unwrap();
        let error = client(allow_localhost()).get(uri).await.unwrap_err();

        match find_connect_error(&error) {
            Some(ConnectError::Blocked(blocked)) => assert_eq!(blocked.ip, ip("127.0.0.2")),
            other => panic!("expected ConnectError::Blocked in the error chain, got {other:?}"),
        }
        assert_no_connection(&listener).await;
    }

    #[tokio::test]
    async fn connector_blocks_numeric_host_name() {
        let (listener, port) = bind_localhost().await;
        let mut connector = GuardedConnector::new(Arc::new(NetworkPolicy::default()));

        // glibc's getaddrinfo (checked with 2.36) parses "0x7f.1" as 127.0.0.1 without a DNS
        // query, so the connector sees and blocks 127.0.0.1.
        let uri: Uri = format!("http://0x7f.1:{port}/").parse().unwrap();
        let result = connector.call(uri).await;

        match result {
            Err(ConnectError::Blocked(blocked)) => assert_eq!(blocked.ip, ip("127.0.0.1")),
            Err(other) => panic!("expected ConnectError::Blocked, got {other:?}"),
            Ok(_) => panic!("expected ConnectError::Blocked, got a connection"),
        }
        assert_no_connection(&listener).await;
    }

    #[tokio::test]
    async fn connector_sets_nodelay() {
        let (listener, port) = bind_localhost().await;
        let mut connector = GuardedConnector::new(Arc::new(allow_localhost()));

        let uri: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let io = connector.call(uri).await.unwrap();

        assert!(io.inner().nodelay().unwrap());
        assert_eq!(io.inner().peer_addr().unwrap().port(), port);
        drop(listener);
    }

    #[tokio::test]
    async fn connect_tries_next_address() {
        let (closed, closed_port) = bind_localhost().await;
        drop(closed);
        let (listener, open_port) = bind_localhost().await;

        let addresses: Vec<SocketAddr> = vec![
            SocketAddr::new(ip("127.0.0.1"), closed_port),
            SocketAddr::new(ip("127.0.0.1"), open_port),
        ];
        let stream = connect_first(&addresses).await.unwrap();

        assert_eq!(stream.peer_addr().unwrap().port(), open_port);
        drop(listener);
    }

    #[tokio::test]
    async fn connect_all_refused_returns_last_error() {
        let (closed, closed_port) = bind_localhost().await;
        drop(closed);

        let addresses = [SocketAddr::new(ip("127.0.0.1"), closed_port)];
        let result = connect_first(&addresses).await;

        match result {
            Err(ConnectError::Connect(error)) => {
                assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
                let message = ConnectError::Connect(error).to_string();
                let expected_start = format!("failed to connect: 127.0.0.1:{closed_port}: ");
                assert!(message.starts_with(&expected_start), "{message}");
            }
            other => panic!("expected ConnectError::Connect, got {other:?}"),
        }
    }
}
