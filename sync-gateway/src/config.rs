//! Gateway configuration: known topics and their policies, protocol timers, limits, fan-out
//! tuning, and the `clap` flags/env vars that build it (flattened into `serve` by the root).

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{AuthConfig, KeySet, DEFAULT_AUDIENCE, DEFAULT_ISSUER};

/// A topic the gateway serves and its policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPolicy {
    pub topic: String,
    /// How long the projectors keep stream rows (informational here: the retention floor the
    /// gateway enforces comes from the store).
    pub retention: Duration,
    /// A cursor further than this many rows behind the head is stale (`replay_budget_exceeded`).
    pub replay_budget: u64,
}

impl TopicPolicy {
    pub fn new(topic: &str, retention: Duration, replay_budget: u64) -> Self {
        Self {
            topic: topic.to_owned(),
            retention,
            replay_budget,
        }
    }

    /// The original's defaults, plus `runtime.payments`.
    pub fn defaults() -> Vec<TopicPolicy> {
        const H: u64 = 3600;
        vec![
            TopicPolicy::new(
                "runtime.run_summaries",
                Duration::from_secs(7 * 24 * H),
                20_000,
            ),
            TopicPolicy::new(
                "runtime.codex_worker_summaries",
                Duration::from_secs(3 * 24 * H),
                10_000,
            ),
            TopicPolicy::new(
                "runtime.codex_worker_events",
                Duration::from_secs(24 * H),
                3_000,
            ),
            TopicPolicy::new("runtime.notifications", Duration::from_secs(12 * H), 500),
            // Not in the original (it had no payments topic): a payment's whole life is short,
            // its document small.
            TopicPolicy::new("runtime.payments", Duration::from_secs(7 * 24 * H), 10_000),
        ]
    }

    /// Parses `topic=retention:budget`, retention as `<n>d|h|m|s`.
    ///
    /// # Errors
    /// A message naming the malformed part.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (topic, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("topic policy {text:?} must look like topic=7d:20000"))?;
        let (retention, budget) = rest
            .split_once(':')
            .ok_or_else(|| format!("topic policy {text:?} must look like topic=7d:20000"))?;
        let budget: u64 = budget
            .trim()
            .parse()
            .map_err(|_| format!("replay budget in {text:?} must be a number"))?;
        Ok(Self::new(topic.trim(), parse_duration(retention)?, budget))
    }
}

/// `<n>d|h|m|s|ms`.
///
/// # Errors
/// A message for anything else.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} must look like 7d, 12h, 30m, 15s or 500ms"))?;
    Ok(match unit {
        "d" => Duration::from_secs(n * 86_400),
        "h" => Duration::from_secs(n * 3600),
        "m" => Duration::from_secs(n * 60),
        "s" | "" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        _ => return Err(format!("duration {text:?}: unknown unit {unit:?}")),
    })
}

