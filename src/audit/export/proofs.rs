//! The audit tree's side of an export: the checkpoint a bundle is cut at, the consistency proof
//! it may carry, and each page's leaves and inclusion proofs.

use std::collections::HashMap;

use anyhow::{bail, Context};
use engine::audit_log::{AuditStore, Checkpoint};
use engine::GlobalCursor;
use serde_json::{json, Value};

use super::options::{Cut, ExportOptions};
use crate::audit::source::AuditRow;

/// The checkpoint the bundle is cut at (`options.cut`) and, with `options.consistency_from`, the
/// consistency proof from that tree size to it.
pub(super) async fn cut(
    store: &AuditStore,
    options: &ExportOptions,
) -> anyhow::Result<(Option<Checkpoint>, Option<Value>)> {
    let checkpoint = match &options.cut {
        Cut::Fresh(key) => {
            store.catch_up().await.context("extend the audit tree")?;
            store
                .checkpoint_now(key)
                .await
                .context("take a checkpoint")?
        }
        Cut::Latest => store
            .latest_checkpoint()
            .await
            .context("read the checkpoint")?,
        Cut::IntegrityOnly => None,
    };
    let consistency = match (&checkpoint, options.consistency_from) {
        (Some(cp), Some(from)) if from <= cp.tree_size => Some(json!({
            "from": from,
            "to": cp.tree_size,
            "proof": store
                .consistency_proof(from, cp.tree_size)
                .await
                .context("consistency proof")?
                .iter()
                .map(hex::encode)
                .collect::<Vec<_>>(),
        })),
        (Some(cp), Some(from)) => bail!(
            "--consistency-from {from} is beyond the bundle's checkpoint ({} events)",
            cp.tree_size
        ),
        _ => None,
    };
    Ok((checkpoint, consistency))
}

/// The rows of `page` the checkpoint reaches (those after the cut are left out), each with its
/// leaf, and with `per_event_proofs` the inclusion proof of each leaf, by leaf index.
pub(super) async fn prove_page(
    store: &AuditStore,
    page: Vec<AuditRow>,
    tree_size: Option<u64>,
    per_event_proofs: bool,
) -> anyhow::Result<(Vec<(AuditRow, Option<u64>)>, HashMap<u64, Vec<String>>)> {
    // Each row's leaf; rows the checkpoint does not reach are after the cut.
    let leaves = match tree_size {
        Some(_) => {
            let cursors: Vec<GlobalCursor> = page.iter().map(cursor_of).collect();
            store
                .leaves_at_cursors(&cursors)
                .await
                .context("read the rows' leaves")?
        }
        None => HashMap::new(),
    };
    let page: Vec<(AuditRow, Option<u64>)> = page
        .into_iter()
        .filter_map(|row| {
            let leaf = leaves.get(&cursor_of(&row)).copied();
            match tree_size {
                Some(size) if leaf.is_none_or(|l| l >= size) => None,
                _ => Some((row, leaf)),
            }
        })
        .collect();
    let proofs: HashMap<u64, Vec<String>> = match (tree_size, per_event_proofs) {
        (Some(size), true) => {
            let indices: Vec<u64> = page.iter().filter_map(|(_, l)| *l).collect();
            let proofs = store
                .inclusion_proofs(&indices, size)
                .await
                .context("inclusion proofs")?;
            indices
                .into_iter()
                .zip(proofs)
                .map(|(i, p)| (i, p.iter().map(hex::encode).collect()))
                .collect()
        }
        _ => HashMap::new(),
    };
    Ok((page, proofs))
}

/// A row's place in the journal's global order.
fn cursor_of(row: &AuditRow) -> GlobalCursor {
    GlobalCursor::new(row.transaction_id as u64, row.position as u64)
}
