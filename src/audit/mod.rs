//! Audit: verifiable bundles of the journal and the HTTP routes for one run's artifacts.
//!
//! `openagents-runtime audit export (--run-id ID | --worker-id ID | --since T --until T | --all)
//! -o BUNDLE` writes a self-contained bundle (format in [`bundle`]); `audit verify BUNDLE`
//! recomputes every hash, link, receipt, replay and signature in it and names each problem.
//!
//! # Layout
//! - [`bundle`]: the bundle format and export scopes.
//! - [`source`]: reading the journal's rows in commit order for an export.
//! - [`export`](mod@export): writing a bundle (streaming).
//! - [`verify`]: checking a bundle (against a trusted checkpoint, or `--integrity-only`).
//! - [`witness`]: `audit witness`, following a runtime's checkpoints.
//! - [`artifacts_http`]: `GET /internal/v1/runs/{run_id}/receipt | replay | audit-bundle` (owner
//!   only), a router that knows nothing of the server; [`http`]: [`with_artifacts`], which mounts
//!   them on a [`crate::Server`] with the receipt recorder.
//! - [`log`]: the audit log in `serve` (audit key, tree maintainer and checkpointer task);
//!   [`log_http`]: its routes (checkpoints, inclusion and consistency proofs).

pub mod artifacts_http;
pub mod bundle;
pub mod export;
pub mod http;
pub mod log;
pub mod log_http;
pub mod source;
pub mod verify;
pub mod witness;

use std::path::PathBuf;

use aggregates::ids::{RunId, WorkerId};
use aggregates::Timestamp;
use anyhow::{bail, Context};
use engine::artifacts::ReceiptSigner;
use engine::{Database, DatabaseConfig};

pub use artifacts_http::{router, ArtifactState};
pub use bundle::Scope;
pub use export::{export, Cut, ExportOptions, ExportSummary};
pub use http::with_artifacts;
pub use verify::{verify_bundle, Finding, FindingKind, VerifyOptions, VerifyReport};

/// The runtime version written into bundles.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `openagents-runtime audit …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Write an audit bundle of part or all of the journal.
    Export(ExportArgs),
    /// Check an audit bundle and name everything wrong with it.
    Verify(VerifyArgs),
    /// Print a signed checkpoint of the journal's audit tree (the latest, one of a given size, or
    /// one taken now with --take).
    Checkpoint(CheckpointArgs),
    /// Follow a runtime's checkpoints and prove each one extends the last one seen; exit non-zero
    /// with both heads and the failing proof the moment one does not.
    Witness(witness::WitnessArgs),
}

/// The key that signs receipts and bundle manifests (BIP-340 Schnorr, secp256k1).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SigningArgs {
    /// File holding the 32-byte secret key as hex.
    #[arg(long, env = "OA_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// The 32-byte secret key as hex (prefer the file or the environment).
    #[arg(
        long,
        env = "OA_SIGNING_KEY",
        hide_env_values = true,
        value_name = "HEX"
    )]
    pub signing_key: Option<String>,
}