/// Everything the gateway needs besides the source, the verifier and the revocation list.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub topics: Vec<TopicPolicy>,
    /// Server `sync:heartbeat` pushes (15 s).
    pub heartbeat_interval: Duration,
    /// A joined channel with no subscribe/unsubscribe/`sync:heartbeat` for this long is closed (60 s).
    pub channel_idle_timeout: Duration,
    /// A socket with no frame at all (not even a Phoenix heartbeat, which clients send every
    /// 30 s) for this long is closed (90 s).
    pub socket_idle_timeout: Duration,
    /// Larger documents are sent as pointers with `hydration_required: true` (256 KiB).
    pub max_update_bytes: usize,
    /// Upper bound of one `sync:update_batch` frame (2 MiB).
    pub max_batch_bytes: usize,
    /// Largest frame a client may send (64 KiB); larger ones get `payload_too_large` and a close.
    pub max_inbound_frame_bytes: usize,
    /// Concurrent sockets per node.
    pub max_connections: usize,
    /// Topics one subscription may hold.
    pub max_topics_per_subscription: usize,
    /// Subscribe token bucket: burst and refill per second.
    pub subscribe_burst: u32,
    pub subscribe_per_second: f64,
    /// Replay batch size when the client does not ask (200) and the most it may ask for.
    pub default_replay_batch_size: usize,
    pub max_replay_batch_size: usize,
    /// Outbound frames queued per socket before the session stops pulling.
    pub queue_limit: usize,
    /// Outbound bytes queued per socket before the session stops pulling (4 MiB); a queue held
    /// at either limit past the grace is a slow consumer.
    pub queue_limit_bytes: usize,
    /// How long the queue may stay full before a `slow_consumer` strike.
    pub slow_consumer_grace: Duration,
    /// Strikes before `slow_consumer` `disconnect`.
    pub slow_consumer_max_strikes: u32,
    /// `reconnect_after_ms` told to a disconnected slow consumer.
    pub slow_consumer_reconnect_after: Duration,
    /// Tailers re-read the source at least this often even without a notification.
    pub tailer_poll_interval: Duration,
    /// Rows a tailer reads per source call.
    pub tailer_read_batch: usize,
    /// Rows of recent history each topic keeps in memory (all owners).
    pub window_rows: usize,
    /// Bytes of update JSON each topic's window holds at most (older rows go first; a cursor
    /// before the window reads the source).
    pub window_bytes: usize,
    /// Rows of recent history kept per (topic, principal) feed.
    pub feed_rows: usize,
    /// Bytes of update JSON each feed holds at most.
    pub feed_bytes: usize,
    /// Refuse upgrades that do not announce `protocol_version=khala.ws.v1` and a supported
    /// `schema_version`.
    pub require_client_compat: bool,
    /// Revocation list reload interval.
    pub revocation_poll_interval: Duration,
    /// How long a hydration page waits for a read replica to replay the watermark it names
    /// (a first page served by the primary or by a node on another replica) before it answers
    /// `503 replica_behind`.
    pub replica_wait: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            topics: TopicPolicy::defaults(),
            heartbeat_interval: Duration::from_secs(15),
            channel_idle_timeout: Duration::from_secs(60),
            socket_idle_timeout: Duration::from_secs(90),
            max_update_bytes: 256 * 1024,
            max_batch_bytes: 2 * 1024 * 1024,
            max_inbound_frame_bytes: 64 * 1024,
            max_connections: 10_000,
            max_topics_per_subscription: 16,
            subscribe_burst: 20,
            subscribe_per_second: 2.0,
            default_replay_batch_size: 200,
            max_replay_batch_size: 2_000,
            queue_limit: 32,
            queue_limit_bytes: 4 * 1024 * 1024,
            slow_consumer_grace: Duration::from_secs(5),
            slow_consumer_max_strikes: 3,
            slow_consumer_reconnect_after: Duration::from_secs(2),
            tailer_poll_interval: Duration::from_secs(1),
            tailer_read_batch: 1_000,
            window_rows: 8_192,
            window_bytes: 8 * 1024 * 1024,
            feed_rows: 4_096,
            feed_bytes: 2 * 1024 * 1024,
            require_client_compat: false,
            revocation_poll_interval: Duration::from_secs(2),
            replica_wait: Duration::from_secs(5),
        }
    }
}

impl GatewayConfig {
    pub fn topic_names(&self) -> Vec<String> {
        self.topics.iter().map(|t| t.topic.clone()).collect()
    }

    pub fn policy(&self, topic: &str) -> Option<&TopicPolicy> {
        self.topics.iter().find(|t| t.topic == topic)
    }
}

