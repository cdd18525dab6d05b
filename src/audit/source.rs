//! Reading the journal for an export: committed events in commit order, as stored (payload and
//! metadata as their JSON text), page by page, optionally narrowed to some aggregates. Runtime
//! SQL on both backends, exercised by `tests/it/audit.rs`.
//!
//! Like the engine's global read, a page only reaches below the oldest running transaction of the
//! PostgreSQL cluster; [`RowPages`] counts the matching committed rows first and waits until the
//! horizon has passed all of them, so an export holds exactly the events committed when it began
//! (and any that committed below them meanwhile).

use anyhow::{bail, Context};
use engine::backoff::HorizonWait;
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

/// `AND (aggregate_type, aggregate_id) IN (…)` with numbered placeholders from `first`, or
/// nothing without a filter. Explicit pairs let both planners use the primary key for small
/// filters and the global-order index for a full read.
fn pg_filter(filter: &RowFilter, first: usize) -> String {
    if filter.aggregates.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = (0..filter.aggregates.len())
        .map(|i| format!("(${}, ${})", first + 2 * i, first + 2 * i + 1))
        .collect();
    format!(
        " AND (aggregate_type, aggregate_id) IN ({})",
        pairs.join(", ")
    )
}

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
            let sql = format!(
                "SELECT count(*) FROM events WHERE true{}",
                pg_filter(filter, 1)
            );
            let mut query = sqlx::query(&sql);
            for (t, id) in &filter.aggregates {
                query = query.bind(t).bind(id);
            }
            query.fetch_one(pool).await?.try_get(0)?
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
            let sql = format!(
                "SELECT transaction_id, position, aggregate_type, aggregate_id, sequence,
                        event_type, event_version, payload::text AS payload, metadata::text AS metadata
                   FROM events
                  WHERE (transaction_id, position) > ($1, $2)
                    AND transaction_id < {}{}
                  ORDER BY transaction_id, position
                  LIMIT $3",
                engine::pg_read_horizon!(),
                pg_filter(filter, 4)
            );
            let mut query = sqlx::query(&sql).bind(after.0).bind(after.1).bind(limit);
            for (t, id) in &filter.aggregates {
                query = query.bind(t).bind(id);
            }
            let rows = query.fetch_all(pool).await?;
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

/// One aggregate's rows with `sequence` in `from..=to`, in sequence order (primary-key reads).
///
/// # Errors
/// When the database fails or a row cannot be decoded.
pub async fn aggregate_rows(
    database: &Database,
    aggregate_type: &str,
    aggregate_id: &str,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<AuditRow>> {
    match database {
        Database::Postgres(pool) => {
            let rows = sqlx::query(
                "SELECT transaction_id, position, aggregate_type, aggregate_id, sequence,
                        event_type, event_version, payload::text AS payload, metadata::text AS metadata
                   FROM events
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence BETWEEN $3 AND $4
                  ORDER BY sequence",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| decode_row(r).context("decode an events row"))
                .collect()
        }
        Database::Sqlite { pool, .. } => {
            let rows = sqlx::query(
                "SELECT transaction_id, position, aggregate_type, aggregate_id, sequence,
                        event_type, event_version, payload, metadata
                   FROM events
                  WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND sequence BETWEEN ?3 AND ?4
                  ORDER BY sequence",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| decode_row(r).context("decode an events row"))
                .collect()
        }
    }
}

/// A page being fetched in the background.
type PageFetch = tokio::task::JoinHandle<anyhow::Result<Vec<AuditRow>>>;

/// Pages through the committed rows matching a filter (see the module docs). While the caller
/// works on one page, the next one is already being fetched, so the database's work and the
/// caller's overlap.
pub struct RowPages {
    database: Database,
    filter: RowFilter,
    total: u64,
    seen: u64,
    /// The page being fetched in the background and the cursor it was asked after. Dropping it
    /// (with the pager) lets the query finish and its result be discarded.
    prefetch: Option<(PageFetch, (i64, i64))>,
    after: (i64, i64),
}

impl RowPages {
    /// Counts the rows to read and starts fetching the first page.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn start(database: &Database, filter: RowFilter) -> anyhow::Result<Self> {
        let total = count_rows(database, &filter).await?;
        let mut pages = Self {
            database: database.clone(),
            filter,
            total,
            seen: 0,
            prefetch: None,
            after: (-1, 0),
        };
        pages.fetch_after((-1, 0));
        Ok(pages)
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    fn fetch_after(&mut self, after: (i64, i64)) {
        if self.seen >= self.total {
            return;
        }
        let database = self.database.clone();
        let filter = self.filter.clone();
        let handle = tokio::spawn(async move { page_after(&database, &filter, after, PAGE).await });
        self.prefetch = Some((handle, after));
    }

    /// The next page; `None` once every counted row was returned.
    ///
    /// # Errors
    /// When the database fails, or the read horizon does not move for a minute.
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<AuditRow>>> {
        let mut wait = HorizonWait::new(HorizonWait::DEFAULT_LIMIT);
        while self.seen < self.total {
            let page = match self.prefetch.take() {
                Some((handle, after)) if after == self.after => {
                    handle.await.context("page fetch task")??
                }
                _ => page_after(&self.database, &self.filter, self.after, PAGE).await?,
            };
            if let Some(last) = page.last() {
                self.after = (last.transaction_id, last.position);
                self.seen += page.len() as u64;
                self.fetch_after(self.after);
                return Ok(Some(page));
            }
            if !wait.pause().await {
                bail!(
                    "the journal's read horizon stayed below {} of {} events for a minute (is a transaction left open on the server?)",
                    self.seen,
                    self.total
                );
            }
        }
        Ok(None)
    }
}
