//! The `hookd` command: parses arguments, loads the settings and runs the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookd::config::Config;

/// The memory allocator: jemalloc, which spends less CPU than glibc's under
/// hookd's load (measurements in the crate table of docs/design.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "hookd",
    version,
    about = "Durable, isolated, signed webhook delivery"
)]
struct Cli {
    /// TOML settings file; `HOOKD_` environment variables override it.
    #[arg(long, short, global = true, env = "HOOKD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: API, store and delivery engine.
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Validate the settings and print them, without secrets.
    ConfigCheck,
    /// Check a webhook signature as a receiver would.
    Verify {
        /// The endpoint secret, `whsec_…`.
        #[arg(long)]
        secret: String,
        /// The `webhook-id` header.
        #[arg(long)]
        id: String,
        /// The `webhook-timestamp` header (seconds since the epoch).
        #[arg(long)]
        timestamp: i64,
        /// The `webhook-signature` header.
        #[arg(long)]
        signature: String,
        /// File with the exact request body; `-` reads standard input.
        #[arg(long, default_value = "-")]
        body: PathBuf,
        /// Accept a timestamp more than 5 minutes from now, to check a recorded request.
        #[arg(long)]
        ignore_timestamp: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("hookd: {err}");
            return ExitCode::from(2);
        }
    };
    hookd::telemetry::init(config.log_format);

    let result = match cli.command {
        Command::Serve => serve(config),
        Command::Migrate => {
            let database = config.database();
            hookd::store::migrate(&database)
                .map(|version| {
                    println!(
                        "database {} is up to date (schema version {version})",
                        database.describe()
                    );
                })
                .map_err(anyhow::Error::from)
        }
        Command::ConfigCheck => {
            println!("{}", describe(&config));
            Ok(())
        }
        Command::Verify {
            secret,
            id,
            timestamp,
            signature,
            body,
            ignore_timestamp,
        } => verify(&secret, &id, timestamp, &signature, &body, ignore_timestamp),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let server = hookd::server::Server::bind(config).await?;
        server.run(shutdown_signal()).await
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler only fails outside a Tokio runtime");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested");
}

fn describe(config: &Config) -> String {
    let duration = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let schedule: Vec<String> = config.retry_schedule.iter().map(|d| duration(*d)).collect();
    let networks: Vec<String> = config
        .allowed_networks
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut lines = vec![
        format!("listen = {}", config.listen),
        if config.database_url.is_some() {
            format!(
                "data_dir = {} (unused with database_url)",
                config.data_dir.display()
            )
        } else {
            format!("data_dir = {}", config.data_dir.display())
        },
        format!(
            "database_url = {}",
            config.database_url.as_deref().map_or_else(
                || "(unset: SQLite in data_dir)".to_owned(),
                hookd::store::redact_url
            )
        ),
        if config.node_id_is_default {
            "node_id = (host name and process id of `hookd serve`)".to_owned()
        } else {
            format!("node_id = {}", config.node_id)
        },
        format!("lease_duration = {}", duration(config.lease_duration)),
        format!(
            "admin_token = {}",
            if config.admin_token.is_some() {
                "(set)"
            } else {
                "(generated on first start)"
            }
        ),
        format!("allowed_networks = [{}]", networks.join(", ")),
        if config.dns_servers.is_empty() {
            "dns_servers = [] (system resolver)".to_owned()
        } else {
            let servers: Vec<String> = config.dns_servers.iter().map(ToString::to_string).collect();
            format!("dns_servers = [{}]", servers.join(", "))
        },
        format!("retry_schedule = [{}]", schedule.join(", ")),
        format!("request_timeout = {}", duration(config.request_timeout)),
        format!("max_retry_after = {}", duration(config.max_retry_after)),
        format!(
            "max_in_flight_per_endpoint = {}",
            config.max_in_flight_per_endpoint
        ),
        format!(
            "min_in_flight_per_endpoint = {}",
            config.min_in_flight_per_endpoint
        ),
        format!(
            "initial_in_flight_per_endpoint = {}",
            config.initial_in_flight_per_endpoint
        ),
        format!("max_in_flight = {}", config.max_in_flight),
        format!(
            "circuit_breaker_failures = {}",
            config.circuit_breaker_failures
        ),
        format!(
            "disable_endpoint_after = {}",
            config
                .disable_endpoint_after
                .map_or("never".to_owned(), duration)
        ),
        format!(
            "retention_period = {}",
            config.retention_period.map_or("never".to_owned(), duration)
        ),
        format!(
            "retention_interval = {}",
            duration(config.retention_interval)
        ),
        format!("max_payload_bytes = {}", config.max_payload_bytes),
        format!("max_response_bytes = {}", config.max_response_bytes),
        format!("https_only = {}", config.https_only),
        format!(
            "api_requests_per_second = {}",
            match config.api_requests_per_second {
                0 => "0 (no limit)".to_owned(),
                n => n.to_string(),
            }
        ),
        format!(
            "operational_webhook_urls = [{}]",
            config.operational_webhook_urls.join(", ")
        ),
        format!(
            "operational_webhook_secret = {}",
            if config.operational_webhook_secret.is_some() {
                "(set)"
            } else {
                "(not set)"
            }
        ),
        format!(
            "encryption_key = {}",
            if config.encryption_key.is_some() {
                "(set)"
            } else {
                "(not set: endpoint secrets are stored as plaintext)"
            }
        ),
        format!("log_format = {:?}", config.log_format).to_lowercase(),
    ];
    // Source properties may hold passwords, so only their keys are shown.
    for (index, source) in config.sources.kafka.iter().enumerate() {
        let properties: Vec<&str> = source.properties.keys().map(String::as_str).collect();
        lines.push(format!(
            "source {} = kafka, brokers {}, topics [{}], group {}, properties set: [{}]",
            source.name(index),
            source.brokers,
            source.topics.join(", "),
            source.group_id,
            properties.join(", ")
        ));
    }
    for (index, source) in config.sources.nats.iter().enumerate() {
        lines.push(format!(
            "source {} = nats, stream {}, consumer {}",
            source.name(index),
            source.stream,
            source.consumer
        ));
    }
    lines.join("\n")
}

/// Largest difference between a signature's timestamp and now that `verify`
/// accepts, as the Standard Webhooks reference libraries do (5 minutes).
const VERIFY_TOLERANCE_SECONDS: i64 = 5 * 60;

fn verify(
    secret: &str,
    id: &str,
    timestamp: i64,
    signature: &str,
    body: &std::path::Path,
    ignore_timestamp: bool,
) -> anyhow::Result<()> {
    use std::io::Read;
    let mut bytes = Vec::new();
    if body.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(body)?;
    }
    if let Err(reason) = hookd::model::secret::decode(secret) {
        anyhow::bail!("invalid secret: {reason}");
    }
    if !hookd::delivery::signing::verify(secret, id, timestamp, &bytes, signature) {
        anyhow::bail!("signature invalid for this secret, id, timestamp and body");
    }
    let age = chrono::Utc::now().timestamp() - timestamp;
    if age.abs() > VERIFY_TOLERANCE_SECONDS && !ignore_timestamp {
        anyhow::bail!(
            "signature matches, but the timestamp is {age} s from now, more than the {VERIFY_TOLERANCE_SECONDS} s receivers accept; pass --ignore-timestamp to check an old request"
        );
    }
    println!("signature valid");
    Ok(())
}
