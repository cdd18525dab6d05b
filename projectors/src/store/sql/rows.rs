//! The column lists and row decoders the store's statements share: checkpoints (whole, or the
//! part a write locks), stream rows, documents and topic states.

use engine::journal::GlobalCursor;

use crate::model::DocOwner;
use crate::store::dialect::{Columns, Rows};
use crate::store::{Checkpoint, DocRow, RebuildState, StoreError, StreamRow, TopicState};

/// The columns of a checkpoint row, as [`checkpoint`] decodes them.
pub(super) const CHECKPOINT_COLUMNS: &str =
    "projector, topic, projection_version, cursor_transaction, \
    cursor_position, events_projected, lease_owner, lease_expires_at_ms, rebuild_requested, \
    rebuild_version, rebuild_cursor_transaction, rebuild_cursor_position, rebuild_events, \
    rebuild_started_at_ms, last_rebuilt_at_ms, updated_at_ms";

/// The columns a document table is written with, in the order its inserts list them.
pub(super) const DOC_TABLE_COLUMNS: &str =
    "doc_key, doc_version, payload, payload_hash, watermark, \
    owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms, updated_at_ms";

/// The columns of a stream row or a document (the payload as its JSON text).
pub(super) const ROW_COLUMNS: &str =
    "doc_key, doc_version, CAST(payload AS TEXT) AS payload, payload_hash, \
    watermark, owner_user_id, owner_guest_scope, owner_org_id, projected_at_ms";

/// What a write needs of the checkpoint row it locks (and no more: it is read under the lock).
pub(super) const LOCKED_COLUMNS: &str = "lease_owner, cursor_transaction, cursor_position, \
    rebuild_version, rebuild_cursor_transaction, rebuild_cursor_position";

/// A locked checkpoint row ([`LOCKED_COLUMNS`]).
pub(super) struct Locked {
    pub(super) lease_owner: Option<String>,
    pub(super) cursor: GlobalCursor,
    pub(super) rebuild: Option<Rebuilding>,
}

/// A full rebuild in progress: the version it builds and its cursor.
pub(super) struct Rebuilding {
    pub(super) version: u32,
    pub(super) cursor: GlobalCursor,
}

pub(super) fn rebuilding(row: &impl Columns) -> Result<Option<Rebuilding>, StoreError> {
    let Some(version) = row.opt_int32("rebuild_version")? else {
        return Ok(None);
    };
    let part = |column: &str| -> Result<u64, StoreError> {
        crate::store::to_u64(row.opt_int(column)?.unwrap_or(0), column)
    };
    Ok(Some(Rebuilding {
        version: u32::try_from(version).unwrap_or_default(),
        cursor: GlobalCursor::new(
            part("rebuild_cursor_transaction")?,
            part("rebuild_cursor_position")?,
        ),
    }))
}

pub(super) fn cursor(row: &impl Columns) -> Result<GlobalCursor, StoreError> {
    Ok(GlobalCursor::new(
        row.uint("cursor_transaction")?,
        row.uint("cursor_position")?,
    ))
}

pub(super) fn locked(row: &impl Columns) -> Result<Locked, StoreError> {
    Ok(Locked {
        lease_owner: row.opt_text("lease_owner")?,
        cursor: cursor(row)?,
        rebuild: rebuilding(row)?,
    })
}

pub(super) fn checkpoint(row: &impl Columns) -> Result<Checkpoint, StoreError> {
    let rebuild = match rebuilding(row)? {
        Some(Rebuilding { version, cursor }) => Some(RebuildState {
            version,
            cursor,
            events: row.uint("rebuild_events")?,
            started_at_ms: row.opt_int("rebuild_started_at_ms")?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Checkpoint {
        projector: row.text("projector")?,
        topic: row.text("topic")?,
        projection_version: u32::try_from(row.int32("projection_version")?).unwrap_or_default(),
        cursor: cursor(row)?,
        events_projected: row.uint("events_projected")?,
        lease_owner: row.opt_text("lease_owner")?,
        lease_expires_at_ms: row.int("lease_expires_at_ms")?,
        rebuild_requested: row.flag("rebuild_requested")?,
        rebuild,
        last_rebuilt_at_ms: row.opt_int("last_rebuilt_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
    })
}

pub(super) fn owner(row: &impl Columns) -> Result<DocOwner, sqlx::Error> {
    Ok(DocOwner {
        user_id: row.opt_text("owner_user_id")?,
        guest_scope: row.opt_text("owner_guest_scope")?,
        org_id: row.opt_text("owner_org_id")?,
    })
}

pub(super) fn doc_row(row: &impl Columns) -> Result<DocRow, StoreError> {
    Ok(DocRow {
        doc_key: row.text("doc_key")?,
        doc_version: row.uint("doc_version")?,
        payload: row.text("payload")?,
        payload_hash: row.text("payload_hash")?,
        watermark: row.uint("watermark")?,
        owner: owner(row)?,
        projected_at_ms: row.int("projected_at_ms")?,
    })
}

pub(super) fn stream_row(topic: &str, row: &impl Columns) -> Result<StreamRow, StoreError> {
    let doc = doc_row(row)?;
    Ok(StreamRow {
        topic: topic.to_owned(),
        watermark: doc.watermark,
        doc_key: doc.doc_key,
        doc_version: doc.doc_version,
        payload: doc.payload,
        payload_hash: doc.payload_hash,
        owner: doc.owner,
        projected_at_ms: doc.projected_at_ms,
    })
}

pub(super) fn topic_state(topic: &str, row: &impl Columns) -> Result<TopicState, StoreError> {
    Ok(TopicState {
        topic: topic.to_owned(),
        head_watermark: row.uint("head_watermark")?,
        retention_floor: row.uint("retention_floor")?,
        epoch: row.uint("epoch")?,
        epoch_start: row.uint("epoch_start")?,
    })
}

pub(super) fn one_row(
    watermark: u64,
    key: &str,
    version: u64,
    payload: &str,
    hash: &str,
    owner: &DocOwner,
    at_ms: i64,
) -> Rows {
    let mut rows = Rows::default();
    rows.push(watermark, key, version, payload, hash, owner, at_ms);
    rows
}
