//! `audit witness --url URL --state witness.json`: follows a runtime's signed checkpoints from
//! somewhere the database administrator cannot reach. Each new checkpoint must be signed by a
//! trusted audit key and proven (consistency proof) to extend the last one the witness saw; the
//! witness persists what it saw after every step, and exits non-zero the moment a checkpoint is
//! not an extension, printing both heads and the failing proof (`docs/audit.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use engine::audit_log::merkle::{parse_hash, verify_consistency, Hash};
use engine::audit_log::Checkpoint;
use engine::auth::{mint, InternalClaims, SigningSecret, OPERATOR_ROLE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `audit witness`.
#[derive(Debug, Clone, clap::Args)]
pub struct WitnessArgs {
    /// Base URL of the runtime (`http://host:8080`).
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Where the witness keeps the last checkpoint it verified (created on the first run).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// Audit public keys (x-only hex) whose checkpoints are trusted; repeatable.
    #[arg(long = "trusted-key", value_name = "PUBKEY", required = true)]
    pub trusted_keys: Vec<String>,
    /// Shared secret of internal tokens (the witness mints an operator token per request).
    #[arg(long, env = "OA_RUNTIME_SIGNATURE_SECRET", hide_env_values = true)]
    pub signature_secret: String,
    /// How often to poll, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub interval_ms: u64,
    /// Poll once and exit (for cron and tests).
    #[arg(long)]
    pub once: bool,
}

/// What the witness persists.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WitnessState {
    pub url: String,
    /// The last checkpoint verified.
    pub checkpoint: Option<Checkpoint>,
    /// How many checkpoints this witness has verified.
    pub verified: u64,
}

/// Why the witness alarmed.
#[derive(Debug, thiserror::Error)]
#[error("ALARM: {reason}\nlast verified head: {old}\nnew head:           {new}\nproof: {proof}")]
pub struct Alarm {
    pub reason: String,
    pub old: String,
    pub new: String,
    pub proof: String,
}

fn load_state(path: &Path, url: &str) -> anyhow::Result<WitnessState> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let state: WitnessState = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a witness state", path.display()))?;
            if state.url != url {
                bail!(
                    "{} follows {}, not {url}: use one state file per runtime",
                    path.display(),
                    state.url
                );
            }
            Ok(state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WitnessState {
            url: url.to_owned(),
            ..WitnessState::default()
        }),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn save_state(path: &Path, state: &WitnessState) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display()))
}

fn head(cp: &Checkpoint) -> String {
    format!(
        "tree_size {} root {} journal {} at {} signed by {}",
        cp.tree_size,
        cp.root_hash,
        cp.journal_id,
        cp.timestamp,
        cp.signer().unwrap_or("nobody")
    )
}

struct Client {
    http: reqwest::Client,
    url: String,
    secret: SigningSecret,
}

impl Client {
    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let now = chrono::Utc::now().timestamp();
        let claims = InternalClaims {
            user_id: Some("audit-witness".into()),
            oa_role: Some(OPERATOR_ROLE.into()),
            ..InternalClaims::new(now, 60)
        };
        let response = self
            .http
            .get(format!("{}{path}", self.url.trim_end_matches('/')))
            .header(engine::auth::SIGNATURE_HEADER, mint(&self.secret, &claims))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }
}

/// One poll: fetch the latest checkpoint and prove it extends the last one seen.
///
/// # Errors
/// [`Alarm`] (inside the anyhow error) when it does not; other errors when the runtime cannot be
/// reached (not an alarm: the witness retries).
async fn poll(
    client: &Client,
    state: &mut WitnessState,
    trusted: &[String],
) -> anyhow::Result<bool> {
    let (status, body) = client.get("/internal/v1/audit/checkpoints/latest").await?;
    if status == 404 {
        return Ok(false);
    }
    if status != 200 {
        bail!("GET checkpoints/latest: HTTP {status}: {body}");
    }
    let new = Checkpoint::from_json(&body).context("the latest checkpoint")?;
    let old_head = state.checkpoint.as_ref().map_or("none".to_owned(), head);
    let alarm = |reason: String, proof: String| Alarm {
        reason,
        old: old_head.clone(),
        new: head(&new),
        proof,
    };
    if let Err(e) = new.verify(trusted) {
        return Err(alarm(
            format!("the new checkpoint is not trusted: {e}"),
            "-".into(),
        )
        .into());
    }
    let Some(old) = state.checkpoint.clone() else {
        state.checkpoint = Some(new);
        state.verified += 1;
        return Ok(true);
    };
    if new.journal_id != old.journal_id {
        return Err(alarm(
            "the journal id changed: the tree was rebuilt or this is another journal".into(),
            "-".into(),
        )
        .into());
    }
    if new.tree_size < old.tree_size {
        return Err(alarm("the tree shrank: events were deleted".into(), "-".into()).into());
    }
    if new.tree_size == old.tree_size {
        if new.root_hash != old.root_hash {
            return Err(alarm(
                "same size, another root: the history was rewritten".into(),
                "-".into(),
            )
            .into());
        }
        return Ok(false);
    }
    let (status, body) = client
        .get(&format!(
            "/internal/v1/audit/proof/consistency?from={}&to={}",
            old.tree_size, new.tree_size
        ))
        .await?;
    if status != 200 {
        return Err(alarm(
            format!("the runtime gave no consistency proof (HTTP {status})"),
            body.to_string(),
        )
        .into());
    }
    let proof_value = body.get("proof").cloned().unwrap_or(Value::Null);
    let proof: Option<Vec<Hash>> = proof_value.as_array().and_then(|items| {
        items
            .iter()
            .map(|h| h.as_str().and_then(|h| parse_hash(h).ok()))
            .collect()
    });
    let (Some(proof), Ok(old_root), Ok(new_root)) = (proof, old.root(), new.root()) else {
        return Err(alarm(
            "the consistency proof is malformed".into(),
            proof_value.to_string(),
        )
        .into());
    };
    if let Err(e) = verify_consistency(old.tree_size, new.tree_size, &old_root, &new_root, &proof) {
        return Err(alarm(
            format!("the new checkpoint does not extend the last one: {e}"),
            proof_value.to_string(),
        )
        .into());
    }
    state.checkpoint = Some(new);
    state.verified += 1;
    Ok(true)
}

/// Runs the witness (see the module docs).
///
/// # Errors
/// On an alarm (and when the state file cannot be used).
pub async fn run(args: WitnessArgs) -> anyhow::Result<()> {
    let secret = SigningSecret::new(args.signature_secret.as_bytes().to_vec())
        .map_err(|e| anyhow::anyhow!("--signature-secret: {e}"))?;
    let client = Client {
        http: reqwest::Client::new(),
        url: args.url.clone(),
        secret,
    };
    let mut state = load_state(&args.state, &args.url)?;
    loop {
        match poll(&client, &mut state, &args.trusted_keys).await {
            Ok(advanced) => {
                save_state(&args.state, &state)?;
                if advanced {
                    if let Some(cp) = &state.checkpoint {
                        println!("verified {}", head(cp));
                    }
                }
            }
            Err(e) if e.is::<Alarm>() => {
                save_state(&args.state, &state)?;
                return Err(e);
            }
            Err(e) => {
                if args.once {
                    return Err(e);
                }
                eprintln!("witness: {e:#} (retrying)");
            }
        }
        if args.once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms.max(100))).await;
    }
}