/// Sync-token key and claim flags (shared by `serve` and `token mint`; each also an env var).
#[derive(Clone, Debug, clap::Args)]
pub struct AuthArgs {
    /// Active HS256 sync-token key as `kid=secret` (`base64:` prefix for binary secrets).
    /// Tokens are minted with it. Use the env var in production: command lines leak.
    #[arg(long = "sync-jwt-key", env = "OA_SYNC_JWT_KEY", hide_env_values = true)]
    pub jwt_key: Option<String>,
    /// Older HS256 keys still accepted, comma-separated `kid=secret`.
    #[arg(
        long = "sync-jwt-previous-keys",
        env = "OA_SYNC_JWT_PREVIOUS_KEYS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub jwt_previous_keys: Vec<String>,
    /// EdDSA/RS256 verification keys, comma-separated `kid=/path/to/public.pem`.
    #[arg(
        long = "sync-jwt-public-keys",
        env = "OA_SYNC_JWT_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    pub jwt_public_keys: Vec<String>,
    /// An EdDSA/RS256 private key to mint with, `kid=/path/to/private.pem`.
    #[arg(long = "sync-jwt-signing-pem", env = "OA_SYNC_JWT_SIGNING_PEM")]
    pub jwt_signing_pem: Option<String>,
    /// Required `iss` of sync tokens.
    #[arg(long = "sync-jwt-issuer", env = "OA_SYNC_JWT_ISSUER", default_value = DEFAULT_ISSUER)]
    pub jwt_issuer: String,
    /// Required `aud` of sync tokens.
    #[arg(long = "sync-jwt-audience", env = "OA_SYNC_JWT_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub jwt_audience: String,
    /// Clock-skew leeway for exp/nbf/iat, e.g. 30s.
    #[arg(long = "sync-jwt-leeway", env = "OA_SYNC_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,
    /// Tokens older than this (by iat) are refused, e.g. 1h.
    #[arg(long = "sync-jwt-max-age", env = "OA_SYNC_JWT_MAX_AGE", default_value = "1h", value_parser = parse_duration)]
    pub jwt_max_age: Duration,
}

/// Reads a PEM named by `kid=path`.
fn read_pem(entry: &str) -> Result<(String, Vec<u8>), anyhow::Error> {
    let (kid, path) = crate::auth::keys::split_entry(entry)?;
    let pem = std::fs::read(PathBuf::from(&path))
        .map_err(|e| anyhow::anyhow!("cannot read key file {path} for kid {kid}: {e}"))?;
    Ok((kid, pem))
}

impl AuthArgs {
    /// The auth configuration these flags describe.
    ///
    /// # Errors
    /// Malformed key entries or unreadable key files.
    pub fn auth_config(&self) -> anyhow::Result<AuthConfig> {
        let mut keys = KeySet::new();
        if let Some(active) = &self.jwt_key {
            let (kid, secret) = crate::auth::keys::split_entry(active)?;
            keys = keys.with_active_hs256(&kid, &secret)?;
        }
        for entry in self
            .jwt_previous_keys
            .iter()
            .filter(|e| !e.trim().is_empty())
        {
            let (kid, secret) = crate::auth::keys::split_entry(entry)?;
            keys = keys.with_hs256(&kid, &secret)?;
        }
        for entry in self.jwt_public_keys.iter().filter(|e| !e.trim().is_empty()) {
            let (kid, pem) = read_pem(entry)?;
            keys = keys.with_public_pem(&kid, &pem)?;
        }
        if let Some(entry) = &self.jwt_signing_pem {
            let (kid, pem) = read_pem(entry)?;
            keys = keys.with_signing_pem(&kid, &pem)?;
        }
        let mut config = AuthConfig::new(keys);
        config.issuer.clone_from(&self.jwt_issuer);
        config.audience.clone_from(&self.jwt_audience);
        config.leeway = self.jwt_leeway;
        config.max_token_age = self.jwt_max_age;
        Ok(config)
    }
}

