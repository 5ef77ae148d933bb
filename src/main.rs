//! The `hookd` command: parses arguments, loads the settings and runs the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookd::config::Config;

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
        Command::Migrate => hookd::store::Store::open(&config.data_dir)
            .map(|store| {
                println!("database {} is up to date", store.path().display());
                store.close();
            })
            .map_err(anyhow::Error::from),
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
        } => verify(&secret, &id, timestamp, &signature, &body),
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
    let schedule: Vec<String> = config
        .retry_schedule
        .iter()
        .map(|d| humantime::format_duration(*d).to_string())
        .collect();
    let networks: Vec<String> = config
        .allowed_networks
        .iter()
        .map(ToString::to_string)
        .collect();
    format!(
        "listen = {}\ndata_dir = {}\nadmin_token = {}\nallowed_networks = [{}]\nretry_schedule = [{}]\nrequest_timeout = {}\nmax_retry_after = {}\nmax_in_flight_per_endpoint = {}\nmax_in_flight = {}\nmax_payload_bytes = {}\nmax_response_bytes = {}",
        config.listen,
        config.data_dir.display(),
        if config.admin_token.is_some() { "(set)" } else { "(generated on first start)" },
        networks.join(", "),
        schedule.join(", "),
        humantime::format_duration(config.request_timeout),
        humantime::format_duration(config.max_retry_after),
        config.max_in_flight_per_endpoint,
        config.max_in_flight,
        config.max_payload_bytes,
        config.max_response_bytes,
    )
}

fn verify(
    secret: &str,
    id: &str,
    timestamp: i64,
    signature: &str,
    body: &std::path::Path,
) -> anyhow::Result<()> {
    use std::io::Read;
    let mut bytes = Vec::new();
    if body.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(body)?;
    }
    if hookd::delivery::signing::verify(secret, id, timestamp, &bytes, signature) {
        println!("signature valid");
        Ok(())
    } else {
        anyhow::bail!("signature invalid for this secret, id, timestamp and body")
    }
}
