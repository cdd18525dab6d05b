//! Reading the journal for an export: committed events in commit order, as stored (payload and
//! metadata as their JSON text), page by page, optionally narrowed to some aggregates. Runtime
//! SQL on both backends, exercised by `tests/it/audit.rs`.
//!
//! Like the engine's global read, a page only reaches below the oldest running transaction of the
//! PostgreSQL cluster; [`RowPages`] counts the matching committed rows first and waits until the
//! horizon has passed all of them, so an export holds exactly the events committed when it began
//! (and any that committed below them meanwhile).

use std::time::Duration;

use anyhow::{bail, Context};
use engine::Database;
use sqlx::Row;

/// Rows per query.
pub const PAGE: i64 = 5_000;

/// One stored event, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRow {
    pub transaction_id: i64,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The payload's stored JSON text.
    pub payload: String,
    /// The metadata's stored JSON text.
    pub metadata: String,
}

/// Which aggregates to read: all, or a few named ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowFilter {
    /// `(aggregate_type, aggregate_id)` pairs; empty = everything.
    pub aggregates: Vec<(String, String)>,
}

impl RowFilter {
    fn types_and_ids(&self) -> (Vec<String>, Vec<String>) {
        self.aggregates.iter().cloned().unzip()
    }
}

const PG_COUNT: &str = "SELECT count(*) FROM events e
  WHERE cardinality($1::text[]) = 0
     OR (e.aggregate_type, e.aggregate_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))";

const PG_PAGE: &str = "SELECT transaction_id, position, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload::text AS payload, metadata::text AS metadata
  FROM events e
 WHERE (transaction_id, position) > ($3, $4)
   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
   AND (cardinality($1::text[]) = 0
        OR (e.aggregate_type, e.aggregate_id) IN (SELECT * FROM unnest($1::text[], $2::text[])))
 ORDER BY transaction_id, position
 LIMIT $5";

fn sqlite_filter(filter: &RowFilter) -> String {
    if filter.aggregates.is_empty() {
        return String::new();
    }
    let clauses: Vec<String> = filter
        .aggregates
        .iter()
        .map(|_| "(aggregate_type = ? AND aggregate_id = ?)".to_owned())
        .collect();
    format!(" AND ({})", clauses.join(" OR "))
}

fn decode_row<R: Row>(row: &R) -> Result<AuditRow, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    Ok(AuditRow {
        transaction_id: row.try_get("transaction_id")?,
        position: row.try_get("position")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
    })
}

/// Counts the committed rows matching `filter`.
///
/// # Errors
/// When the database fails.
pub async fn count_rows(database: &Database, filter: &RowFilter) -> anyhow::Result<u64> {
    let count: i64 = match database {
        Database::Postgres(pool) => {
            let (types, ids) = filter.types_and_ids();
            sqlx::query(PG_COUNT)
                .bind(&types)
                .bind(&ids)
                .fetch_one(pool)
                .await?
                .try_get(0)?
        }
        Database::Sqlite { pool, .. } => {
            let sql = format!(
                "SELECT count(*) FROM events WHERE 1 = 1{}",
                sqlite_filter(filter)
            );
            let mut query = sqlx::query(&sql);
            for (t, id) in &filter.aggregates {
                query = query.bind(t).bind(id);
            }
            query.fetch_one(pool).await?.try_get(0)?
        }
    };
    Ok(u64::try_from(count).unwrap_or(0))
}

/// The page after `(transaction_id, position)`.
///
/// # Errors
/// When the database fails or a row cannot be decoded.
pub async fn page_after(
    database: &Database,
    filter: &RowFilter,
    after: (i64, i64),
    limit: i64,
) -> anyhow::Result<Vec<AuditRow>> {
    match database {
        Database::Postgres(pool) => {
            let (types, ids) = filter.types_and_ids();
            let rows = sqlx::query(PG_PAGE)
                .bind(&types)
                .bind(&ids)
                .bind(after.0)
                .bind(after.1)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| decode_row(r).context("decode an events row"))
                .collect()
        }
        Database::Sqlite { pool, .. } => {
            let sql = format!(
                "SELECT transaction_id, position, aggregate_type, aggregate_id, sequence,
                        event_type, event_version, payload, metadata
                   FROM events WHERE position > ?{} ORDER BY position LIMIT ?",
                sqlite_filter(filter)
            );
            let mut query = sqlx::query(&sql).bind(after.1);
            for (t, id) in &filter.aggregates {
                query = query.bind(t).bind(id);
            }
            let rows = query.bind(limit).fetch_all(pool).await?;
            rows.iter()
                .map(|r| decode_row(r).context("decode an events row"))
                .collect()
        }
    }
}

/// The stored metadata text of one event, if it exists.
///
/// # Errors
/// When the database fails.
pub async fn metadata_of(
    database: &Database,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
) -> anyhow::Result<Option<AuditRow>> {
    let filter = RowFilter {
        aggregates: vec![(aggregate_type.to_owned(), aggregate_id.to_owned())],
    };
    // Small and rare (the first event of an aggregate in a time-range export): read the
    // aggregate's rows up to `sequence`.
    let mut after = (-1, 0);
    loop {
        let page = page_after(database, &filter, after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        after = (last.transaction_id, last.position);
        if let Some(row) = page.into_iter().find(|r| r.sequence == sequence) {
            return Ok(Some(row));
        }
    }
}

/// Pages through the committed rows matching a filter (see the module docs).
pub struct RowPages<'a> {
    database: &'a Database,
    filter: RowFilter,
    total: u64,
    seen: u64,
    after: (i64, i64),
}

impl<'a> RowPages<'a> {
    /// Counts the rows to read.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn start(database: &'a Database, filter: RowFilter) -> anyhow::Result<Self> {
        let total = count_rows(database, &filter).await?;
        Ok(Self {
            database,
            filter,
            total,
            seen: 0,
            after: (-1, 0),
        })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The next page; `None` once every counted row was returned.
    ///
    /// # Errors
    /// When the database fails, or the read horizon does not move for a minute.
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<AuditRow>>> {
        let mut waited = Duration::ZERO;
        let pause = Duration::from_millis(20);
        while self.seen < self.total {
            let page = page_after(self.database, &self.filter, self.after, PAGE).await?;
            if let Some(last) = page.last() {
                self.after = (last.transaction_id, last.position);
                self.seen += page.len() as u64;
                return Ok(Some(page));
            }
            if waited > Duration::from_secs(60) {
                bail!(
                    "the journal's read horizon stayed below {} of {} events for a minute (is a transaction left open on the server?)",
                    self.seen,
                    self.total
                );
            }
            tokio::time::sleep(pause).await;
            waited += pause;
        }
        Ok(None)
    }
}