/// Khala flags for `serve` (each also an env var).
#[derive(Clone, Debug, clap::Args)]
#[group(id = "KhalaArgs")]
pub struct GatewayArgs {
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Topic policies `topic=retention:replay_budget`, comma-separated; replaces the defaults.
    #[arg(long = "sync-topic-policies", env = "OA_SYNC_TOPIC_POLICIES", value_delimiter = ',', value_parser = TopicPolicy::parse)]
    pub topic_policies: Vec<TopicPolicy>,
    /// Concurrent WebSockets per node.
    #[arg(
        long = "sync-max-connections",
        env = "OA_SYNC_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_connections: usize,
    /// Topics per subscription.
    #[arg(
        long = "sync-max-topics",
        env = "OA_SYNC_MAX_TOPICS",
        default_value_t = 16
    )]
    pub max_topics: usize,
    /// Subscribes per second per socket (token bucket refill).
    #[arg(
        long = "sync-subscribe-rate",
        env = "OA_SYNC_SUBSCRIBE_RATE",
        default_value_t = 2.0
    )]
    pub subscribe_rate: f64,
    /// Subscribe burst per socket.
    #[arg(
        long = "sync-subscribe-burst",
        env = "OA_SYNC_SUBSCRIBE_BURST",
        default_value_t = 20
    )]
    pub subscribe_burst: u32,
    /// Per-update size limit in bytes; larger docs go out as pointers.
    #[arg(long = "sync-max-update-bytes", env = "OA_SYNC_MAX_UPDATE_BYTES", default_value_t = 256 * 1024)]
    pub max_update_bytes: usize,
    /// Per-batch size limit in bytes.
    #[arg(long = "sync-max-batch-bytes", env = "OA_SYNC_MAX_BATCH_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_batch_bytes: usize,
    /// Outbound frames queued per socket.
    #[arg(
        long = "sync-queue-limit",
        env = "OA_SYNC_QUEUE_LIMIT",
        default_value_t = 32
    )]
    pub queue_limit: usize,
    /// Outbound bytes queued per socket before the gateway stops pulling for it.
    #[arg(
        long = "sync-queue-limit-bytes",
        env = "OA_SYNC_QUEUE_LIMIT_BYTES",
        default_value_t = 4 * 1024 * 1024
    )]
    pub queue_limit_bytes: usize,
    /// Fallback poll of each topic's tailer when no stream-head notice arrives (in-process, or
    /// from a peer through the PostgreSQL relay), e.g. 1s.
    #[arg(long = "sync-tailer-poll", env = "OA_SYNC_TAILER_POLL", default_value = "1s", value_parser = parse_duration)]
    pub tailer_poll: Duration,
    /// Refuse clients without protocol_version=khala.ws.v1 / a supported schema_version.
    #[arg(
        long = "sync-require-client-compat",
        env = "OA_SYNC_REQUIRE_CLIENT_COMPAT"
    )]
    pub require_client_compat: bool,
    /// With --read-database-url: how long a hydration page naming a watermark the replica has
    /// not replayed yet waits for it before answering 503 replica_behind, e.g. 5s.
    #[arg(long = "sync-replica-wait", env = "OA_SYNC_REPLICA_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub replica_wait: Duration,
}

impl GatewayArgs {
    /// The auth configuration these flags describe.
    ///
    /// # Errors
    /// Malformed key entries or unreadable key files.
    pub fn auth_config(&self) -> anyhow::Result<AuthConfig> {
        self.auth.auth_config()
    }

    /// The gateway configuration these flags describe (timers and tuning at their defaults).
    pub fn gateway_config(&self) -> GatewayConfig {
        let mut config = GatewayConfig::default();
        if !self.topic_policies.is_empty() {
            config.topics.clone_from(&self.topic_policies);
        }
        config.max_connections = self.max_connections;
        config.max_topics_per_subscription = self.max_topics;
        config.subscribe_per_second = self.subscribe_rate;
        config.subscribe_burst = self.subscribe_burst;
        config.max_update_bytes = self.max_update_bytes;
        config.max_batch_bytes = self.max_batch_bytes;
        config.queue_limit = self.queue_limit;
        config.queue_limit_bytes = self.queue_limit_bytes;
        config.tailer_poll_interval = self.tailer_poll.max(Duration::from_millis(10));
        config.require_client_compat = self.require_client_compat;
        config.replica_wait = self.replica_wait;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_topic_policies_and_durations() {
        assert_eq!(
            TopicPolicy::parse("runtime.payments=2d:700").unwrap(),
            TopicPolicy::new("runtime.payments", Duration::from_secs(172_800), 700)
        );
        assert!(TopicPolicy::parse("x=7d").is_err());
        assert!(TopicPolicy::parse("x=7w:1").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
    }

    #[test]
    fn defaults_are_the_originals() {
        let config = GatewayConfig::default();
        let budgets: Vec<(String, u64)> = config
            .topics
            .iter()
            .map(|t| (t.topic.clone(), t.replay_budget))
            .collect();
        assert_eq!(
            budgets,
            [
                ("runtime.run_summaries".to_owned(), 20_000),
                ("runtime.codex_worker_summaries".to_owned(), 10_000),
                ("runtime.codex_worker_events".to_owned(), 3_000),
                ("runtime.notifications".to_owned(), 500),
                ("runtime.payments".to_owned(), 10_000),
            ]
        );
        assert_eq!(config.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(config.channel_idle_timeout, Duration::from_secs(60));
    }
}
