//! A running hookd: store, delivery engine and API, started together and
//! stopped together when the shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, auth::hash_token, AppState};
use crate::config::Config;
use crate::delivery::{Engine, EngineSettings};
use crate::store::{settings, Store};

const ADMIN_TOKEN_HASH_KEY: &str = "admin_token_sha256";

/// Resolves the admin token's hash. A configured token wins over the stored
/// hash. With neither, a new token is generated, stored hashed and printed
/// once on standard output.
async fn admin_token_hash(store: &Store, configured: Option<&str>) -> anyhow::Result<[u8; 32]> {
    if let Some(token) = configured {
        return Ok(hash_token(token));
    }
    let stored = store
        .read(|conn| settings::get(conn, ADMIN_TOKEN_HASH_KEY))
        .await?;
    if let Some(hex) = stored {
        let bytes = decode_hex(&hex).context("the stored admin token hash is invalid")?;
        return Ok(bytes);
    }
    let mut raw = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = format!("hk_{}", encode_hex(&raw));
    let hash = hash_token(&token);
    let hex = encode_hex(&hash);
    // Another node of a cluster may store its own token first; then that
    // one is the admin token, and this one is neither kept nor shown.
    let stored = store
        .write(move |conn| {
            if settings::put_if_absent(conn, ADMIN_TOKEN_HASH_KEY, &hex)? {
                return Ok(None);
            }
            settings::get(conn, ADMIN_TOKEN_HASH_KEY)
        })
        .await?;
    if let Some(hex) = stored {
        return decode_hex(&hex).context("the stored admin token hash is invalid");
    }
    println!("Generated admin token (shown only this once; set HOOKD_ADMIN_TOKEN to choose your own): {token}");
    Ok(hash)
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

/// A server bound to its address and ready to run.
pub struct Server {
    listener: TcpListener,
    config: Config,
    store: Store,
}

impl Server {
    /// Opens the store and binds the listen address.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let database = config.database();
        let store = Store::open_database(&database, config.encryption_key.as_ref())
            .with_context(|| format!("cannot open the store at {}", database.describe()))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        Ok(Self {
            listener,
            config,
            store,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting requests,
    /// lets attempts in flight finish (up to the request timeout) and closes the store.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            config,
            store,
        } = self;
        let database_name = config.database().describe();
        // Install the metrics recorder before anything records.
        crate::telemetry::metrics_handle();
        let token_hash = admin_token_hash(&store, config.admin_token.as_deref()).await?;

        let urls = config.operational_webhook_urls.clone();
        let secret = config
            .operational_webhook_secret
            .clone()
            .unwrap_or_default();
        let now = crate::model::now_ms();
        let operational_app_id = store
            .write(move |conn| crate::store::operational::sync(conn, &urls, &secret, now))
            .await
            .context("cannot set up the operational webhook endpoints")?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let engine_stop = wait_for(stop_rx.clone());
        let drain = config.request_timeout + Duration::from_secs(1);
        let mut engine_settings = EngineSettings::from_config(&config);
        engine_settings.operational_app_id = operational_app_id.clone();
        // On PostgreSQL the node shares the endpoints with the other nodes.
        let cluster_parts = config
            .database_url
            .clone()
            .map(|url| (url, crate::cluster::link(config.request_timeout)));
        engine_settings.cluster = cluster_parts.as_ref().map(|(_, (link, _))| link.clone());
        let leader = engine_settings
            .cluster
            .as_ref()
            .map(|link| link.ownership.clone());
        let (engine, engine_task) =
            Engine::start(store.clone(), engine_settings, engine_stop, drain);
        let cluster = match cluster_parts {
            Some((database_url, (link, inbox))) => Some(
                crate::cluster::Cluster::start(
                    crate::cluster::NodeSettings {
                        database_url,
                        node_id: config.node_id.clone(),
                        lease_duration: config.lease_duration,
                        request_timeout: config.request_timeout,
                    },
                    link,
                    inbox,
                    engine.clone(),
                )
                .context("cannot join the cluster")?,
            ),
            None => None,
        };
        let is_leader: crate::recovery::Leader = Arc::new(move || {
            leader
                .as_ref()
                .is_none_or(|ownership| ownership.is_leader())
        });

        let ingest = crate::source::Ingest {
            store: store.clone(),
            engine: engine.clone(),
            max_payload_bytes: config.max_payload_bytes,
        };
        let (sources, source_tasks) =
            crate::source::start(&config.sources, ingest, stop_rx.clone());
        let (recovery, recovery_task) = crate::recovery::Recovery::start(
            store.clone(),
            engine.clone(),
            is_leader.clone(),
            stop_rx.clone(),
        );
        let retention_task = config.retention_period.map(|period| {
            crate::retention::start(
                store.clone(),
                period,
                config.retention_interval,
                is_leader.clone(),
                stop_rx.clone(),
            )
        });

        let state = AppState::new(
            &config,
            store.clone(),
            engine,
            sources,
            token_hash,
            operational_app_id,
            recovery,
        );
        let app = api::router(state);
        tracing::info!(listen = %listener.local_addr()?, database = %database_name, node_id = %config.node_id, "hookd started");

        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(wait_for(stop_rx))
            .await
            .context("the HTTP server failed")?;

        // Sources stop before the store closes: each acknowledges what it stored.
        for task in source_tasks {
            let _ = task.await;
        }
        // The task runner and the retention job stop between two store jobs.
        let _ = recovery_task.await;
        if let Some(task) = retention_task {
            let _ = task.await;
        }
        let _ = engine_task.await;
        // After the engine: attempts in flight have ended, so other nodes
        // may take the partitions at once.
        if let Some(cluster) = cluster {
            tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .ok();
        }
        store.close();
        tracing::info!("hookd stopped");
        Ok(())
    }
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
