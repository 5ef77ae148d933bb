//! Settings: defaults, then the TOML file, then `HOOKD_` environment variables.
//!
//! Every setting is validated once, in [`Config::load`], and an invalid value
//! is reported with its key and an example of a valid value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::source::SourcesConfig;
use crate::store::encryption::EncryptionKey;

/// The validated settings of a running hookd.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the API listens on (`listen`, `HOOKD_LISTEN`).
    pub listen: SocketAddr,
    /// Folder that contains the SQLite database (`data_dir`, `HOOKD_DATA_DIR`);
    /// unused with `database_url`.
    pub data_dir: PathBuf,
    /// Bearer token with full access (`admin_token`, `HOOKD_ADMIN_TOKEN`).
    /// When unset, one is generated on first start and stored hashed.
    pub admin_token: Option<String>,
    /// Networks exempt from the SSRF guard (`allowed_networks`, `HOOKD_ALLOWED_NETWORKS`).
    pub allowed_networks: Vec<IpNet>,
    /// DNS servers that resolve endpoint host names, or none for the system
    /// resolver (`dns_servers`, `HOOKD_DNS_SERVERS`).
    pub dns_servers: Vec<SocketAddr>,
    /// Delay before each retry; its length is the number of retries
    /// (`retry_schedule`, `HOOKD_RETRY_SCHEDULE`).
    pub retry_schedule: Vec<Duration>,
    /// Total deadline of one attempt: connect, headers and body
    /// (`request_timeout`, `HOOKD_REQUEST_TIMEOUT`).
    pub request_timeout: Duration,
    /// Largest delay a `Retry-After` header may ask for (`max_retry_after`, `HOOKD_MAX_RETRY_AFTER`).
    pub max_retry_after: Duration,
    /// Requests in flight to one endpoint at most (`max_in_flight_per_endpoint`).
    /// The adaptive limit of each endpoint moves between the minimum and this.
    pub max_in_flight_per_endpoint: usize,
    /// Lowest adaptive limit of requests in flight to one endpoint (`min_in_flight_per_endpoint`).
    pub min_in_flight_per_endpoint: usize,
    /// Limit of requests in flight that an endpoint starts with, growing
    /// while it responds well (`initial_in_flight_per_endpoint`).
    pub initial_in_flight_per_endpoint: usize,
    /// Consecutive failed attempts that open an endpoint's circuit breaker;
    /// 0 turns the breaker off (`circuit_breaker_failures`).
    pub circuit_breaker_failures: u32,
    /// Requests in flight across all endpoints at most (`max_in_flight`).
    pub max_in_flight: usize,
    /// Largest accepted request body of the API, in bytes (`max_payload_bytes`).
    pub max_payload_bytes: usize,
    /// Bytes of each response body kept with its attempt (`max_response_bytes`).
    pub max_response_bytes: usize,
    /// Accept only https endpoint URLs (`https_only`, `HOOKD_HTTPS_ONLY`).
    pub https_only: bool,
    /// API requests per second that one token may send, with a burst of one
    /// second's worth; 0 turns the limit off (`api_requests_per_second`).
    pub api_requests_per_second: u32,
    /// An endpoint whose attempts have all failed for this long is disabled;
    /// `None` never disables (`disable_endpoint_after`, `HOOKD_DISABLE_ENDPOINT_AFTER`).
    pub disable_endpoint_after: Option<Duration>,
    /// URLs that receive operational webhooks such as `endpoint.disabled`
    /// (`operational_webhook_urls`, `HOOKD_OPERATIONAL_WEBHOOK_URLS`).
    pub operational_webhook_urls: Vec<String>,
    /// Secret that signs operational webhooks, `whsec_…`
    /// (`operational_webhook_secret`, `HOOKD_OPERATIONAL_WEBHOOK_SECRET`).
    pub operational_webhook_secret: Option<String>,
    /// Key that encrypts endpoint secrets in the database; `None` stores them
    /// as plaintext (`encryption_key`, `HOOKD_ENCRYPTION_KEY`).
    pub encryption_key: Option<EncryptionKey>,
    /// How long message payloads and attempt response bodies are kept before
    /// the retention job expunges them; `None` keeps them forever
    /// (`retention_period`, `HOOKD_RETENTION_PERIOD`).
    pub retention_period: Option<Duration>,
    /// Time between two runs of the retention job, which also runs at start
    /// (`retention_interval`, `HOOKD_RETENTION_INTERVAL`).
    pub retention_interval: Duration,
    /// PostgreSQL database shared by the nodes of a cluster, instead of the
    /// SQLite file in `data_dir` (`database_url`, `HOOKD_DATABASE_URL`).
    pub database_url: Option<String>,
    /// Name of this node in a cluster, unique among the nodes (`node_id`,
    /// `HOOKD_NODE_ID`); by default the host name and process id.
    pub node_id: String,
    /// True when `node_id` was not set, so it is this process's default.
    pub node_id_is_default: bool,
    /// How long a node's lease on a partition of endpoints lasts without
    /// renewal (`lease_duration`, `HOOKD_LEASE_DURATION`); at least twice
    /// `request_timeout` plus 5 s, so a lease outlives any attempt.
    pub lease_duration: Duration,
    /// `text` or `json` log lines (`log_format`, `HOOKD_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Kafka topics and NATS streams to consume (`[[sources.kafka]]` and
    /// `[[sources.nats]]`, in the file only).
    pub sources: SourcesConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A setting that failed validation.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    InvalidSource { path: PathBuf, message: String },
    #[error("invalid value {value:?} for {key}: {reason}; example of a valid value: {example}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
        example: &'static str,
    },
}

