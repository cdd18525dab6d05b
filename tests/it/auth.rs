//! The nonce store behind internal signature auth, on both backends: single use across processes
//! (two independent pools on one database), and pruning of expired nonces.

use engine::auth::{AuthError, NonceStore};
use engine::testing::TestDb;

use crate::app::database_config;
use crate::support::on_both_backends;

on_both_backends!(
    a_nonce_is_single_use_across_processes,
    expired_nonces_are_pruned_and_live_ones_kept,
);

async fn a_nonce_is_single_use_across_processes(db: &TestDb) {
    let first = NonceStore::new(db.database.clone());
    // A second process: its own pool (and, for SQLite, its own writer lock) on the same database.
    let other_pool = engine::Database::connect(&database_config(db))
        .await
        .unwrap();
    let second = NonceStore::new(other_pool.clone());
    first.consume("nonce-1", 2_000, 1_000).await.unwrap();
    assert!(matches!(
        second.consume("nonce-1", 2_000, 1_000).await,
        Err(AuthError::Replayed)
    ));
    assert!(matches!(
        first.consume("nonce-1", 2_000, 1_000).await,
        Err(AuthError::Replayed)
    ));
    second.consume("nonce-2", 2_000, 1_000).await.unwrap();
    other_pool.close().await;
}

async fn expired_nonces_are_pruned_and_live_ones_kept(db: &TestDb) {
    let store = NonceStore::new(db.database.clone());
    store.consume("old-1", 1_000, 900).await.unwrap();
    store.consume("old-2", 1_500, 900).await.unwrap();
    store.consume("live", 5_000, 900).await.unwrap();
    assert_eq!(store.prune(2_000).await.unwrap(), 2);
    assert_eq!(store.prune(2_000).await.unwrap(), 0);
    // The live nonce is still remembered; a pruned one could be stored again (its token would
    // fail the time check long before that matters).
    assert!(matches!(
        store.consume("live", 5_000, 2_000).await,
        Err(AuthError::Replayed)
    ));
    store.consume("old-1", 9_000, 2_000).await.unwrap();
}
