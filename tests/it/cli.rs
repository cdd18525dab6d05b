//! The `openagents-runtime` binary's small subcommands, run as real processes.

use std::process::Command;

use engine::auth::{verify, SigningSecret};

use crate::app::{now_unix, TEST_SECRET};

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_openagents-runtime"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("OA_RUNTIME_SIGNATURE_SECRET")
        .env_remove("OA_DATA_DIR");
    command
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["token", "internal", "--help"],
    ] {
        let output = binary().args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(!output.stdout.is_empty(), "{args:?}");
    }
    let output = binary().arg("no-such-command").output().unwrap();
    assert!(!output.status.success());
}

#[test]
fn migrate_prepares_a_fresh_embedded_journal() {
    let dir = tempfile::tempdir().unwrap();
    let output = binary()
        .args(["migrate", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("up to date"));
    assert!(dir.path().join(engine::db::SQLITE_FILE).exists());
}

#[test]
fn token_internal_mints_a_token_bound_to_the_given_claims() {
    let output = binary()
        .args(["token", "internal", "--user-id", "42", "--run-id", "run_1"])
        .args([
            "--org-id",
            "org_1",
            "--sync-scope",
            "a",
            "--sync-scope",
            "b",
        ])
        .env("OA_RUNTIME_SIGNATURE_SECRET", TEST_SECRET)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let claims = verify(
        &SigningSecret::new(TEST_SECRET).unwrap(),
        token.trim(),
        now_unix(),
    )
    .expect("the CLI's token verifies with the shared secret");
    assert_eq!(claims.user_id.as_deref(), Some("42"));
    assert_eq!(claims.run_id.as_deref(), Some("run_1"));
    assert_eq!(claims.oa_org_id.as_deref(), Some("org_1"));
    assert_eq!(
        claims.oa_sync_scopes,
        Some(vec!["a".to_owned(), "b".to_owned()])
    );
    assert!(claims.exp - claims.iat == 300);
}

#[test]
fn token_internal_does_not_invent_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let output = binary()
        .args([
            "token",
            "internal",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no signing secret"));
    // With the dev secret that serve generates, it works and uses that secret.
    let (secret, _) = openagents_runtime::config::resolve_secret(None, dir.path(), true).unwrap();
    let output = binary()
        .args([
            "token",
            "internal",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    assert!(verify(&secret, token.trim(), now_unix()).is_ok());
}
