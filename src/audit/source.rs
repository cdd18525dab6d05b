//! Reading the journal for an export: committed events in commit order, as stored (payload and
//! metadata as their JSON text), page by page, optionally narrowed to some aggregates. Runtime
//! SQL on both backends, exercised by `tests/it/audit.rs`. On PostgreSQL an unfiltered page is
//! read with `COPY (SELECT …) TO STDOUT`, parsed here, rather than decoded row by row by sqlx.
//!
//! Like the engine's global read, a page only reaches below the oldest running transaction of the
//! PostgreSQL cluster; [`RowPages`] counts the matching committed rows first and waits until the
//! horizon has passed all of them, so an export holds exactly the events committed when it began
//! (and any that committed below them meanwhile).

use anyhow::{bail, Context};
use engine::backoff::HorizonWait;
use engine::Database;
use futures::StreamExt;
use sqlx::postgres::PgPoolCopyExt;
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
    page_after_into(database, filter, after, limit, Vec::new()).await
}

/// [`page_after`] into `rows` (emptied first; its allocation is reused).
async fn page_after_into(
    database: &Database,
    filter: &RowFilter,
    after: (i64, i64),
    limit: i64,
    mut rows: Vec<AuditRow>,
) -> anyhow::Result<Vec<AuditRow>> {
    rows.clear();
    match database {
        Database::Postgres(pool) if filter.aggregates.is_empty() => {
            copy_page(pool, after, limit, &mut rows).await?;
            Ok(rows)
        }
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
            for row in query.fetch_all(pool).await? {
                rows.push(decode_row(&row).context("decode an events row")?);
            }
            Ok(rows)
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
            for row in query.bind(limit).fetch_all(pool).await? {
                rows.push(decode_row(&row).context("decode an events row")?);
            }
            Ok(rows)
        }
    }
}

/// The page after `after` read with `COPY (SELECT …) TO STDOUT` (text format) rather than as
/// protocol rows: PostgreSQL sends each row as one message of tab-separated text, which is parsed
/// here straight into the row's strings (no per-row buffers or column lookups by name). `COPY`
/// takes no bind parameters; the only values in the statement are the cursor and the limit
/// (integers).
async fn copy_page(
    pool: &sqlx::PgPool,
    after: (i64, i64),
    limit: i64,
    rows: &mut Vec<AuditRow>,
) -> anyhow::Result<()> {
    let sql = format!(
        "COPY (SELECT transaction_id, position, aggregate_type, aggregate_id, sequence,
                      event_type, event_version, payload, metadata
                 FROM events
                WHERE (transaction_id, position) > ({}, {})
                  AND transaction_id < {}
                ORDER BY transaction_id, position
                LIMIT {}) TO STDOUT",
        after.0,
        after.1,
        engine::pg_read_horizon!(),
        limit
    );
    let mut stream = pool.copy_out_raw(&sql).await?;
    // A row split across messages (PostgreSQL sends one per row, but nothing promises it).
    let mut partial: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let mut rest: &[u8] = &chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if partial.is_empty() {
                rows.push(parse_copy_row(&rest[..end])?);
            } else {
                partial.extend_from_slice(&rest[..end]);
                rows.push(parse_copy_row(&partial)?);
                partial.clear();
            }
            rest = &rest[end + 1..];
        }
        partial.extend_from_slice(rest);
    }
    if !partial.is_empty() {
        bail!("COPY output ends inside a row");
    }
    Ok(())
}

/// One line of `COPY … TO STDOUT` text output (without its newline) as a row.
fn parse_copy_row(line: &[u8]) -> anyhow::Result<AuditRow> {
    let mut start = 0;
    let mut tabs = memchr::memchr_iter(b'\t', line).chain(std::iter::once(line.len()));
    let mut fields = std::iter::from_fn(|| {
        let end = tabs.next()?;
        let field = &line[start..end];
        start = end + 1;
        Some(field)
    });
    let mut next = |name: &str| {
        fields
            .next()
            .with_context(|| format!("COPY row without {name}"))
    };
    let transaction_id = copy_int(next("transaction_id")?)?;
    let position = copy_int(next("position")?)?;
    let aggregate_type = copy_text(next("aggregate_type")?)?;
    let aggregate_id = copy_text(next("aggregate_id")?)?;
    let sequence = copy_int(next("sequence")?)?;
    let event_type = copy_text(next("event_type")?)?;
    let event_version = copy_text(next("event_version")?)?;
    let payload = copy_text(next("payload")?)?;
    let metadata = copy_text(next("metadata")?)?;
    if fields.next().is_some() {
        bail!("COPY row with more columns than asked for");
    }
    Ok(AuditRow {
        transaction_id,
        position,
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
        event_version,
        payload,
        metadata,
    })
}