/// The settings as written in the file; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<String>,
    admin_token: Option<String>,
    allowed_networks: Option<StringOrList>,
    dns_servers: Option<StringOrList>,
    retry_schedule: Option<StringOrList>,
    request_timeout: Option<String>,
    max_retry_after: Option<String>,
    max_in_flight_per_endpoint: Option<usize>,
    min_in_flight_per_endpoint: Option<usize>,
    initial_in_flight_per_endpoint: Option<usize>,
    circuit_breaker_failures: Option<u32>,
    max_in_flight: Option<usize>,
    max_payload_bytes: Option<usize>,
    max_response_bytes: Option<usize>,
    https_only: Option<bool>,
    api_requests_per_second: Option<u32>,
    log_format: Option<String>,
    disable_endpoint_after: Option<String>,
    operational_webhook_urls: Option<StringOrList>,
    operational_webhook_secret: Option<String>,
    encryption_key: Option<String>,
    retention_period: Option<String>,
    retention_interval: Option<String>,
    database_url: Option<String>,
    node_id: Option<String>,
    lease_duration: Option<String>,
    sources: Option<SourcesConfig>,
}

/// A list written either as a TOML array or as one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn joined(self) -> String {
        match self {
            Self::One(value) => value,
            Self::Many(values) => values.join(","),
        }
    }
}

/// Raw values by key, before parsing; the key is the file key, and the
/// source is the name errors report (file key or environment variable).
struct RawValues {
    values: BTreeMap<&'static str, (String, String)>,
}

const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "admin_token",
    "allowed_networks",
    "dns_servers",
    "retry_schedule",
    "request_timeout",
    "max_retry_after",
    "max_in_flight_per_endpoint",
    "min_in_flight_per_endpoint",
    "initial_in_flight_per_endpoint",
    "circuit_breaker_failures",
    "max_in_flight",
    "max_payload_bytes",
    "max_response_bytes",
    "https_only",
    "api_requests_per_second",
    "log_format",
    "disable_endpoint_after",
    "operational_webhook_urls",
    "operational_webhook_secret",
    "encryption_key",
    "retention_period",
    "retention_interval",
    "database_url",
    "node_id",
    "lease_duration",
];

impl RawValues {
    fn get(&self, key: &str) -> Option<(&str, &str)> {
        self.values
            .get(key)
            .map(|(source, value)| (source.as_str(), value.as_str()))
    }
}

