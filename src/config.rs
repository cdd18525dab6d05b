//! Runtime configuration: what `serve` needs, built from the command line and environment
//! (see `cli::serve`), plus the signing secret and where it came from.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use engine::auth::SigningSecret;
use engine::{DatabaseConfig, EngineConfig};

/// Default data directory of the embedded journal (and the dev signing secret).
pub const DEFAULT_DATA_DIR: &str = ".openagents-runtime";
/// File name of the generated dev signing secret inside the data directory.
pub const DEV_SECRET_FILE: &str = "internal-signature.secret";
/// Environment variable holding the shared signing secret.
pub const SECRET_ENV: &str = "OA_RUNTIME_SIGNATURE_SECRET";

/// Everything a running runtime needs.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Address of the main HTTP listener (internal API and ops endpoints).
    pub listen: SocketAddr,
    /// Where the embedded journal and the dev secret live.
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    /// A hot standby of the PostgreSQL journal that Khala's stream reads and HTTP hydration
    /// read instead of the primary (`--read-database-url`); `None`: they read the primary.
    pub read_database: Option<ReadDatabaseConfig>,
    /// Shared secret of `X-OA-RUNTIME-SIGNATURE` tokens.
    pub signature_secret: SigningSecret,
    pub http: HttpConfig,
    pub workers: WorkerConfig,
    pub engine: EngineConfig,
    /// How long shutdown waits for in-flight requests, streams and tasks before giving up.
    pub shutdown_grace: Duration,
}

/// A read replica: a PostgreSQL hot standby streaming from the journal's primary
/// (docs/adr/0125-read-replicas.md). Only reads that tolerate a lagging snapshot go there —
/// Khala's replay and live tail, and hydration — each under the gap-safe rules of that ADR.
#[derive(Clone, Debug)]
pub struct ReadDatabaseConfig {
    /// `postgres://…` of the standby.
    pub url: String,
    /// Connections of the replica pool.
    pub max_connections: u32,
}

impl ReadDatabaseConfig {
    /// The replica for `serve`, if a URL is given: refused with the embedded journal, which has
    /// no replicas.
    ///
    /// # Errors
    /// A URL with the embedded journal, or one that is not `postgres://`.
    pub fn from_parts(
        url: Option<&str>,
        journal: &DatabaseConfig,
        max_connections: u32,
    ) -> anyhow::Result<Option<Self>> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        if !matches!(journal, DatabaseConfig::Postgres { .. }) {
            anyhow::bail!(
                "--read-database-url / READ_DATABASE_URL needs a PostgreSQL journal \
                 (--database-url): the embedded journal has no replicas"
            );
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            anyhow::bail!("--read-database-url must be a postgres:// URL");
        }
        Ok(Some(Self {
            url: url.to_owned(),
            max_connections: max_connections.max(1),
        }))
    }

    /// The URL without its password, for logs.
    pub fn describe(&self) -> String {
        DatabaseConfig::Postgres {
            url: self.url.clone(),
            max_connections: self.max_connections,
        }
        .describe()
    }
}

/// HTTP API tunables.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes (`413` beyond it).
    pub body_limit_bytes: usize,
    /// Largest run or worker `metadata` object, in bytes of its JSON (`400 metadata_too_large`).
    pub metadata_limit_bytes: usize,
    /// How long an `Idempotency-Key` record is kept (a retry after that runs again).
    pub idempotency_ttl: Duration,
    /// How long an SSE stream stays open waiting for events when `tail_ms` is not given.
    pub stream_tail_default: Duration,
    /// Largest `tail_ms` accepted.
    pub stream_tail_max: Duration,
    /// How many events back an SSE stream may be resumed; older cursors get `410 stale_cursor`.
    /// `None`: the whole history (the journal is never pruned).
    pub stream_replay_window: Option<u64>,
}

/// Worker lease tunables.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Lease given to a worker that does not ask for one.
    pub default_lease_ttl_ms: u64,
    /// How often the lease sweeper looks for expired leases (at most; it also wakes when due).
    pub sweep_interval: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            metadata_limit_bytes: 16 * 1024,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            stream_tail_default: Duration::from_secs(30),
            stream_tail_max: Duration::from_secs(15 * 60),
            stream_replay_window: None,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            default_lease_ttl_ms: aggregates::worker::DEFAULT_LEASE_TTL_MS,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