impl SigningArgs {
    /// The configured signer, if any.
    ///
    /// # Errors
    /// When the file cannot be read or the key is malformed.
    pub fn signer(&self) -> anyhow::Result<Option<ReceiptSigner>> {
        let secret = match (&self.signing_key, &self.signing_key_file) {
            (Some(secret), _) => secret.clone(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(
            ReceiptSigner::from_secret_hex(&secret)
                .map_err(|e| anyhow::anyhow!("signing key: {e}"))?,
        ))
    }
}

/// `audit export`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["run_id", "worker_id", "since", "all"])))]
pub struct ExportArgs {
    /// One run: its events and its recorded receipt.
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// One worker's events.
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,
    /// Events recorded at or after this instant (RFC 3339); needs --until.
    #[arg(long, value_name = "T", requires = "until")]
    pub since: Option<Timestamp>,
    /// Events recorded before this instant (RFC 3339).
    #[arg(long, value_name = "T", requires = "since")]
    pub until: Option<Timestamp>,
    /// The whole journal.
    #[arg(long)]
    pub all: bool,
    /// Where to write the bundle (`-` for standard output).
    #[arg(short = 'o', long = "output", value_name = "BUNDLE")]
    pub output: PathBuf,
    /// PostgreSQL URL of the journal; without it, the embedded journal in --data-dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Data directory of the embedded journal.
    #[arg(long, env = "OA_DATA_DIR", default_value = ".openagents-runtime")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub signing: SigningArgs,
    /// Do not recompute stored hashes while exporting (faster; `audit verify` still checks them).
    #[arg(long)]
    pub no_verify: bool,
    /// The audit key: the export catches the tree up and cuts the bundle at a checkpoint signed
    /// now. Without one (configured, or in --data-dir) the bundle is cut at the latest stored
    /// checkpoint.
    #[command(flatten)]
    pub audit_key: log::AuditKeyArgs,
    /// Also carry the consistency proof from this tree size (an older checkpoint's) to the
    /// bundle's checkpoint, for `audit verify --checkpoint`.
    #[arg(long, value_name = "TREE_SIZE")]
    pub consistency_from: Option<u64>,
    /// No checkpoint and no proofs: a bundle that only agrees with itself.
    #[arg(long, conflicts_with = "consistency_from")]
    pub integrity_only: bool,
}

impl ExportArgs {
    /// The scope the flags select.
    ///
    /// # Errors
    /// When an id is malformed or the time range is empty.
    pub fn scope(&self) -> anyhow::Result<Scope> {
        Ok(
            match (
                &self.run_id,
                &self.worker_id,
                self.since,
                self.until,
                self.all,
            ) {
                (Some(id), ..) => Scope::Run(RunId::parse(id.as_str())?),
                (None, Some(id), ..) => Scope::Worker(WorkerId::parse(id.as_str())?),
                (None, None, Some(since), Some(until), _) => {
                    if until <= since {
                        bail!("--until must be after --since");
                    }
                    Scope::TimeRange { since, until }
                }
                (None, None, None, None, true) => Scope::All,
                _ => bail!("choose one of --run-id, --worker-id, --since/--until, --all"),
            },
        )
    }
}

/// `audit verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The bundle file (`-` for standard input).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// An audit public key (x-only hex, as `serve` prints it) whose checkpoints are trusted;
    /// repeatable. Without a trusted key the bundle does not verify.
    #[arg(long = "trusted-key", value_name = "PUBKEY")]
    pub trusted_keys: Vec<String>,
    /// A file of trusted audit public keys, one per line.
    #[arg(long, env = "OA_AUDIT_TRUSTED_KEYS_FILE", value_name = "FILE")]
    pub trusted_key_file: Option<PathBuf>,
    /// A checkpoint held from earlier (JSON, as `audit checkpoint` or the checkpoint routes give
    /// it): also prove that the bundle's journal extends it (append-only since then).
    #[arg(long, value_name = "OLD.json")]
    pub checkpoint: Option<PathBuf>,
    /// Only check that the bundle agrees with itself (hashes, links, receipts, replays): proves
    /// nothing about where it came from.
    #[arg(long, conflicts_with_all = ["checkpoint", "trusted_keys", "trusted_key_file"])]
    pub integrity_only: bool,
    /// Require the manifest to be signed by this x-only public key (hex).
    #[arg(long, value_name = "PUBKEY")]
    pub expect_signer: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl VerifyArgs {
    /// The verification options these flags describe.
    ///
    /// # Errors
    /// When a key or checkpoint file cannot be read.
    pub fn options(&self) -> anyhow::Result<VerifyOptions> {
        let mut trusted_keys = self.trusted_keys.clone();
        if let Some(path) = &self.trusted_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            trusted_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        let old_checkpoint = match &self.checkpoint {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read {}", path.display()))?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                let checkpoint = engine::audit_log::Checkpoint::from_json(&value)
                    .with_context(|| format!("{}", path.display()))?;
                checkpoint
                    .verify(&trusted_keys)
                    .with_context(|| format!("the checkpoint in {}", path.display()))?;
                Some(checkpoint)
            }
            None => None,
        };
        Ok(VerifyOptions {
            expected_signer: self.expect_signer.clone(),
            trusted_keys,
            integrity_only: self.integrity_only,
            old_checkpoint,
        })
    }
}

