//! The read-model half of `replay --journal`: the live database's documents, read as of each
//! projector's checkpoint, against the documents this build projects from the scratch copy of the
//! same journal prefix (doc key, version, payload hash, owner). Nothing is written to the live
//! database.
//!
//! A projector's stored documents are exactly the fold of the journal up to its checkpoint cursor
//! (documents and cursor move in one transaction; events it skips change no document), so a live
//! projector that lags, or a server that keeps running, is compared at its own cursor rather than
//! reported as drift: the copy pauses at each live cursor and the scratch projectors catch up to
//! that point (see [`super::journal_check`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use engine::journal::GlobalCursor;
use projectors::store::{DocRow, ProjectorSpec};
use projectors::{all_specs, DocOwner, SyncStore};

/// Times the live documents are re-read when the projector moved while they were read.
const SNAPSHOT_ATTEMPTS: usize = 10;

/// One live read model, consistent with its checkpoint.
#[derive(Clone, Debug)]
pub struct LiveModel {
    pub spec: ProjectorSpec,
    /// The live projector's checkpoint cursor the documents are consistent with.
    pub cursor: GlobalCursor,
    pub docs: Vec<DocRow>,
}

/// What the live database's projection state allows to compare.
#[derive(Clone, Debug, Default)]
pub struct LiveSnapshot {
    /// `false` when the live database has no projector checkpoint at all.
    pub projected: bool,
    /// The read models to compare.
    pub models: Vec<LiveModel>,
    /// Read models left out, and why (never run, built with another projection version, kept
    /// changing), one readable line each.
    pub notes: Vec<String>,
}

fn owner_text(owner: &DocOwner) -> String {
    let part = |name: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| format!("{name}={v}"))
            .unwrap_or_default()
    };
    let parts: Vec<String> = [
        part("user", &owner.user_id),
        part("guest", &owner.guest_scope),
        part("org", &owner.org_id),
    ]
    .into_iter()
    .filter(|p| !p.is_empty())
    .collect();
    if parts.is_empty() {
        "nobody".into()
    } else {
        parts.join(",")
    }
}

/// Reads every live read model this build knows, each consistent with its checkpoint: the
/// checkpoint is read before and after the documents, and the read is repeated while it moved.
///
/// # Errors
/// When the live store cannot be read.
pub async fn snapshot_live(store: &SyncStore) -> anyhow::Result<LiveSnapshot> {
    let checkpoints = store
        .checkpoints()
        .await
        .context("read the live projector checkpoints")?;
    let mut snapshot = LiveSnapshot {
        projected: !checkpoints.is_empty(),
        ..LiveSnapshot::default()
    };
    if !snapshot.projected {
        return Ok(snapshot);
    }
    let specs = all_specs();
    for checkpoint in &checkpoints {
        if !specs.iter().any(|s| s.name == checkpoint.projector) {
            snapshot.notes.push(format!(
                "the live database has projector {} ({}), which this build does not have",
                checkpoint.projector, checkpoint.topic
            ));
        }
    }
    'specs: for spec in specs {
        let Some(first) = checkpoints.iter().find(|c| c.projector == spec.name) else {
            snapshot.notes.push(format!(
                "read model {} has never been projected on the live database (not compared)",
                spec.topic
            ));
            continue;
        };
        if first.projection_version != spec.version {
            snapshot.notes.push(format!(
                "read model {} was built with projection version {}, this build has {}: serve \
                 rebuilds it when it starts (not compared)",
                spec.topic, first.projection_version, spec.version
            ));
            continue;
        }
        if first.rebuild.is_some() || first.rebuild_requested {
            snapshot.notes.push(format!(
                "read model {}: a full rebuild is requested or running on the live database; \
                 its current documents are compared",
                spec.topic
            ));
        }
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let before = store.checkpoint(spec.name).await?;
            let docs = store.all_docs(&spec).await?;
            let after = store.checkpoint(spec.name).await?;
            match (before, after) {
                (Some(before), Some(after)) if before.cursor == after.cursor => {
                    snapshot.models.push(LiveModel {
                        spec,
                        cursor: after.cursor,
                        docs,
                    });
                    continue 'specs;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        snapshot.notes.push(format!(
            "read model {} kept changing while it was read (a busy projector): not compared; \
             run the check again, or with the server stopped",
            spec.topic
        ));
    }
    Ok(snapshot)
}