impl RuntimeConfig {
    /// A configuration for tests and embedding: the given database and secret, defaults
    /// elsewhere, listening on `127.0.0.1:0`.
    pub fn new(database: DatabaseConfig, data_dir: PathBuf, secret: SigningSecret) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            database,
            read_database: None,
            signature_secret: secret,
            http: HttpConfig::default(),
            workers: WorkerConfig::default(),
            engine: EngineConfig::default(),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Where the signing secret came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `--signature-secret` / `OA_RUNTIME_SIGNATURE_SECRET`.
    Configured,
    /// The dev secret file in the data directory; `created` if this call generated it.
    DevFile { path: PathBuf, created: bool },
}

/// Resolves the signing secret: the configured one if given; otherwise, for the embedded journal
/// only, the dev secret in `data_dir` (generated once, mode 0600).
///
/// # Errors
/// When no secret is configured for a PostgreSQL deployment, the secret is too short, or the dev
/// secret file cannot be read or written.
pub fn resolve_secret(
    configured: Option<&str>,
    data_dir: &Path,
    embedded: bool,
) -> anyhow::Result<(SigningSecret, SecretSource)> {
    if let Some(secret) = configured.filter(|s| !s.is_empty()) {
        let secret = SigningSecret::new(secret.as_bytes().to_vec())
            .context("--signature-secret / OA_RUNTIME_SIGNATURE_SECRET")?;
        return Ok((secret, SecretSource::Configured));
    }
    if !embedded {
        anyhow::bail!(
            "no signing secret: set --signature-secret or {SECRET_ENV} (the generated dev secret \
             is only used with the embedded journal)"
        );
    }
    let path = data_dir.join(DEV_SECRET_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes)
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            let secret = SigningSecret::new(text.trim().as_bytes().to_vec())
                .with_context(|| format!("secret in {}", path.display()))?;
            Ok((
                secret,
                SecretSource::DevFile {
                    path,
                    created: false,
                },
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("create data directory {}", data_dir.display()))?;
            let secret = SigningSecret::generate();
            write_private(&path, secret.expose())
                .with_context(|| format!("write {}", path.display()))?;
            Ok((
                secret,
                SecretSource::DevFile {
                    path,
                    created: true,
                },
            ))
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Creates `path` readable by its owner only and writes `bytes` (fails if it already exists, so
/// two processes starting at once cannot overwrite each other's secret).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_secret_is_generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, source) = resolve_secret(None, dir.path(), true).unwrap();
        let SecretSource::DevFile { path, created } = source else {
            panic!("expected the dev file")
        };
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (second, source) = resolve_secret(None, dir.path(), true).unwrap();
        assert!(matches!(
            source,
            SecretSource::DevFile { created: false, .. }
        ));
        assert_eq!(first.expose(), second.expose());
    }

    #[test]
    fn a_read_replica_needs_a_postgres_journal() {
        let dir = tempfile::tempdir().unwrap();
        let embedded = DatabaseConfig::from_parts(None, dir.path(), 4);
        let postgres = DatabaseConfig::from_parts(Some("postgres://p@h/db"), dir.path(), 4);
        let replica = "postgres://p@standby:5433/db";
        let error = ReadDatabaseConfig::from_parts(Some(replica), &embedded, 4).unwrap_err();
        assert!(error.to_string().contains("embedded journal"), "{error}");
        assert!(ReadDatabaseConfig::from_parts(Some("mysql://x"), &postgres, 4).is_err());
        assert!(ReadDatabaseConfig::from_parts(None, &embedded, 4)
            .unwrap()
            .is_none());
        assert!(ReadDatabaseConfig::from_parts(Some(" "), &postgres, 4)
            .unwrap()
            .is_none());
        let config = ReadDatabaseConfig::from_parts(Some(replica), &postgres, 0)
            .unwrap()
            .unwrap();
        assert_eq!((config.url.as_str(), config.max_connections), (replica, 1));
    }

    #[test]
    fn postgres_deployments_must_configure_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        assert!(resolve_secret(None, dir.path(), false).is_err());
        assert!(resolve_secret(Some("short"), dir.path(), false).is_err());
        let (_, source) =
            resolve_secret(Some("a-long-enough-shared-secret"), dir.path(), false).unwrap();
        assert_eq!(source, SecretSource::Configured);
        assert!(!dir.path().join(DEV_SECRET_FILE).exists());
    }
}
