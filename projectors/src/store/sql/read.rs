//! The gateway's reads, each one statement so it sees one snapshot: topic states, the stream
//! after a cursor (checked against the floor in the same snapshot), and hydration (documents as
//! of the head they are returned with).

use super::rows::{doc_row, stream_row, topic_state, ROW_COLUMNS};
use super::SqlStore;
use crate::model::OwnerFilter;
use crate::store::dialect::{Arg, Columns, Dialect};
use crate::store::{
    to_i64, DocRow, HydratePage, Hydration, ProjectorSpec, ReadError, StoreError, StreamPage,
    Target, TopicState,
};

/// The owner rule over alias `x`, with `$n` (any), `$n+1` (user), `$n+2` (guest), `$n+3` (org)
/// bound by [`owner_args`].
fn owner_clause(n: usize) -> String {
    let (user, guest, org) = (n + 1, n + 2, n + 3);
    format!(
        "(${n} OR ((x.owner_user_id = ${user} OR x.owner_guest_scope = ${guest}) \
          AND x.owner_org_id IS NOT DISTINCT FROM ${org}))"
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