/// `audit checkpoint`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckpointArgs {
    /// PostgreSQL URL of the journal; without it, the embedded journal in --data-dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Data directory of the embedded journal.
    #[arg(long, env = "OA_DATA_DIR", default_value = ".openagents-runtime")]
    pub data_dir: PathBuf,
    /// The stored checkpoint of exactly this tree size.
    #[arg(long, value_name = "N", conflicts_with = "take")]
    pub tree_size: Option<u64>,
    /// Catch the tree up with the journal and sign a checkpoint now (needs the audit key).
    #[arg(long)]
    pub take: bool,
    #[command(flatten)]
    pub audit_key: log::AuditKeyArgs,
}

/// Runs an `audit` subcommand.
///
/// # Errors
/// When the journal or files cannot be used, or (verify) the bundle has problems.
pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Export(args) => run_export(args).await,
        AuditCommand::Verify(args) => run_verify(args).await,
        AuditCommand::Checkpoint(args) => run_checkpoint(args).await,
        AuditCommand::Witness(args) => witness::run(args).await,
    }
}

async fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    let scope = args.scope()?;
    let signer = args.signing.signer()?;
    let config = DatabaseConfig::from_parts(args.database_url.as_deref(), &args.data_dir, 4);
    let database = Database::connect(&config)
        .await
        .with_context(|| format!("open {}", config.describe()))?;
    let options = ExportOptions {
        scope,
        signer,
        runtime_version: RUNTIME_VERSION.to_owned(),
        exported_at: Timestamp::from_datetime(chrono::Utc::now()),
        progress: true,
        verify_stored: !args.no_verify,
        cut: if args.integrity_only {
            Cut::IntegrityOnly
        } else {
            match args.audit_key.existing(&args.data_dir)? {
                Some(key) => Cut::Fresh(key),
                None => Cut::Latest,
            }
        },
        consistency_from: args.consistency_from,
    };
    let summary = if args.output.as_os_str() == "-" {
        export(
            &database,
            &options,
            tokio::io::BufWriter::new(tokio::io::stdout()),
        )
        .await?
    } else {
        let file = tokio::fs::File::create(&args.output)
            .await
            .with_context(|| format!("create {}", args.output.display()))?;
        export(
            &database,
            &options,
            tokio::io::BufWriter::with_capacity(1 << 20, file),
        )
        .await?
    };
    database.close().await;
    eprintln!(
        "exported {} events of {} aggregates, {} runs with receipts and replays ({} bytes), bundle {}",
        summary.events, summary.aggregates, summary.runs, summary.bytes, summary.bundle_sha256
    );
    if summary.stored_hash_mismatches > 0 {
        eprintln!(
            "WARNING: {} stored events do not match their stored hashes; run `audit verify` on the bundle for details",
            summary.stored_hash_mismatches
        );
    }
    Ok(())
}