fn copy_int(field: &[u8]) -> anyhow::Result<i64> {
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .with_context(|| {
            format!(
                "COPY field {:?} is not an integer",
                String::from_utf8_lossy(field)
            )
        })
}

/// A text field of `COPY` text output, its backslash escapes undone (`COPY TO` writes `\\`, `\n`,
/// `\r`, `\t`, `\b`, `\f`, `\v`; `\N` is NULL, which no column read here can be).
fn copy_text(field: &[u8]) -> anyhow::Result<String> {
    let mut rest = field;
    let Some(first) = memchr::memchr(b'\\', rest) else {
        return String::from_utf8(field.to_vec()).context("COPY text is not UTF-8");
    };
    // The runs between escapes are copied whole (JSON text escapes its own newlines, so a
    // payload holding one has a backslash for every such character).
    let mut out = Vec::with_capacity(field.len());
    let mut at = first;
    loop {
        out.extend_from_slice(&rest[..at]);
        out.push(match rest.get(at + 1) {
            Some(b'\\') => b'\\',
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'v') => 0x0b,
            other => bail!(
                "COPY text with an unexpected escape \\{}",
                other.map_or(String::new(), |b| char::from(*b).to_string())
            ),
        });
        rest = &rest[at + 2..];
        match memchr::memchr(b'\\', rest) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.extend_from_slice(rest);
    String::from_utf8(out).context("COPY text is not UTF-8")
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
    /// Emptied pages handed back with [`RowPages::recycle`], refilled by the next fetches (a
    /// page is ~1 MB: allocating one afresh per page costs page faults).
    spare: Vec<Vec<AuditRow>>,
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
            spare: Vec::new(),
        };
        pages.fetch_after((-1, 0));
        Ok(pages)
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Hands back a page the caller has emptied, for a later fetch to fill.
    pub fn recycle(&mut self, mut page: Vec<AuditRow>) {
        page.clear();
        if self.spare.len() < 2 {
            self.spare.push(page);
        }
    }

    fn fetch_after(&mut self, after: (i64, i64)) {
        if self.seen >= self.total {
            return;
        }
        let database = self.database.clone();
        let filter = self.filter.clone();
        let rows = self.spare.pop().unwrap_or_default();
        let handle =
            tokio::spawn(
                async move { page_after_into(&database, &filter, after, PAGE, rows).await },
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_split_into_their_columns_with_escapes_undone() {
        // A JSON escape is doubled by COPY; a raw tab in a value is written as `\t`.
        let row = parse_copy_row(
            b"7\t3\trun\tr-1\t2\trun.started\t1.0\t{\"a\":\"x\\\\ty\"}\t{\"k\":\"a\\tb\"}",
        )
        .unwrap();
        assert_eq!((row.transaction_id, row.position, row.sequence), (7, 3, 2));
        assert_eq!(
            (row.aggregate_type.as_str(), row.aggregate_id.as_str()),
            ("run", "r-1")
        );
        assert_eq!(
            (row.event_type.as_str(), row.event_version.as_str()),
            ("run.started", "1.0")
        );
        assert_eq!(row.payload, r#"{"a":"x\ty"}"#);
        assert_eq!(row.metadata, "{\"k\":\"a\tb\"}");
        // An empty last column is a column.
        assert_eq!(
            parse_copy_row(b"1\t1\tt\ti\t1\te\tv\tp\t")
                .unwrap()
                .metadata,
            ""
        );
    }

    #[test]
    fn copy_text_undoes_every_escape_wherever_it_is() {
        assert_eq!(copy_text(b"plain").unwrap(), "plain");
        assert_eq!(copy_text(b"").unwrap(), "");
        assert_eq!(
            copy_text(b"\\\\a\\n\\r\\tb\\b\\f\\v\\\\").unwrap(),
            "\\a\n\r\tb\u{8}\u{c}\u{b}\\"
        );
        assert_eq!(copy_text(b"\\n\\n").unwrap(), "\n\n");
        assert_eq!(copy_text("é\\tü".as_bytes()).unwrap(), "é\tü");
        assert!(copy_text(b"dangling\\").is_err());
        assert!(copy_text(b"\\N").is_err());
        assert!(copy_text(b"\\x").is_err());
        assert!(copy_text(b"\\n\xff").is_err());
    }

    #[test]
    fn copy_rows_with_other_column_counts_are_refused() {
        assert!(parse_copy_row(b"1\t1\tt\ti\t1\te\tv\tp").is_err());
        assert!(parse_copy_row(b"1\t1\tt\ti\t1\te\tv\tp\tm\textra").is_err());
        assert!(parse_copy_row(b"").is_err());
        assert!(parse_copy_row(b"x\t1\tt\ti\t1\te\tv\tp\tm").is_err());
    }
}
