//! Read models and the sync stream of a replayed journal: every projector is caught up once on the
//! scratch database (the real runner and store, [`projectors::runner::catch_up_all`]), and what it
//! wrote is rendered in the fixture's `expected` shape: `sync_stream` (per topic, the rows
//! `[topic, watermark, doc_key, doc_version, payload_hash]`) and `read_models` (per topic, each
//! current document's version, hash, owner and payload). Wall-clock columns are never rendered.

use std::sync::Arc;

use anyhow::Context;
use engine::Database;
use projectors::runner::catch_up_all;
use projectors::store::{DocRow, StreamRow};
use projectors::{all_specs, ProjectorContext, RunnerConfig, SyncNotifier, SyncStore};
use serde_json::{json, Map, Value};

/// The projection store of `database` with every read model registered.
pub fn store_of(database: &Database) -> SyncStore {
    SyncStore::new(database, all_specs())
}

/// Projects everything committed to `database`'s journal with every read model, then returns.
///
/// # Errors
/// When a projector fails (an event it cannot fold, a store error) or the projectors' lease is
/// held by another process.
pub async fn catch_up(database: &Database) -> anyhow::Result<SyncStore> {
    let store = store_of(database);
    // `catch_up` never waits for commit notices (it reads until the journal is exhausted), so the
    // sender of this channel can go at once.
    let (_, appended) = tokio::sync::watch::channel(0);
    let context = Arc::new(ProjectorContext::new(
        store.clone(),
        database.journal(),
        Arc::new(SyncNotifier::new()),
        appended,
        RunnerConfig::default(),
    ));
    catch_up_all(&context)
        .await
        .context("project the replayed journal")?;
    Ok(store)
}

fn stream_row(row: &StreamRow) -> Value {
    json!([
        row.topic,
        row.watermark,
        row.doc_key,
        row.doc_version,
        row.payload_hash
    ])
}

fn doc(row: &DocRow) -> anyhow::Result<Value> {
    let payload: Value = serde_json::from_str(&row.payload)
        .with_context(|| format!("the stored payload of {} is not JSON", row.doc_key))?;
    Ok(json!({
        "doc_version": row.doc_version,
        "payload_hash": row.payload_hash,
        "owner": {
            "user_id": row.owner.user_id,
            "guest_scope": row.owner.guest_scope,
            "org_id": row.owner.org_id,
        },
        "payload": payload,
    }))
}

/// `(sync_stream, read_models)` of `store`, every topic present (empty when nothing was
/// projected into it), topics and document keys sorted bytewise (PostgreSQL's `ORDER BY` follows
/// the database collation, SQLite's does not).
///
/// # Errors
/// When the store cannot be read or holds a payload that is not JSON.
pub async fn render(store: &SyncStore) -> anyhow::Result<(Value, Value)> {
    let mut specs = all_specs();
    specs.sort_by_key(|s| s.topic);
    let mut stream = Map::new();
    let mut models = Map::new();
    for spec in &specs {
        let rows = store
            .all_rows(spec.topic, 0)
            .await
            .with_context(|| format!("read the sync stream of {}", spec.topic))?;
        stream.insert(
            spec.topic.to_owned(),
            Value::Array(rows.iter().map(stream_row).collect()),
        );
        let mut docs = store
            .all_docs(spec)
            .await
            .with_context(|| format!("read the documents of {}", spec.topic))?;
        docs.sort_by(|a, b| a.doc_key.as_bytes().cmp(b.doc_key.as_bytes()));
        let mut rendered = Map::new();
        for row in &docs {
            rendered.insert(row.doc_key.clone(), doc(row)?);
        }
        models.insert(spec.topic.to_owned(), Value::Object(rendered));
    }
    Ok((Value::Object(stream), Value::Object(models)))
}

/// Projects `database` and adds `sync_stream` and `read_models` to a fixture's `output`.
///
/// # Errors
/// See [`catch_up`] and [`render`].
pub async fn add_outputs(database: &Database, output: &mut Value) -> anyhow::Result<()> {
    let store = catch_up(database).await?;
    let (stream, models) = render(&store).await?;
    if let Value::Object(map) = output {
        map.insert("sync_stream".into(), stream);
        map.insert("read_models".into(), models);
    }
    Ok(())
}
