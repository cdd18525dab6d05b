//! The dialect seam of the projection store's one SQL core ([`super::sql`]): what PostgreSQL and
//! SQLite spell differently, and nothing else. Table names (`runtime.x` in a schema,
//! `runtime_x` in the SQLite file), the payload column's type (`json` / text), row locks (SQLite's
//! `BEGIN IMMEDIATE` already holds the database's write lock), byte-order collation of doc keys,
//! how a list or a batch of rows is bound (PostgreSQL arrays and `unnest`, SQLite JSON and
//! `json_each`), how a write transaction starts, and the few functions a joined replay page is
//! built with (quoting a JSON string, joining texts, checking braces). Placeholders (`$n`),
//! `ON CONFLICT`, `RETURNING`, `IS NOT DISTINCT FROM`, `concat` and `CAST` are the same in both,
//! so statements are not.

use std::future::Future;

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::{ColumnIndex, Database, Decode, Postgres, Row, Sqlite, Type};

use super::{to_i64, to_u64, StoreError};
use crate::model::DocOwner;

/// A statement parameter: the only values the SQL core binds; each dialect binds them its way.
#[derive(Clone, Copy, Debug)]
pub(super) enum Arg<'a> {
    Int(i64),
    Bool(bool),
    Text(&'a str),
    OptText(Option<&'a str>),
    /// A list of texts, matched with [`Dialect::in_list`].
    Texts(&'a [String]),
    /// A batch of stream rows or documents, read with [`Dialect::rows`].
    Rows(&'a Rows),
}

/// A batch of stream rows or documents, column by column (PostgreSQL binds each column as one
/// array).
#[derive(Debug, Default)]
pub(super) struct Rows {
    watermarks: Vec<i64>,
    keys: Vec<String>,
    versions: Vec<i64>,
    payloads: Vec<String>,
    hashes: Vec<String>,
    users: Vec<Option<String>>,
    guests: Vec<Option<String>>,
    orgs: Vec<Option<String>>,
    projected: Vec<i64>,
}

impl Rows {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        watermark: u64,
        key: &str,
        version: u64,
        payload: &str,
        hash: &str,
        owner: &DocOwner,
        projected_at_ms: i64,
    ) {
        self.watermarks.push(to_i64(watermark));
        self.keys.push(key.to_owned());
        self.versions.push(to_i64(version));
        self.payloads.push(payload.to_owned());
        self.hashes.push(hash.to_owned());
        self.users.push(owner.user_id.clone());
        self.guests.push(owner.guest_scope.clone());
        self.orgs.push(owner.org_id.clone());
        self.projected.push(projected_at_ms);
    }

    /// The batch as a JSON array of `[w, k, v, p, h, u, g, o, t]` arrays (SQLite's bind).
    fn to_json(&self) -> String {
        let rows: Vec<_> = (0..self.keys.len())
            .map(|i| {
                (
                    self.watermarks[i],
                    &self.keys[i],
                    self.versions[i],
                    &self.payloads[i],
                    &self.hashes[i],
                    &self.users[i],
                    &self.guests[i],
                    &self.orgs[i],
                    self.projected[i],
                )
            })
            .collect();
        serde_json::to_string(&rows).expect("rows serialize")
    }
}

/// What the two backends spell differently.
pub(super) trait Dialect: Database<Row: Columns> {
    /// Prefix of every projection table name.
    const TABLES: &'static str;
    /// The SQL type of payload columns; payload text is bound as text and cast to it.
    const JSON: &'static str;
    /// Appended to a SELECT in a write transaction to lock the rows it read.
    const FOR_UPDATE: &'static str;
    /// Appended to a doc key to order and compare it by bytes (the order pages are read in).
    const BYTE_ORDER: &'static str;
    /// The statement that starts a write transaction.
    const BEGIN_WRITE: &'static str;

    /// A condition suffix matching a value against the [`Arg::Texts`] bound at `$n`.
    fn in_list(n: usize) -> String;

    /// A relation `r(w, k, v, p, h, u, g, o, t)` (watermark, key, version, payload, hash, user,
    /// guest, org, projected at) of the [`Arg::Rows`] bound at `$n`.
    fn rows(n: usize) -> String;

    /// The JSON string literal (quoted and escaped, as serde_json writes it) of text `expr`.
    fn json_quote(expr: &str) -> String;

    /// The texts of `expr` over a group, joined with commas: in the order of `order` when
    /// given, else in the order the group's rows are aggregated in (unspecified, and cheaper:
    /// no sort).
    fn join_commas(expr: &str, order: Option<&str>) -> String;

    /// Whether text `expr` starts with `{` and ends with `}` (a stored payload that is not an
    /// object is damaged; readers report it rather than send it).
    fn braced(expr: &str) -> String;

    /// Runs `sql` with `args` and returns its rows.
    fn fetch<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send + 'e;

    /// Runs `sql` with `args` and returns the number of rows it changed.
    fn execute<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'e;
}

impl Dialect for Postgres {
    const TABLES: &'static str = "runtime.";
    const JSON: &'static str = "json";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const BYTE_ORDER: &'static str = " COLLATE \"C\"";
    const BEGIN_WRITE: &'static str = "BEGIN";

    fn json_quote(expr: &str) -> String {
        format!("to_json({expr})::text")
    }

    fn join_commas(expr: &str, order: Option<&str>) -> String {
        match order {
            Some(order) => format!("string_agg({expr}, ',' ORDER BY {order})"),
            None => format!("string_agg({expr}, ',')"),
        }
    }

    fn braced(expr: &str) -> String {
        format!("(left({expr}, 1) = '{{' AND right({expr}, 1) = '}}')")
    }

    fn in_list(n: usize) -> String {
        format!("= ANY(${n})")
    }

    fn rows(n: usize) -> String {
        let [k, v, p, h, u, g, o, t] = std::array::from_fn(|i| n + 1 + i);
        format!(
            "unnest(${n}::bigint[], ${k}::text[], ${v}::bigint[], ${p}::text[], ${h}::text[], \
             ${u}::text[], ${g}::text[], ${o}::text[], ${t}::bigint[]) AS r(w, k, v, p, h, u, g, o, t)"
        )
    }

    async fn fetch<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> Result<Vec<Self::Row>, sqlx::Error> {
        args.iter()
            .fold(sqlx::query(sql), pg_bind)
            .fetch_all(conn)
            .await
    }

    async fn execute<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> Result<u64, sqlx::Error> {
        let done = args
            .iter()
            .fold(sqlx::query(sql), pg_bind)
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }
}

fn pg_bind<'q>(
    query: Query<'q, Postgres, PgArguments>,
    arg: &'q Arg<'q>,
) -> Query<'q, Postgres, PgArguments> {
    match *arg {
        Arg::Int(v) => query.bind(v),
        Arg::Bool(v) => query.bind(v),
        Arg::Text(v) => query.bind(v),
        Arg::OptText(v) => query.bind(v),
        Arg::Texts(v) => query.bind(v),
        Arg::Rows(r) => query
            .bind(&r.watermarks)
            .bind(&r.keys)
            .bind(&r.versions)
            .bind(&r.payloads)
            .bind(&r.hashes)
            .bind(&r.users)
            .bind(&r.guests)
            .bind(&r.orgs)
            .bind(&r.projected),
    }
}

