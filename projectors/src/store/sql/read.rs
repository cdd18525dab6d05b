//! The gateway's reads, each one statement so it sees one snapshot: topic states, the stream
//! after a cursor (checked against the floor in the same snapshot), and hydration (documents as
//! of the head they are returned with).

use super::rows::{doc_row, stream_row, topic_state, ROW_COLUMNS};
use super::SqlStore;
use crate::model::OwnerFilter;
use crate::store::dialect::{Arg, Columns, Dialect};
use crate::store::{
    to_i64, to_u64, update_object as wire, DocRow, HydratePage, Hydration, JoinedPage,
    ProjectorSpec, ReadError, StoreError, StreamPage, Target, TopicState,
};

/// The owner rule over alias `x`, with `$n` (any), `$n+1` (user), `$n+2` (guest), `$n+3` (org)
/// bound by [`owner_args`].
///
/// The org test is `IS NOT DISTINCT FROM` spelled out: PostgreSQL cannot estimate that operator
/// and took it to match almost nothing, so it planned a stream page as a scan of every row after
/// the cursor plus a sort instead of walking the `(topic, watermark)` key to the page's end
/// (16.7 ms instead of 2.7 ms for a 1,000-row page 15,000 rows from the head, and a whole
/// replay quadratic in its length; docs/BENCHMARKS.md § fanout).
fn owner_clause(n: usize) -> String {
    let (user, guest, org) = (n + 1, n + 2, n + 3);
    format!(
        "(${n} OR ((x.owner_user_id = ${user} OR x.owner_guest_scope = ${guest}) \
          AND (x.owner_org_id = ${org} OR (x.owner_org_id IS NULL AND ${org} IS NULL))))"
    )
}

fn owner_args(filter: &OwnerFilter) -> [Arg<'_>; 4] {
    match filter {
        OwnerFilter::Any => [
            Arg::Bool(true),
            Arg::OptText(None),
            Arg::OptText(None),
            Arg::OptText(None),
        ],
        OwnerFilter::Principal {
            user_id,
            guest_scope,
            org_id,
        } => [
            Arg::Bool(false),
            Arg::OptText(user_id.as_deref()),
            Arg::OptText(guest_scope.as_deref()),
            Arg::OptText(org_id.as_deref()),
        ],
    }
}

