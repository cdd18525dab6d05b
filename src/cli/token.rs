//! `openagents-runtime token …`: mint tokens. `token internal` makes an `X-OA-RUNTIME-SIGNATURE`
//! token for `/internal/v1` (for tests, operators and curl); more token kinds join this group.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use engine::auth::{mint, InternalClaims};

use crate::config::{resolve_secret, DEFAULT_DATA_DIR};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint an X-OA-RUNTIME-SIGNATURE token (single use: mint one per request).
    ///
    /// Example: curl -H "X-OA-RUNTIME-SIGNATURE: $(openagents-runtime token internal --user-id 1)"
    ///   -H 'x-oa-user-id: 1' http://127.0.0.1:8080/internal/v1/health
    Internal(InternalTokenArgs),
    /// Mint a Khala sync JWT (what the control plane's POST /api/sync/token returns), for
    /// operators and tests.
    ///
    /// Example: openagents-runtime token mint --subject user:1 --scopes runtime.run_summaries --ttl 300
    Mint(MintTokenArgs),
}

#[derive(Debug, Args)]
pub struct MintTokenArgs {
    #[command(flatten)]
    pub mint: sync_gateway::cli::TokenMintArgs,

    /// Data directory holding the dev sync-token key that `serve` generates for the embedded
    /// journal; used when no key is given.
    #[arg(long, env = "OA_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct InternalTokenArgs {
    /// The shared secret (as given to serve). Without it, the dev secret in --data-dir is used.
    #[arg(long, env = "OA_RUNTIME_SIGNATURE_SECRET", hide_env_values = true)]
    pub signature_secret: Option<String>,

    /// Data directory holding the dev secret (the embedded journal's directory).
    #[arg(long, env = "OA_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Seconds until the token expires.
    #[arg(long, default_value_t = 300)]
    pub ttl_secs: i64,

    /// Bind the token to this user (`user_id` claim).
    #[arg(long)]
    pub user_id: Option<String>,

    /// Bind the token to this guest scope (`guest_scope` claim).
    #[arg(long)]
    pub guest_scope: Option<String>,

    /// Bind the token to this run (`run_id` claim).
    #[arg(long)]
    pub run_id: Option<String>,

    /// Bind the token to this thread (`thread_id` claim).
    #[arg(long)]
    pub thread_id: Option<String>,

    /// The tenant recorded on runs and workers the token creates (`oa_org_id` claim).
    #[arg(long)]
    pub org_id: Option<String>,

    /// Sync scopes (`oa_sync_scopes` claim); repeat for several.
    #[arg(long = "sync-scope")]
    pub sync_scopes: Vec<String>,

    /// Print the claims as JSON on stderr too.
    #[arg(long)]
    pub show_claims: bool,
}

/// Runs a `token` subcommand.
///
/// # Errors
/// When no secret can be found or the arguments are invalid.
pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Internal(args) => {
            println!("{}", internal(&args)?);
            Ok(())
        }
        TokenCommand::Mint(MintTokenArgs { mut mint, data_dir }) => {
            if mint.auth.jwt_key.is_none() && mint.auth.jwt_signing_pem.is_none() {
                if let Some((entry, _)) = crate::sync::dev_sync_key(&data_dir, false)? {
                    mint.auth.jwt_key = Some(entry);
                }
            }
            sync_gateway::cli::run_token_mint(mint).await
        }
    }
}

/// Mints the token `args` describe.
///
/// # Errors
/// When no secret can be found or the TTL is not positive.
pub fn internal(args: &InternalTokenArgs) -> anyhow::Result<String> {
    anyhow::ensure!(args.ttl_secs > 0, "--ttl-secs must be positive");
    let configured = args.signature_secret.as_deref().filter(|s| !s.is_empty());
    let dev_file = args.data_dir.join(crate::config::DEV_SECRET_FILE);
    anyhow::ensure!(
        configured.is_some() || dev_file.exists(),
        "no signing secret: pass --signature-secret (or set OA_RUNTIME_SIGNATURE_SECRET) as given \
         to serve, or point --data-dir at the embedded journal's directory ({} does not exist; \
         `serve` creates it on first start)",
        dev_file.display()
    );
    let (secret, _) = resolve_secret(configured, &args.data_dir, true)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let claims = InternalClaims {
        run_id: args.run_id.clone(),
        thread_id: args.thread_id.clone(),
        user_id: args.user_id.clone(),
        guest_scope: args.guest_scope.clone(),
        oa_org_id: args.org_id.clone(),
        oa_sync_scopes: (!args.sync_scopes.is_empty()).then(|| args.sync_scopes.clone()),
        ..InternalClaims::new(now, args.ttl_secs)
    };
    if args.show_claims {
        eprintln!("{}", serde_json::to_string_pretty(&claims)?);
    }
    Ok(mint(&secret, &claims))
}