impl Dialect for Sqlite {
    const TABLES: &'static str = "runtime_";
    const JSON: &'static str = "TEXT";
    const FOR_UPDATE: &'static str = "";
    /// SQLite's default BINARY collation already compares bytes.
    const BYTE_ORDER: &'static str = "";
    /// Takes the database's write lock up front, like journal appends.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    fn json_quote(expr: &str) -> String {
        format!("json_quote({expr})")
    }

    fn join_commas(expr: &str, order: Option<&str>) -> String {
        match order {
            Some(order) => format!("group_concat({expr}, ',' ORDER BY {order})"),
            None => format!("group_concat({expr}, ',')"),
        }
    }

    /// The last byte through a blob: `substr` of a text counts characters from the end, which
    /// scans the whole text.
    fn braced(expr: &str) -> String {
        format!("(substr({expr}, 1, 1) = '{{' AND substr(CAST({expr} AS BLOB), -1, 1) = X'7D')")
    }

    fn in_list(n: usize) -> String {
        format!("IN (SELECT value FROM json_each(${n}))")
    }

    fn rows(n: usize) -> String {
        format!(
            "(SELECT value ->> 0 AS w, value ->> 1 AS k, value ->> 2 AS v, value ->> 3 AS p, \
                     value ->> 4 AS h, value ->> 5 AS u, value ->> 6 AS g, value ->> 7 AS o, \
                     value ->> 8 AS t
                FROM json_each(${n})) AS r"
        )
    }

    async fn fetch<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> Result<Vec<Self::Row>, sqlx::Error> {
        args.iter()
            .fold(sqlx::query(sql), sqlite_bind)
            .fetch_all(conn)
            .await
    }

    async fn execute<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> Result<u64, sqlx::Error> {
        let done = args
            .iter()
            .fold(sqlx::query(sql), sqlite_bind)
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }
}

fn sqlite_bind<'q>(
    query: Query<'q, Sqlite, SqliteArguments<'q>>,
    arg: &'q Arg<'q>,
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    match *arg {
        Arg::Int(v) => query.bind(v),
        Arg::Bool(v) => query.bind(v),
        Arg::Text(v) => query.bind(v),
        Arg::OptText(v) => query.bind(v),
        Arg::Texts(v) => query.bind(serde_json::to_string(v).expect("texts serialize")),
        Arg::Rows(r) => query.bind(r.to_json()),
    }
}

/// Typed reads of a row's columns, the same on both backends' rows: the row decoders in
/// [`super::sql`] are written once against this.
pub(super) trait Columns {
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    /// A PostgreSQL `integer` column (an INTEGER in SQLite).
    fn int32(&self, column: &str) -> Result<i32, sqlx::Error>;
    fn opt_int32(&self, column: &str) -> Result<Option<i32>, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;

    /// A column that must not be negative (watermarks, versions, cursors, counts).
    fn uint(&self, column: &str) -> Result<u64, StoreError> {
        to_u64(self.int(column)?, column)
    }
}

impl<R> Columns for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.try_get(column)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(column)
    }
    fn int32(&self, column: &str) -> Result<i32, sqlx::Error> {
        self.try_get(column)
    }
    fn opt_int32(&self, column: &str) -> Result<Option<i32>, sqlx::Error> {
        self.try_get(column)
    }
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
        self.try_get(column)
    }
    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.try_get(column)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }
}
