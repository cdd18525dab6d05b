//! `openagents-runtime token mint --subject … --scopes … --ttl …`: mints a sync token with the
//! configured key, in the control plane's shape.

use std::time::Duration;

use crate::auth::mint::{mint, MintRequest};
use crate::config::{parse_duration, AuthArgs, GatewayConfig, TopicPolicy};

/// Mint a sync token (prints the token, or the full response with `--json`).
#[derive(Clone, Debug, clap::Args)]
pub struct TokenMintArgs {
    /// `user:<id>` or `guest:<scope>`.
    #[arg(long)]
    pub subject: String,
    /// Topics the token may read, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub scopes: Vec<String>,
    /// Lifetime (clamped into 60s..=900s), e.g. 300s or 5m.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub ttl: Duration,
    #[arg(long)]
    pub org_id: Option<String>,
    #[arg(long)]
    pub device_id: Option<String>,
    #[arg(long)]
    pub session_id: Option<String>,
    /// Print the whole response (`token`, `expires_at`, …) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Known topics (`topic=retention:replay_budget`, comma-separated); default: the built-in ones.
    #[arg(long = "sync-topic-policies", env = "OA_SYNC_TOPIC_POLICIES", value_delimiter = ',', value_parser = TopicPolicy::parse)]
    pub topic_policies: Vec<TopicPolicy>,
}

/// Mints and returns the output line (token or JSON).
///
/// # Errors
/// Bad key configuration, unknown scopes, or no signing key.
pub fn mint_output(args: &TokenMintArgs) -> anyhow::Result<String> {
    let config = args.auth.auth_config()?;
    let topics: Vec<String> = if args.topic_policies.is_empty() {
        GatewayConfig::default().topic_names()
    } else {
        args.topic_policies
            .iter()
            .map(|p| p.topic.clone())
            .collect()
    };
    let request = MintRequest {
        subject: args.subject.clone(),
        scopes: args.scopes.clone(),
        ttl_seconds: Some(args.ttl.as_secs()),
        org_id: args.org_id.clone(),
        device_id: args.device_id.clone(),
        session_id: args.session_id.clone(),
    };
    let minted = mint(&config, &topics, &request, chrono::Utc::now().timestamp()).map_err(|e| {
        anyhow::anyhow!(
            "cannot mint: {e} (set OA_SYNC_JWT_KEY=kid=secret or --sync-jwt-signing-pem)"
        )
    })?;
    Ok(if args.json {
        serde_json::to_string_pretty(&minted)?
    } else {
        minted.token
    })
}

/// Runs `token mint`: prints the token on stdout.
///
/// # Errors
/// As [`mint_output`].
pub async fn run_token_mint(args: TokenMintArgs) -> anyhow::Result<()> {
    println!("{}", mint_output(&args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::auth::{Revocations, Verifier};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mint: TokenMintArgs,
    }

    #[test]
    fn mints_a_token_the_gateway_accepts() {
        let cli = Cli::try_parse_from([
            "x",
            "--subject",
            "user:9",
            "--scopes",
            "runtime.run_summaries,runtime.codex_worker_events",
            "--ttl",
            "2m",
            "--sync-jwt-key",
            "k1=a-secret-that-is-long-enough",
        ])
        .unwrap();
        let token = mint_output(&cli.mint).unwrap();
        let verifier = Verifier::new(
            cli.mint.auth.auth_config().unwrap(),
            Revocations::in_memory(),
        );
        let context = verifier.verify(&token).unwrap();
        assert_eq!(context.principal.user_id.as_deref(), Some("9"));
        assert_eq!(context.expires_at - context.issued_at, 120);
        assert_eq!(context.scopes.len(), 2);

        let unknown = Cli::try_parse_from([
            "x",
            "--subject",
            "user:9",
            "--scopes",
            "nope",
            "--sync-jwt-key",
            "k1=a-secret-that-is-long-enough",
        ])
        .unwrap();
        assert!(mint_output(&unknown.mint).is_err());
    }
}