impl Config {
    /// Loads the settings from the optional TOML file and the given
    /// environment, which wins over the file.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut raw = RawValues {
            values: BTreeMap::new(),
        };
        let mut sources = SourcesConfig::default();

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                path: path.to_owned(),
                source,
            })?;
            // The path to the failing key matters most in nested tables
            // such as `sources.kafka[0].mapping.application`.
            let parsed: FileConfig = serde_path_to_error::deserialize(toml::Deserializer::new(
                &text,
            ))
            .map_err(|err| ConfigError::ParseFile {
                path: path.to_owned(),
                message: match err.path().to_string().as_str() {
                    "." => err.inner().message().to_owned(),
                    key => format!("{key}: {}", err.inner().message()),
                },
            })?;
            if let Some(parsed_sources) = parsed.sources {
                parsed_sources
                    .validate()
                    .map_err(|message| ConfigError::InvalidSource {
                        path: path.to_owned(),
                        message,
                    })?;
                sources = parsed_sources;
            }
            let mut put = |key: &'static str, value: Option<String>| {
                if let Some(value) = value {
                    raw.values.insert(key, (key.to_owned(), value));
                }
            };
            put("listen", parsed.listen);
            put("data_dir", parsed.data_dir);
            put("admin_token", parsed.admin_token);
            put(
                "allowed_networks",
                parsed.allowed_networks.map(StringOrList::joined),
            );
            put("dns_servers", parsed.dns_servers.map(StringOrList::joined));
            put(
                "retry_schedule",
                parsed.retry_schedule.map(StringOrList::joined),
            );
            put("request_timeout", parsed.request_timeout);
            put("max_retry_after", parsed.max_retry_after);
            put(
                "max_in_flight_per_endpoint",
                parsed.max_in_flight_per_endpoint.map(|v| v.to_string()),
            );
            put("max_in_flight", parsed.max_in_flight.map(|v| v.to_string()));
            put(
                "min_in_flight_per_endpoint",
                parsed.min_in_flight_per_endpoint.map(|v| v.to_string()),
            );
            put(
                "initial_in_flight_per_endpoint",
                parsed.initial_in_flight_per_endpoint.map(|v| v.to_string()),
            );
            put(
                "circuit_breaker_failures",
                parsed.circuit_breaker_failures.map(|v| v.to_string()),
            );
            put(
                "max_payload_bytes",
                parsed.max_payload_bytes.map(|v| v.to_string()),
            );
            put(
                "max_response_bytes",
                parsed.max_response_bytes.map(|v| v.to_string()),
            );
            put("https_only", parsed.https_only.map(|v| v.to_string()));
            put(
                "api_requests_per_second",
                parsed.api_requests_per_second.map(|v| v.to_string()),
            );
            put("log_format", parsed.log_format);
            put("disable_endpoint_after", parsed.disable_endpoint_after);
            put(
                "operational_webhook_urls",
                parsed.operational_webhook_urls.map(StringOrList::joined),
            );
            put(
                "operational_webhook_secret",
                parsed.operational_webhook_secret,
            );
            put("encryption_key", parsed.encryption_key);
            put("retention_period", parsed.retention_period);
            put("retention_interval", parsed.retention_interval);
            put("database_url", parsed.database_url);
            put("node_id", parsed.node_id);
            put("lease_duration", parsed.lease_duration);
        }

        for (name, value) in env {
            let Some(key) = name.strip_prefix("HOOKD_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if let Some(known) = KEYS.iter().find(|k| **k == key) {
                raw.values.insert(known, (name.clone(), value));
            }
        }

        let mut config = Self::from_raw(&raw)?;
        config.sources = sources;
        Ok(config)
    }

    fn from_raw(raw: &RawValues) -> Result<Self, ConfigError> {
        let listen = parse(raw, "listen", "127.0.0.1:8071", "127.0.0.1:8071", |v| {
            v.parse::<SocketAddr>().map_err(|e| e.to_string())
        })?;
        let data_dir = PathBuf::from(raw.get("data_dir").map_or("./hookd-data", |(_, v)| v));
        let admin_token = match raw.get("admin_token") {
            None => None,
            Some((source, value)) => {
                if value.len() < 16 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid(
                        source,
                        "<redacted>",
                        "must be at least 16 characters with no spaces",
                        "a random string such as the output of `openssl rand -hex 24`",
                    ));
                }
                Some(value.to_owned())
            }
        };
        let allowed_networks = parse(
            raw,
            "allowed_networks",
            "",
            "127.0.0.1/32,10.0.0.0/8",
            parse_networks,
        )?;
        let dns_servers = parse(
            raw,
            "dns_servers",
            "",
            "127.0.0.53:53,10.0.0.2",
            parse_dns_servers,
        )?;
        let retry_schedule = parse(
            raw,
            "retry_schedule",
            "30s,90s,270s,810s,2430s",
            "30s,90s,270s,810s,2430s",
            parse_schedule,
        )?;
        let request_timeout = parse(raw, "request_timeout", "10s", "10s", |v| {
            parse_positive_duration(v, Duration::from_secs(3600))
        })?;
        let max_retry_after = parse(raw, "max_retry_after", "1h", "1h", |v| {
            parse_positive_duration(v, Duration::from_secs(7 * 24 * 3600))
        })?;
        let max_in_flight_per_endpoint =
            parse(raw, "max_in_flight_per_endpoint", "128", "128", |v| {
                parse_count(v, 1, 10_000)
            })?;
        let min_in_flight_per_endpoint = parse(raw, "min_in_flight_per_endpoint", "1", "1", |v| {
            parse_count(v, 1, max_in_flight_per_endpoint)
        })?;
        let initial_default = 2usize
            .clamp(min_in_flight_per_endpoint, max_in_flight_per_endpoint)
            .to_string();
        let initial_in_flight_per_endpoint = parse(
            raw,
            "initial_in_flight_per_endpoint",
            &initial_default,
            "2",
            |v| parse_count(v, min_in_flight_per_endpoint, max_in_flight_per_endpoint),
        )?;
        let circuit_breaker_failures = parse(raw, "circuit_breaker_failures", "5", "5", |v| {
            parse_count(v, 0, 1_000_000).map(|n| n as u32)
        })?;
        // A request in flight takes about 35 KB (hyper's connection buffers
        // and dispatch channel, the task, the request), so 2,048 requests to
        // hanging receivers take about 70 MB.
        let max_in_flight = parse(raw, "max_in_flight", "2048", "2048", |v| {
            parse_count(v, 1, 1_000_000)
        })?;
        let max_payload_bytes = parse(raw, "max_payload_bytes", "1048576", "1048576", |v| {
            parse_count(v, 1024, 64 << 20)
        })?;
        let max_response_bytes = parse(raw, "max_response_bytes", "4096", "4096", |v| {
            parse_count(v, 0, 1 << 20)
        })?;
        let https_only = parse(raw, "https_only", "false", "true", |v| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err("must be true or false".to_owned()),
        })?;
        let api_requests_per_second = parse(raw, "api_requests_per_second", "0", "1000", |v| {
            parse_count(v, 0, 1_000_000).map(|n| n as u32)
        })?;
        let disable_endpoint_after =
            parse(
                raw,
                "disable_endpoint_after",
                "3days",
                "3days",
                |v| match v {
                    "never" => Ok(None),
                    _ => parse_positive_duration(v, Duration::from_secs(365 * 24 * 3600)).map(Some),
                },
            )?;
        let retention_period = parse(raw, "retention_period", "30days", "30days", |v| match v {
            "never" => Ok(None),
            _ => parse_positive_duration(v, Duration::from_secs(100 * 365 * 24 * 3600)).map(Some),
        })?;
        let retention_interval = parse(raw, "retention_interval", "1h", "1h", |v| {
            parse_positive_duration(v, Duration::from_secs(7 * 24 * 3600))
        })?;
        let database_url = match raw.get("database_url") {
            None => None,
            Some((_, "")) => None,
            Some((source, value)) => Some(parse_database_url(value).map_err(|reason| {
                invalid(
                    source,
                    &crate::store::redact_url(value),
                    &reason,
                    "postgres://hookd:password@127.0.0.1:5432/hookd",
                )
            })?),
        };
        let node_id = match raw.get("node_id") {
            Some((source, value)) => {
                let valid = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !valid {
                    return Err(invalid(
                        source,
                        value,
                        "must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
                        "hookd-1",
                    ));
                }
                value.to_owned()
            }
            None => default_node_id(),
        };
        let node_id_is_default = raw.get("node_id").is_none();
        let lease_duration = parse(
            raw,
            "lease_duration",
            "",
            "a duration of at least twice request_timeout plus 5s, such as 60s with the default request_timeout",
            |v| {
            let minimum = request_timeout * 2 + Duration::from_secs(5);
            if v.is_empty() {
                return Ok(minimum.max(Duration::from_secs(30)));
            }
            let lease = parse_positive_duration(v, Duration::from_secs(3600))?;
            if lease < minimum {
                return Err(format!(
                    "must be at least twice request_timeout ({}) plus 5s, that is {}, so that a lease outlives every attempt",
                    humantime::format_duration(request_timeout),
                    humantime::format_duration(minimum)
                ));
            }
            Ok(lease)
        },
        )?;
        let operational_webhook_urls = parse(
            raw,
            "operational_webhook_urls",
            "",
            "https://ops.example.com/hookd",
            |v| {
                split_list(v)
                    .map(|entry| match url::Url::parse(entry) {
                        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(url.to_string()),
                        _ => Err(format!("{entry:?} is not an http or https URL")),
                    })
                    .collect::<Result<Vec<_>, _>>()
            },
        )?;
        let operational_webhook_secret = match raw.get("operational_webhook_secret") {
            Some((source, value)) => {
                if let Err(reason) = crate::model::secret::decode(value) {
                    return Err(invalid(
                        source,
                        "<redacted>",
                        &reason,
                        "whsec_ followed by base64 of 32 random bytes",
                    ));
                }
                Some(value.to_owned())
            }
            None if !operational_webhook_urls.is_empty() => {
                return Err(invalid(
                    "operational_webhook_secret",
                    "",
                    "is required when operational_webhook_urls is set",
                    "whsec_ followed by base64 of 32 random bytes",
                ))
            }
            None => None,
        };
        let encryption_key = match raw.get("encryption_key") {
            None => None,
            Some((source, value)) => Some(EncryptionKey::parse(value).map_err(|reason| {
                invalid(
                    source,
                    "<redacted>",
                    &reason,
                    "32 random bytes in base64, such as the output of `openssl rand -base64 32`",
                )
            })?),
        };
        let log_format = parse(raw, "log_format", "text", "json", |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("must be text or json".to_owned()),
        })?;

        Ok(Self {
            listen,
            data_dir,
            admin_token,
            allowed_networks,
            dns_servers,
            retry_schedule,
            request_timeout,
            max_retry_after,
            max_in_flight_per_endpoint,
            min_in_flight_per_endpoint,
            initial_in_flight_per_endpoint,
            circuit_breaker_failures,
            max_in_flight,
            max_payload_bytes,
            max_response_bytes,
            https_only,
            api_requests_per_second,
            log_format,
            disable_endpoint_after,
            operational_webhook_urls,
            operational_webhook_secret,
            encryption_key,
            retention_period,
            retention_interval,
            database_url,
            node_id,
            node_id_is_default,
            lease_duration,
            sources: SourcesConfig::default(),
        })
    }

    /// The database the store opens: PostgreSQL with `database_url`, else
    /// the SQLite file in `data_dir`.
    pub fn database(&self) -> crate::store::Database {
        match &self.database_url {
            Some(url) => crate::store::Database::Postgres { url: url.clone() },
            None => crate::store::Database::Sqlite {
                data_dir: self.data_dir.clone(),
            },
        }
    }

    /// Returns the settings with every default, as `hookd serve` with no
    /// file and no environment would use.
    pub fn defaults() -> Self {
        Self::load(None, std::iter::empty()).expect("the built-in defaults are valid")
    }
}