/// The differences between a live read model and the one rebuilt from the same journal prefix,
/// one readable line each (each names the topic and the doc key).
pub fn compare(live: &LiveModel, rebuilt: &[DocRow]) -> Vec<String> {
    let spec = &live.spec;
    let rebuilt: BTreeMap<&str, &DocRow> =
        rebuilt.iter().map(|d| (d.doc_key.as_str(), d)).collect();
    let live_docs: BTreeMap<&str, &DocRow> =
        live.docs.iter().map(|d| (d.doc_key.as_str(), d)).collect();
    let keys: BTreeSet<&str> = rebuilt.keys().chain(live_docs.keys()).copied().collect();
    let mut problems = Vec::new();
    for key in keys {
        let at = format!("read model {} {key}", spec.topic);
        match (live_docs.get(key), rebuilt.get(key)) {
            (Some(l), Some(r)) => {
                let mut differences = Vec::new();
                if l.doc_version != r.doc_version {
                    differences.push(format!(
                        "doc_version live {} rebuilt {}",
                        l.doc_version, r.doc_version
                    ));
                }
                if l.payload_hash != r.payload_hash {
                    differences.push(format!(
                        "payload_hash live {} rebuilt {}",
                        l.payload_hash, r.payload_hash
                    ));
                }
                if l.owner != r.owner {
                    differences.push(format!(
                        "owner live {} rebuilt {}",
                        owner_text(&l.owner),
                        owner_text(&r.owner)
                    ));
                }
                if !differences.is_empty() {
                    problems.push(format!("{at}: {}", differences.join("; ")));
                }
            }
            (Some(l), None) => problems.push(format!(
                "{at}: in the live read model (version {}) but the journal projects no such document",
                l.doc_version
            )),
            // Event-history documents are pruned with their stream rows: absent is not drift.
            (None, Some(_)) if spec.docs_are_events => {}
            (None, Some(r)) => problems.push(format!(
                "{at}: missing from the live read model (rebuilt version {})",
                r.doc_version
            )),
            (None, None) => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, version: u64, hash: &str, user: &str) -> DocRow {
        DocRow {
            doc_key: key.into(),
            doc_version: version,
            payload: "{}".into(),
            payload_hash: hash.into(),
            watermark: version,
            owner: DocOwner::user(user),
            projected_at_ms: 0,
        }
    }

    fn model(events: bool, docs: Vec<DocRow>) -> LiveModel {
        LiveModel {
            spec: ProjectorSpec {
                name: "n",
                topic: "t",
                table: "x",
                version: 1,
                docs_are_events: events,
            },
            cursor: GlobalCursor::START,
            docs,
        }
    }

    #[test]
    fn equal_documents_are_no_drift_and_watermarks_are_not_compared() {
        let mut moved = row("a", 1, "h", "1");
        moved.watermark = 40;
        assert!(compare(&model(false, vec![moved]), &[row("a", 1, "h", "1")]).is_empty());
    }

    #[test]
    fn every_differing_field_and_missing_document_is_named() {
        let live = model(
            false,
            vec![row("a", 2, "h1", "1"), row("gone", 1, "h", "1")],
        );
        let rebuilt = [row("a", 3, "h2", "2"), row("new", 1, "h", "1")];
        assert_eq!(
            compare(&live, &rebuilt),
            vec![
                "read model t a: doc_version live 2 rebuilt 3; payload_hash live h1 rebuilt h2; \
                 owner live user=1 rebuilt user=2"
                    .to_owned(),
                "read model t gone: in the live read model (version 1) but the journal projects \
                 no such document"
                    .to_owned(),
                "read model t new: missing from the live read model (rebuilt version 1)".to_owned(),
            ]
        );
    }

    #[test]
    fn pruned_event_documents_are_not_drift() {
        let live = model(true, vec![]);
        assert!(compare(&live, &[row("w:1", 1, "h", "1")]).is_empty());
    }
}
