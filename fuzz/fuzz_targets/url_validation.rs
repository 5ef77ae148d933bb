//! Fuzzes `validate_endpoint_url`, the check an endpoint URL passes when an
//! API client sets it, under the default policy and one that allows loopback.
//!
//! For every accepted URL it asserts what the delivery path relies on. The
//! URL has an http or https scheme, a host, no user info, a non-zero port and
//! a length within the limit. An IP literal host is one the policy allows, and
//! hyper parses the URL to the same scheme, host and port. The target only
//! parses: it resolves no name and opens no connection.

#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use hookd::delivery::ssrf::{
    classify, validate_endpoint_url, AddressClass, NetworkPolicy, MAX_ENDPOINT_URL_LEN,
};
use libfuzzer_sys::fuzz_target;
use url::{Host, Url};

static DEFAULT_POLICY: LazyLock<NetworkPolicy> = LazyLock::new(NetworkPolicy::default);

static LOOPBACK_POLICY: LazyLock<NetworkPolicy> = LazyLock::new(|| {
    NetworkPolicy::new(vec![
        "127.0.0.0/8".parse().expect("a valid network"),
        "::1/128".parse().expect("a valid network"),
    ])
});

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };

    let by_default = validate_endpoint_url(raw, &DEFAULT_POLICY);
    let with_loopback = validate_endpoint_url(raw, &LOOPBACK_POLICY);

    if let Ok(url) = &by_default {
        check_accepted(url, &DEFAULT_POLICY);
        // Allowing more networks never rejects a URL the default accepts.
        assert_eq!(with_loopback.as_ref(), Ok(url), "{raw:?}");
    }
    if let Ok(url) = &with_loopback {
        check_accepted(url, &LOOPBACK_POLICY);
    }
});

fn check_accepted(url: &Url, policy: &NetworkPolicy) {
    assert!(matches!(url.scheme(), "http" | "https"), "{url}");
    assert!(url.username().is_empty(), "{url}");
    assert!(url.password().is_none(), "{url}");
    assert_ne!(url.port(), Some(0), "{url}");
    assert!(url.as_str().len() <= MAX_ENDPOINT_URL_LEN, "{url}");

    match url.host() {
        None => panic!("accepted a URL without a host: {url}"),
        Some(Host::Domain(name)) => {
            // The WHATWG parser turns every IPv4 spelling into Host::Ipv4, so a
            // name that still parses as an address would skip the check below.
            assert!(name.parse::<IpAddr>().is_err(), "{url}");
        }
        Some(Host::Ipv4(ip)) => assert_allowed(IpAddr::V4(ip), policy, url),
        Some(Host::Ipv6(ip)) => assert_allowed(IpAddr::V6(ip), policy, url),
    }

    // The sender builds its request from the stored string with hyper, and
    // the connector connects to hyper's host and port.
    let uri: http::Uri = url
        .as_str()
        .parse()
        .unwrap_or_else(|err| panic!("hyper rejects the accepted URL {url}: {err}"));
    assert_eq!(uri.scheme_str(), Some(url.scheme()), "{url}");
    let uri_host = uri
        .host()
        .expect("a URL with a host gives a URI with a host");
    assert_eq!(Some(uri_host), url.host_str(), "{url}");
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let uri_port = uri.port_u16().unwrap_or(default_port);
    assert_eq!(Some(uri_port), url.port_or_known_default(), "{url}");

    // Validation is idempotent: the stored URL passes again, unchanged.
    assert_eq!(
        validate_endpoint_url(url.as_str(), policy).as_ref(),
        Ok(url)
    );
}

/// Asserts that an accepted IP literal is public or inside an allowed
/// network, computed here from `classify` and the networks, and that
/// `NetworkPolicy::check` agrees.
fn assert_allowed(ip: IpAddr, policy: &NetworkPolicy, url: &Url) {
    let matched = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    let allowed = classify(ip) == AddressClass::Public
        || policy.allowed().iter().any(|net| net.contains(&matched));
    assert!(allowed, "accepted blocked address {ip} in {url}");
    assert!(policy.check(ip).is_ok(), "{url}");
}