fn invalid(key: &str, value: &str, reason: &str, example: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
        example,
    }
}

/// Parses the value of `key`, or its default when it is not set.
fn parse<T>(
    raw: &RawValues,
    key: &'static str,
    default: &str,
    example: &'static str,
    parser: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let (source, value) = raw.get(key).unwrap_or((key, default));
    parser(value.trim()).map_err(|reason| invalid(source, value, &reason, example))
}

fn parse_networks(value: &str) -> Result<Vec<IpNet>, String> {
    split_list(value)
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{entry:?} is not a CIDR network"))
        })
        .collect()
}

/// Parses DNS server addresses, each an IP address with an optional port
/// (53 when absent): `10.0.0.2`, `127.0.0.53:53`, `[fd00::53]:5353`.
fn parse_dns_servers(value: &str) -> Result<Vec<SocketAddr>, String> {
    split_list(value)
        .map(|entry| {
            entry
                .parse::<SocketAddr>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    format!("{entry:?} is not an IP address with an optional port; a host name is not accepted")
                })
        })
        .collect()
}

/// Parses a comma-separated list of delays such as `30s,90s,270s`.
pub fn parse_schedule(value: &str) -> Result<Vec<Duration>, String> {
    // An empty value means no retries, but an empty entry inside a list is
    // a typo such as "30s,,90s".
    if !value.trim().is_empty() && value.split(',').any(|entry| entry.trim().is_empty()) {
        return Err("has an empty entry; separate delays with single commas".to_owned());
    }
    let delays = split_list(value)
        .enumerate()
        .map(|(index, entry)| {
            parse_positive_duration(entry, Duration::from_secs(30 * 24 * 3600))
                .map_err(|reason| format!("entry {} ({entry:?}): {reason}", index + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if delays.len() > 50 {
        return Err(format!(
            "at most 50 retries are allowed, got {}",
            delays.len()
        ));
    }
    Ok(delays)
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

/// Checks a PostgreSQL URL: its scheme and that the driver can read it.
fn parse_database_url(value: &str) -> Result<String, String> {
    if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
        return Err(
            "must be a postgres:// or postgresql:// URL; leave it unset to use SQLite in data_dir"
                .to_owned(),
        );
    }
    let parsed = value
        .parse::<postgres::Config>()
        .map_err(|err| format!("is not a valid PostgreSQL URL ({err})"))?;
    // NOTE: hookd connects without TLS; `sslmode=prefer`, the default, then
    // connects in plaintext.
    if parsed.get_ssl_mode() == postgres::config::SslMode::Require {
        return Err(
            "asks for sslmode=require, but hookd cannot connect to PostgreSQL over TLS yet; \
             use sslmode=disable on a trusted network, or a local TLS proxy"
                .to_owned(),
        );
    }
    Ok(value.to_owned())
}

/// Returns the host name and process id, which tell apart the nodes of a
/// cluster in logs and in the lease table.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hookd".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("{host}-{}", std::process::id())
}

/// Parses a duration such as `10s`, `500ms` or `1h`, at least 1 ms and at most `max`.
fn parse_positive_duration(value: &str, max: Duration) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(value).map_err(|err| format!("not a duration ({err})"))?;
    if duration < Duration::from_millis(1) {
        return Err("must be at least 1ms".to_owned());
    }
    if duration > max {
        return Err(format!(
            "must be at most {}",
            humantime::format_duration(max)
        ));
    }
    Ok(duration)
}

fn parse_count(value: &str, min: usize, max: usize) -> Result<usize, String> {
    let count: usize = value.parse().map_err(|_| "not a whole number".to_owned())?;
    if !(min..=max).contains(&count) {
        return Err(format!("must be between {min} and {max}"));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_documentation() {
        let config = Config::defaults();
        assert_eq!(config.listen, "127.0.0.1:8071".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./hookd-data"));
        assert_eq!(config.admin_token, None);
        assert!(config.allowed_networks.is_empty());
        let secs: Vec<u64> = config
            .retry_schedule
            .iter()
            .map(Duration::as_secs)
            .collect();
        assert_eq!(secs, vec![30, 90, 270, 810, 2430]);
        assert_eq!(config.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn limit_defaults_match_documentation() {
        let config = Config::defaults();
        assert_eq!(config.max_payload_bytes, 1 << 20);
        assert!(!config.https_only);
        assert_eq!(config.api_requests_per_second, 0);
    }

    #[test]
    fn limit_settings_read_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookd.toml");
        std::fs::write(&path, "https_only = true\napi_requests_per_second = 250\n").unwrap();
        let config = Config::load(Some(&path), Vec::new()).unwrap();
        assert!(config.https_only);
        assert_eq!(config.api_requests_per_second, 250);
    }

    #[test]
    fn invalid_limit_settings_name_variable() {
        for (key, value) in [
            ("HOOKD_HTTPS_ONLY", "yes"),
            ("HOOKD_HTTPS_ONLY", "1"),
            ("HOOKD_API_REQUESTS_PER_SECOND", "fast"),
            ("HOOKD_API_REQUESTS_PER_SECOND", "-1"),
        ] {
            let err = Config::load(None, env(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookd.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nretry_schedule = [\"1s\", \"2s\"]\nrequest_timeout = \"5s\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            env(&[
                ("HOOKD_LISTEN", "127.0.0.1:9001"),
                ("HOOKD_ALLOWED_NETWORKS", "127.0.0.1/32, 10.1.0.0/16"),
                ("HOOKD_REQUEST_TIMEOUT", "250ms"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(
            config.retry_schedule,
            vec![Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert_eq!(config.request_timeout, Duration::from_millis(250));
        assert_eq!(config.allowed_networks.len(), 2);
    }

    #[test]
    fn invalid_schedule_names_variable_and_entry() {
        let err = Config::load(None, env(&[("HOOKD_RETRY_SCHEDULE", "30s,9x")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HOOKD_RETRY_SCHEDULE"), "{text}");
        assert!(text.contains("entry 2"), "{text}");
        assert!(text.contains("30s,90s,270s,810s,2430s"), "{text}");
    }

    #[test]
    fn invalid_network_is_rejected() {
        let err =
            Config::load(None, env(&[("HOOKD_ALLOWED_NETWORKS", "127.0.0.1/33")])).unwrap_err();
        assert!(err.to_string().contains("HOOKD_ALLOWED_NETWORKS"), "{err}");
    }

    #[test]
    fn unknown_file_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookd.toml");
        std::fs::write(&path, "listne = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(Some(&path), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn short_admin_token_is_rejected_without_echoing_it() {
        let err = Config::load(None, env(&[("HOOKD_ADMIN_TOKEN", "short")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HOOKD_ADMIN_TOKEN"), "{text}");
        assert!(!text.contains("\"short\""), "{text}");
    }

    #[test]
    fn encryption_key_read_from_variable_and_file() {
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let from_env = Config::load(None, env(&[("HOOKD_ENCRYPTION_KEY", key)])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookd.toml");
        std::fs::write(&path, format!("encryption_key = \"{}\"\n", "00".repeat(32))).unwrap();
        let from_file = Config::load(Some(&path), Vec::new()).unwrap();

        assert_eq!(
            from_env.encryption_key,
            Some(EncryptionKey::parse(key).unwrap())
        );
        assert!(from_file.encryption_key.is_some());
        assert_eq!(Config::defaults().encryption_key, None);
    }

    #[test]
    fn short_encryption_key_is_rejected_without_echoing_it() {
        let short = "c2hvcnQta2V5LW9mLTIwLWJ5dGVz";
        let err = Config::load(None, env(&[("HOOKD_ENCRYPTION_KEY", short)])).unwrap_err();
        let text = err.to_string();

        assert!(text.contains("HOOKD_ENCRYPTION_KEY"), "{text}");
        assert!(text.contains("32 bytes"), "{text}");
        assert!(text.contains("openssl rand -base64 32"), "{text}");
        assert!(!text.contains(short), "{text}");
    }

    #[test]
    fn database_url_selects_postgres() {
        let url = "postgres://hookd:secret-pw@127.0.0.1:5432/hookd";
        let config = Config::load(None, env(&[("HOOKD_DATABASE_URL", url)])).unwrap();
        assert_eq!(config.database_url.as_deref(), Some(url));
        assert_eq!(config.database().dialect(), crate::store::Dialect::Postgres);
        assert!(!config.database().describe().contains("secret-pw"));
        assert_eq!(Config::defaults().database_url, None);
        assert_eq!(
            Config::defaults().database().dialect(),
            crate::store::Dialect::Sqlite
        );
    }

    #[test]
    fn database_url_other_scheme_is_rejected() {
        let err = Config::load(
            None,
            env(&[("HOOKD_DATABASE_URL", "mysql://root:pw@127.0.0.1/hookd")]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HOOKD_DATABASE_URL"), "{text}");
        assert!(text.contains("postgres://"), "{text}");
        assert!(!text.contains(":pw@"), "the password is not echoed: {text}");
    }

    #[test]
    fn database_url_requiring_tls_is_rejected() {
        let url = "postgres://hookd:pw@127.0.0.1/hookd?sslmode=require";
        let err = Config::load(None, env(&[("HOOKD_DATABASE_URL", url)])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HOOKD_DATABASE_URL"), "{text}");
        assert!(text.contains("TLS"), "{text}");
        assert!(!text.contains(":pw@"), "the password is not echoed: {text}");
    }

    #[test]
    fn lease_shorter_than_attempts_is_rejected() {
        let err = Config::load(
            None,
            env(&[
                ("HOOKD_REQUEST_TIMEOUT", "10s"),
                ("HOOKD_LEASE_DURATION", "20s"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HOOKD_LEASE_DURATION"), "{text}");
        assert!(text.contains("25s"), "the minimum is named: {text}");
    }

    #[test]
    fn lease_defaults_to_30s_or_twice_timeout() {
        assert_eq!(Config::defaults().lease_duration, Duration::from_secs(30));
        let long = Config::load(None, env(&[("HOOKD_REQUEST_TIMEOUT", "60s")])).unwrap();
        assert_eq!(long.lease_duration, Duration::from_secs(125));
    }

    #[test]
    fn node_id_with_spaces_is_rejected() {
        let err = Config::load(None, env(&[("HOOKD_NODE_ID", "node one")])).unwrap_err();
        assert!(err.to_string().contains("HOOKD_NODE_ID"), "{err}");
        let config = Config::load(None, env(&[("HOOKD_NODE_ID", "hookd-1.eu")])).unwrap();
        assert_eq!(config.node_id, "hookd-1.eu");
    }

    #[test]
    fn empty_schedule_entry_is_rejected() {
        let err = Config::load(None, env(&[("HOOKD_RETRY_SCHEDULE", "30s,,90s")])).unwrap_err();
        assert!(err.to_string().contains("empty entry"), "{err}");
    }

    #[test]
    fn dns_servers_default_port_is_53() {
        let config = Config::load(
            None,
            env(&[(
                "HOOKD_DNS_SERVERS",
                "10.0.0.2, 127.0.0.1:5353,[fd00::53]:5300,::1",
            )]),
        )
        .unwrap();
        let expected: Vec<SocketAddr> = [
            "10.0.0.2:53",
            "127.0.0.1:5353",
            "[fd00::53]:5300",
            "[::1]:53",
        ]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
        assert_eq!(config.dns_servers, expected);
    }

    #[test]
    fn dns_servers_file_array_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookd.toml");
        std::fs::write(&path, "dns_servers = [\"127.0.0.1:5353\"]\n").unwrap();
        let config = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(config.dns_servers, vec!["127.0.0.1:5353".parse().unwrap()]);
    }

    #[test]
    fn dns_servers_default_is_system_resolver() {
        assert!(Config::defaults().dns_servers.is_empty());
    }

    #[test]
    fn dns_server_host_name_rejected() {
        let err =
            Config::load(None, env(&[("HOOKD_DNS_SERVERS", "dns.example.com:53")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HOOKD_DNS_SERVERS"), "{text}");
        assert!(
            text.contains("\"dns.example.com:53\" is not an IP address"),
            "{text}"
        );
        assert!(text.contains("127.0.0.53:53,10.0.0.2"), "{text}");
    }

    #[test]
    fn retention_defaults_match_documentation() {
        let config = Config::defaults();
        assert_eq!(
            config.retention_period,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        assert_eq!(config.retention_interval, Duration::from_secs(3600));
    }

    #[test]
    fn retention_never_keeps_everything() {
        let config = Config::load(None, env(&[("HOOKD_RETENTION_PERIOD", "never")])).unwrap();
        assert_eq!(config.retention_period, None);
    }

    #[test]
    fn retention_settings_read_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookd.toml");
        std::fs::write(
            &path,
            "retention_period = \"90days\"\nretention_interval = \"15m\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(
            config.retention_period,
            Some(Duration::from_secs(90 * 24 * 3600))
        );
        assert_eq!(config.retention_interval, Duration::from_secs(15 * 60));
    }

    #[test]
    fn invalid_retention_names_variable() {
        for (key, value) in [
            ("HOOKD_RETENTION_PERIOD", "30"),
            ("HOOKD_RETENTION_PERIOD", "forever"),
            ("HOOKD_RETENTION_INTERVAL", "never"),
            ("HOOKD_RETENTION_INTERVAL", "0s"),
        ] {
            let err = Config::load(None, env(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn empty_schedule_means_no_retries() {
        let config = Config::load(None, env(&[("HOOKD_RETRY_SCHEDULE", "")])).unwrap();
        assert!(config.retry_schedule.is_empty());
    }
}
