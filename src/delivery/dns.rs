//! Host name resolution for deliveries: the operating system's resolver, or the DNS servers
//! listed in the `dns_servers` setting.
//!
//! The resolver only turns a name into socket addresses and does not decide whether hookd may
//! connect to them. [`super::ssrf::GuardedConnector`] checks each returned address right before
//! it connects to that address. So neither a cached answer nor an answer that changes between
//! two lookups (DNS rebinding) can lead to a blocked address.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// Resolver of the host names in endpoint URLs. Cloning it is cheap.
#[derive(Clone)]
pub enum HostResolver {
    /// The operating system's resolver (`getaddrinfo` through [`tokio::net::lookup_host`]),
    /// which follows `/etc/nsswitch.conf`, `/etc/hosts` and `/etc/resolv.conf`.
    System,
    /// hickory-resolver querying the configured DNS servers over UDP, and over TCP for answers
    /// too long for UDP. It also reads `/etc/hosts`, and caches answers for their TTL.
    Servers {
        resolver: Arc<TokioResolver>,
        servers: Arc<[SocketAddr]>,
    },
}

impl HostResolver {
    /// Creates the system resolver when `servers` is empty, and otherwise a resolver that
    /// queries these servers.
    pub fn new(servers: &[SocketAddr]) -> Self {
        if servers.is_empty() {
            return Self::System;
        }

        let name_servers = servers
            .iter()
            .map(|server| {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                NameServerConfig::new(server.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
        let resolver =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(ResolverOpts::default())
                .build()
                .expect("hickory-resolver 0.26 fails to build only when it sets up DNS over TLS, which hookd does not enable");

        Self::Servers {
            resolver: Arc::new(resolver),
            servers: servers.into(),
        }
    }

    /// Resolves `name` to socket addresses with `port`, in the resolver's order.
    ///
    /// An empty answer is an error of kind [`io::ErrorKind::NotFound`]. Every error message
    /// starts with the name, because the resolvers' own messages do not contain it.
    pub async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let addresses: Vec<SocketAddr> = match self {
            Self::System => tokio::net::lookup_host((name, port))
                .await
                .map_err(|error| io::Error::new(error.kind(), format!("{name}: {error}")))?
                .collect(),
            Self::Servers { resolver, .. } => resolver
                .lookup_ip(name)
                .await
                .map_err(|error| io::Error::other(format!("{name}: {error}")))?
                .iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
        };

        if addresses.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name}: no addresses found"),
            ));
        }
        Ok(addresses)
    }
}

impl fmt::Debug for HostResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("HostResolver::System"),
            Self::Servers { servers, .. } => f
                .debug_struct("HostResolver::Servers")
                .field("servers", servers)
                .finish(),
        }
    }
}
