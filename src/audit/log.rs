//! The audit log in `serve`: the audit key (generated in the data directory on the embedded
//! journal, required configuration on PostgreSQL), the `audit-tree` task that extends the Merkle
//! tree off the write path and takes checkpoints every N events or T seconds, and the routes of
//! [`super::log_http`]. The tree itself lives in `engine::audit_log`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use engine::audit_log::checkpoint::AUDIT_KEY_FILE;
use engine::audit_log::store::{run_tree_maintainer, MaintainerConfig};
use engine::audit_log::{AuditKey, AuditStore};

use crate::app::App;
use crate::server::Server;

/// The audit key: signs checkpoints (`serve`, `audit export`, `audit checkpoint`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuditKeyArgs {
    /// File holding the audit key (32-byte secp256k1 secret key as hex) that signs checkpoints.
    /// Required with PostgreSQL; with the embedded journal one is generated once in --data-dir.
    #[arg(long, env = "OA_AUDIT_KEY_FILE", value_name = "FILE")]
    pub audit_key_file: Option<PathBuf>,
    /// The audit key as hex (prefer the file).
    #[arg(long, env = "OA_AUDIT_KEY", hide_env_values = true, value_name = "HEX")]
    pub audit_key: Option<String>,
}

/// The audit key and checkpoint cadence (`serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct AuditLogArgs {
    #[command(flatten)]
    pub key: AuditKeyArgs,
    /// Take a checkpoint after this many new events…
    #[arg(long, env = "OA_AUDIT_CHECKPOINT_EVENTS", default_value_t = 10_000)]
    pub checkpoint_every_events: u64,
    /// …or this many milliseconds after the latest one, when the journal grew.
    #[arg(long, env = "OA_AUDIT_CHECKPOINT_MS", default_value_t = 10_000)]
    pub checkpoint_every_ms: u64,
}

impl Default for AuditLogArgs {
    fn default() -> Self {
        Self {
            key: AuditKeyArgs::default(),
            checkpoint_every_events: 10_000,
            checkpoint_every_ms: 10_000,
        }
    }
}

/// Where the audit key came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditKeySource {
    Configured,
    /// Generated in (or read from) the data directory; `created` when generated now.
    DevFile {
        path: PathBuf,
        created: bool,
    },
}

impl AuditKeyArgs {
    /// The configured key, or for the embedded journal the one in `data_dir` (generated once).
    ///
    /// # Errors
    /// When no key is configured for PostgreSQL, or the key is unusable.
    pub fn key(
        &self,
        data_dir: &Path,
        embedded: bool,
    ) -> anyhow::Result<(AuditKey, AuditKeySource)> {
        if let Some(hex) = self.audit_key.as_deref().filter(|s| !s.trim().is_empty()) {
            let key = AuditKey::from_hex(hex).map_err(|e| anyhow::anyhow!("--audit-key: {e}"))?;
            return Ok((key, AuditKeySource::Configured));
        }
        if let Some(path) = &self.audit_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read the audit key file {}", path.display()))?;
            let key = AuditKey::from_hex(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok((key, AuditKeySource::Configured));
        }
        if !embedded {
            bail!(
                "no audit key: set --audit-key-file or OA_AUDIT_KEY_FILE (a generated key is only \
                 used with the embedded journal; with PostgreSQL the key must live outside the database)"
            );
        }
        let path = data_dir.join(AUDIT_KEY_FILE);
        let (key, created) = AuditKey::load_or_generate(&path).map_err(|e| anyhow::anyhow!(e))?;
        Ok((key, AuditKeySource::DevFile { path, created }))
    }

    /// The configured key, or the one already in `data_dir`; `None` when neither exists (nothing
    /// is generated: for tools that read a journal another process serves).
    ///
    /// # Errors
    /// When a configured or stored key is unusable.
    pub fn existing(&self, data_dir: &Path) -> anyhow::Result<Option<AuditKey>> {
        if self
            .audit_key
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty())
            || self.audit_key_file.is_some()
        {
            return Ok(Some(self.key(data_dir, false)?.0));
        }
        let path = data_dir.join(AUDIT_KEY_FILE);
        if path.exists() {
            return Ok(Some(self.key(data_dir, true)?.0));
        }
        Ok(None)
    }
}

impl AuditLogArgs {
    /// See [`AuditKeyArgs::key`].
    ///
    /// # Errors
    /// As [`AuditKeyArgs::key`].
    pub fn key(
        &self,
        data_dir: &Path,
        embedded: bool,
    ) -> anyhow::Result<(AuditKey, AuditKeySource)> {
        self.key.key(data_dir, embedded)
    }

    pub fn maintainer_config(&self) -> MaintainerConfig {
        MaintainerConfig {
            checkpoint_every_events: self.checkpoint_every_events.max(1),
            checkpoint_every: Duration::from_millis(self.checkpoint_every_ms.max(10)),
            ..MaintainerConfig::default()
        }
    }
}

/// Mounts the audit routes and adds the `audit-tree` task (tree maintainer and checkpointer).
pub fn with_audit_log(
    server: Server,
    app: &App,
    key: AuditKey,
    config: MaintainerConfig,
) -> Server {
    let store = AuditStore::new(app.database());
    let router = super::log_http::router(super::log_http::AuditLogState {
        store: store.clone(),
        engine: app.engine().clone(),
        public_key: key.public_key_hex(),
    });
    let appended = app.notifier().appended();
    server
        .merge_internal(router)
        .task("audit-tree", move |shutdown| {
            run_tree_maintainer(store, key, config, appended, shutdown)
        })
}

/// Prints the audit public key at start (what verifiers and witnesses pass as --trusted-key).
pub fn announce(public_key: &str, source: &AuditKeySource) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let from = match source {
        AuditKeySource::Configured => "configured".to_owned(),
        AuditKeySource::DevFile { path, created } => format!(
            "{}, {}",
            path.display(),
            if *created {
                "generated now"
            } else {
                "existing"
            }
        ),
    };
    let _ = writeln!(out, "audit public key: {public_key} ({from}); checkpoints at GET /internal/v1/audit/checkpoints/latest");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_needs_a_configured_audit_key_and_the_embedded_journal_generates_one() {
        let dir = tempfile::tempdir().unwrap();
        let none = AuditKeyArgs::default();
        let error = none.key(dir.path(), false).unwrap_err().to_string();
        assert!(error.contains("OA_AUDIT_KEY_FILE"), "{error}");
        assert!(none.existing(dir.path()).unwrap().is_none());
        let (generated, source) = none.key(dir.path(), true).unwrap();
        assert!(matches!(
            source,
            AuditKeySource::DevFile { created: true, .. }
        ));
        let (again, _) = none.key(dir.path(), true).unwrap();
        assert_eq!(generated.public_key_hex(), again.public_key_hex());
        assert_eq!(
            none.existing(dir.path()).unwrap().unwrap().public_key_hex(),
            generated.public_key_hex()
        );
        let configured = AuditKeyArgs {
            audit_key: Some("11".repeat(32)),
            audit_key_file: None,
        };
        assert!(matches!(
            configured.key(dir.path(), false).unwrap().1,
            AuditKeySource::Configured
        ));
        let bad = AuditKeyArgs {
            audit_key: Some("zz".into()),
            audit_key_file: None,
        };
        assert!(bad.key(dir.path(), false).is_err());
    }
}