/// Whether `watermarks` (comma-separated) are `rows` strictly ascending values ending at `last`.
fn ascending(watermarks: &str, rows: usize, last: u64) -> bool {
    let mut seen = 0usize;
    let mut previous = 0u64;
    for part in watermarks.split(',').filter(|p| !p.is_empty()) {
        match part.parse::<u64>() {
            Ok(w) if seen == 0 || w > previous => {
                previous = w;
                seen += 1;
            }
            _ => return false,
        }
    }
    seen == rows && (rows == 0 || previous == last)
}

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl<D: Dialect> SqlStore<D> {
    pub(in crate::store) async fn topic_states(
        &self,
        topics: &[&str],
    ) -> Result<Vec<TopicState>, StoreError> {
        let names: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let sql = format!(
            "SELECT topic, head_watermark, retention_floor, epoch, epoch_start
               FROM {} WHERE topic {}",
            self.topics,
            D::in_list(1)
        );
        let mut found = std::collections::HashMap::new();
        for row in &self.read(&sql, &[Arg::Texts(&names)]).await? {
            let topic = row.text("topic")?;
            let state = topic_state(&topic, row)?;
            found.insert(topic, state);
        }
        Ok(topics
            .iter()
            .map(|t| {
                found.remove(*t).unwrap_or_else(|| TopicState {
                    topic: (*t).to_owned(),
                    epoch: 1,
                    ..TopicState::default()
                })
            })
            .collect())
    }

    pub(in crate::store) async fn read_stream(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        filter: &OwnerFilter,
    ) -> Result<StreamPage, ReadError> {
        // One statement, so one snapshot: the floor is checked against the rows it returns, and
        // the head returned with them is the one they are complete up to.
        let sql = format!(
            "SELECT t.head_watermark, t.retention_floor, t.epoch, t.epoch_start, s.*
               FROM {} t
               LEFT JOIN (
                    SELECT {ROW_COLUMNS} FROM {} x
                     WHERE x.topic = $1 AND x.watermark > $2 AND {}
                     ORDER BY x.watermark
                     LIMIT $3) s ON $2 >= t.retention_floor
              WHERE t.topic = $1
              ORDER BY s.watermark",
            self.topics,
            self.stream,
            owner_clause(4)
        );
        let [any, user, guest, org] = owner_args(filter);
        let args = [
            Arg::Text(topic),
            Arg::Int(to_i64(after)),
            Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
            any,
            user,
            guest,
            org,
        ];
        let rows = self.read(&sql, &args).await?;
        let Some(first) = rows.first() else {
            // No topic row yet: nothing was ever written to it.
            return Ok(StreamPage {
                state: TopicState {
                    topic: topic.to_owned(),
                    epoch: 1,
                    ..TopicState::default()
                },
                rows: Vec::new(),
            });
        };
        let state = topic_state(topic, first)?;
        if after < state.retention_floor {
            return Err(ReadError::Stale { after, state });
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.opt_text("doc_key")?.is_some() {
                out.push(stream_row(topic, row)?);
            }
        }
        Ok(StreamPage { state, rows: out })
    }

    /// A joined page ([`crate::store::SyncStore::read_stream_joined`]), first without a sort
    /// (unless `sorted`), then sorted if that came back out of order.
    pub(in crate::store) async fn read_stream_joined(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        filter: &OwnerFilter,
        max_update_bytes: usize,
        sorted: bool,
    ) -> Result<JoinedPage, ReadError> {
        let [any, user, guest, org] = owner_args(filter);
        let prefix = format!(
            "{}{}{}",
            wire::TOPIC,
            serde_json::to_string(topic).expect("strings serialize"),
            wire::DOC_KEY
        );
        let args = [
            Arg::Text(topic),
            Arg::Int(to_i64(after)),
            Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
            any,
            user,
            guest,
            org,
            Arg::Int(i64::try_from(max_update_bytes).unwrap_or(i64::MAX)),
            Arg::Text(&prefix),
        ];
        // Joined in whatever order the database aggregates the page in (no sort of ~1 KiB
        // texts), which is the watermark order in practice but not by contract: the watermarks
        // joined in the same pass show the order, and a page out of order is read again with
        // the order spelled out.
        let (page, watermarks) = self.joined_page(topic, after, &args, sorted).await?;
        if sorted || ascending(&watermarks, page.rows, page.last_watermark) {
            return Ok(page);
        }
        Ok(self.joined_page(topic, after, &args, true).await?.0)
    }

    /// One run of [`SqlStore::joined_sql`], and the page's watermarks as joined.
    async fn joined_page(
        &self,
        topic: &str,
        after: u64,
        args: &[Arg<'_>],
        ordered: bool,
    ) -> Result<(JoinedPage, String), ReadError> {
        let rows = self.read(&self.joined_sql(ordered), args).await?;
        let Some(row) = rows.first() else {
            // No topic row yet: nothing was ever written to it.
            let state = TopicState {
                topic: topic.to_owned(),
                epoch: 1,
                ..TopicState::default()
            };
            return Ok((JoinedPage::empty(state), String::new()));
        };
        let state = topic_state(topic, row)?;
        if after < state.retention_floor {
            return Err(ReadError::Stale { after, state });
        }
        let count = |column: &str| -> Result<u64, StoreError> {
            match row.opt_int(column)? {
                Some(n) => to_u64(n, column),
                None => Ok(0),
            }
        };
        let page = JoinedPage {
            rows: usize::try_from(count("page_rows")?).unwrap_or(usize::MAX),
            last_watermark: count("last_watermark")?,
            damaged: usize::try_from(count("damaged")?).unwrap_or(usize::MAX),
            json: row.opt_text("json")?.unwrap_or_default(),
            state,
        };
        Ok((page, row.opt_text("watermarks")?.unwrap_or_default()))
    }

    /// [`SqlStore::read_stream_joined`]'s statement: `read_stream`'s page aggregated into one
    /// row, its update objects built and joined by the database (a page of a thousand rows is one
    /// row to decode), and the topic's state joined to that one row instead of repeated per row
    /// and sorted with it. The objects are built above the `LIMIT`, so only the page's rows pay
    /// for them whatever plan finds the page. One statement, so one snapshot, as in
    /// `read_stream`.
    fn joined_sql(&self, ordered: bool) -> String {
        let payload = "CAST(x.payload AS TEXT)";
        let pointer = format!("octet_length({payload}) > $8");
        let object = [
            "$9".to_owned(),
            D::json_quote("x.doc_key"),
            literal(wire::DOC_VERSION),
            "CAST(x.doc_version AS TEXT)".to_owned(),
            literal(wire::PAYLOAD),
            format!(
                "CASE WHEN {pointer} THEN {} ELSE {payload} END",
                literal(wire::POINTER_PAYLOAD)
            ),
            literal(wire::PAYLOAD_HASH),
            D::json_quote("x.payload_hash"),
            literal(wire::WATERMARK),
            "CAST(x.watermark AS TEXT)".to_owned(),
            literal(wire::HYDRATION_REQUIRED),
            format!("CASE WHEN {pointer} THEN 'true' ELSE 'false' END"),
            literal(wire::END),
        ]
        .join(", ");
        let order = ordered.then_some("j.watermark");
        format!(
            "SELECT t.head_watermark, t.retention_floor, t.epoch, t.epoch_start,
                    p.page_rows, p.last_watermark, p.damaged, p.json, p.watermarks
               FROM {} t
               LEFT JOIN (
                    SELECT count(*) AS page_rows, max(j.watermark) AS last_watermark,
                           sum(j.damaged) AS damaged, {} AS json, {} AS watermarks
                      FROM (SELECT x.watermark, concat({object}) AS object,
                                   CASE WHEN {} THEN 0 ELSE 1 END AS damaged
                              FROM (SELECT x.watermark, x.doc_key, x.doc_version, x.payload,
                                           x.payload_hash
                                      FROM {} x
                                     WHERE x.topic = $1 AND x.watermark > $2 AND {}
                                     ORDER BY x.watermark
                                     LIMIT $3) x) j) p ON $2 >= t.retention_floor
              WHERE t.topic = $1",
            self.topics,
            D::join_commas("j.object", order),
            D::join_commas("CAST(j.watermark AS TEXT)", order),
            D::braced(payload),
            self.stream,
            owner_clause(4)
        )
    }

    pub(in crate::store) async fn hydrate(
        &self,
        spec: &ProjectorSpec,
        doc_key: Option<&str>,
        page: HydratePage<'_>,
        filter: &OwnerFilter,
    ) -> Result<Hydration, ReadError> {
        // One statement, so one snapshot: the head is the one the documents are as of.
        let bytes = D::BYTE_ORDER;
        let sql = format!(
            "SELECT coalesce(t.head_watermark, 0) AS head_watermark, d.*
               FROM (SELECT CAST($1 AS TEXT) AS topic) q
               LEFT JOIN {} t ON t.topic = q.topic
               LEFT JOIN (
                    SELECT {ROW_COLUMNS} FROM {} x
                     WHERE ($2 IS NULL OR x.doc_key = $2) AND {}
                       AND ($7 IS NULL OR x.doc_key{bytes} > $7)
                     ORDER BY x.doc_key{bytes}
                     LIMIT $8) d ON true
              ORDER BY d.doc_key{bytes}",
            self.topics,
            Self::docs(spec, Target::Live),
            owner_clause(3)
        );
        let [any, user, guest, org] = owner_args(filter);
        let args = [
            Arg::Text(spec.topic),
            Arg::OptText(doc_key),
            any,
            user,
            guest,
            org,
            Arg::OptText(page.after),
            Arg::Int(page.fetch_limit()),
        ];
        let rows = self.read(&sql, &args).await?;
        let watermark = match rows.first() {
            Some(row) => row.uint("head_watermark")?,
            None => 0,
        };
        let mut docs = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.opt_text("doc_key")?.is_some() {
                docs.push(doc_row(row)?);
            }
        }
        let (docs, next_after) = page.finish(docs, |d| d.doc_key.as_str());
        Ok(Hydration {
            topic: spec.topic.to_owned(),
            watermark,
            docs,
            next_after,
        })
    }

    pub(in crate::store) async fn all_docs(
        &self,
        spec: &ProjectorSpec,
    ) -> Result<Vec<DocRow>, StoreError> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM {} ORDER BY doc_key{}",
            Self::docs(spec, Target::Live),
            D::BYTE_ORDER
        );
        self.read(&sql, &[]).await?.iter().map(doc_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{ascending, literal};

    #[test]
    fn a_joined_page_is_in_order_only_if_its_watermarks_ascend_to_its_last() {
        assert!(ascending("", 0, 0));
        assert!(ascending("7", 1, 7));
        assert!(ascending("3,4,9", 3, 9));
        assert!(!ascending("3,9,4", 3, 9), "out of order");
        assert!(!ascending("3,3,4", 3, 4), "a repeat");
        assert!(!ascending("3,4", 3, 4), "fewer than the page's rows");
        assert!(!ascending("3,4", 2, 5), "not ending at the page's last");
        assert!(!ascending("3,x", 2, 4), "not numbers");
        assert!(!ascending("", 1, 1));
    }

    #[test]
    fn literals_double_their_quotes() {
        assert_eq!(literal(",\"doc_key\":"), "',\"doc_key\":'");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