async fn run_verify(args: VerifyArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let path = args.bundle.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<VerifyReport> {
        if path.as_os_str() == "-" {
            Ok(verify_bundle(std::io::stdin().lock(), &options)?)
        } else {
            let file =
                std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
            Ok(verify_bundle(
                std::io::BufReader::with_capacity(1 << 20, file),
                &options,
            )?)
        }
    })
    .await??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for finding in &report.findings {
            println!("{:<22} {finding}", format!("{:?}", finding.kind));
        }
        println!(
            "{} events of {} aggregates ({} redacted), {} receipts, {} replays checked{}",
            report.events,
            report.aggregates,
            report.events_redacted,
            report.receipts_checked,
            report.replays_checked,
            report
                .signed_by
                .as_ref()
                .map(|k| format!(", manifest signed by {k}"))
                .unwrap_or_default()
        );
        if let Some(cp) = &report.checkpoint {
            println!(
                "{} events proven in checkpoint {} of journal {} (root {}, {}), signed by trusted key {}",
                report.events_proven,
                cp.tree_size,
                cp.journal_id,
                cp.root_hash,
                cp.timestamp,
                cp.signer().unwrap_or_default()
            );
        }
        if let Some(old) = &report.extends {
            println!(
                "the journal extends checkpoint {} (root {}, {}): append-only since then",
                old.tree_size, old.root_hash, old.timestamp
            );
        }
    }
    if !report.is_valid() {
        bail!(
            "the bundle is not valid: {} problems",
            report.findings.len()
        );
    }
    if report.integrity_only {
        println!(
            "bundle OK (integrity only: it agrees with itself; nothing proves it is the journal's)"
        );
    } else {
        println!("bundle OK");
    }
    Ok(())
}

async fn run_checkpoint(args: CheckpointArgs) -> anyhow::Result<()> {
    let config = DatabaseConfig::from_parts(args.database_url.as_deref(), &args.data_dir, 4);
    let database = Database::connect(&config)
        .await
        .with_context(|| format!("open {}", config.describe()))?;
    let store = engine::audit_log::AuditStore::new(&database);
    let checkpoint = if args.take {
        let embedded = matches!(config, engine::DatabaseConfig::Sqlite { .. });
        let (key, _) = args.audit_key.key(&args.data_dir, embedded)?;
        store.catch_up().await.context("extend the audit tree")?;
        store
            .checkpoint_now(&key)
            .await
            .context("take a checkpoint")?
    } else {
        match args.tree_size {
            Some(size) => store.checkpoint_at(size).await?,
            None => store.latest_checkpoint().await?,
        }
    };
    database.close().await;
    match checkpoint {
        Some(cp) => {
            println!("{}", serde_json::to_string_pretty(&cp)?);
            Ok(())
        }
        None => {
            bail!("no such checkpoint (the tree is empty, or no checkpoint of that size was taken)")
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        audit: AuditCommand,
    }

    fn export(args: &[&str]) -> Result<ExportArgs, clap::Error> {
        let mut argv = vec!["x", "export", "-o", "b.jsonl"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.audit {
            AuditCommand::Export(args) => Ok(args),
            _ => unreachable!(),
        }
    }

    #[test]
    fn export_needs_exactly_one_scope() {
        assert!(export(&[]).is_err());
        assert!(export(&["--run-id", "r", "--all"]).is_err());
        assert!(export(&["--since", "2026-01-01T00:00:00Z"]).is_err());
        assert_eq!(export(&["--all"]).unwrap().scope().unwrap(), Scope::All);
        let range = export(&[
            "--since",
            "2026-01-01T00:00:00Z",
            "--until",
            "2026-01-02T00:00:00Z",
        ])
        .unwrap();
        assert!(matches!(range.scope().unwrap(), Scope::TimeRange { .. }));
        let backwards = export(&[
            "--since",
            "2026-01-02T00:00:00Z",
            "--until",
            "2026-01-01T00:00:00Z",
        ])
        .unwrap();
        assert!(backwards.scope().is_err());
        assert!(export(&["--run-id", "bad id"]).unwrap().scope().is_err());
    }

    #[test]
    fn a_malformed_signing_key_is_refused() {
        let args = SigningArgs {
            signing_key_file: None,
            signing_key: Some("zz".into()),
        };
        assert!(args.signer().is_err());
        assert!(SigningArgs::default().signer().unwrap().is_none());
    }
}
