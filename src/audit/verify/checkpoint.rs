//! The bundle's place in the journal: its header's checkpoint (signed by a trusted key), each
//! event proven in that checkpoint's tree (or, for a whole-journal bundle, the tree rebuilt from
//! every leaf), and the journal extending an older checkpoint given with `--checkpoint`.

use engine::audit_log::leaf::event_leaf;
use engine::audit_log::merkle::{parse_hash, verify_consistency, verify_inclusion, Frontier, Hash};
use engine::audit_log::{Checkpoint, CheckpointError};
use serde_json::{Map, Value};

use super::{FindingKind, Verifier};

impl Verifier {
    /// The header's checkpoint: trusted, or a finding that says why not.
    pub(super) fn header_checkpoint(&mut self, n: usize, line: &Map<String, Value>) {
        if self.options.integrity_only {
            return;
        }
        let checkpoint = match line.get("checkpoint") {
            None | Some(Value::Null) => {
                self.find(
                    Some(n),
                    FindingKind::Untrusted,
                    "the bundle carries no checkpoint: nothing ties it to the journal (export it from a runtime with an audit key, or check it with --integrity-only)".into(),
                );
                return;
            }
            Some(value) => Checkpoint::from_json(value),
        };
        let checked = checkpoint.and_then(|cp| {
            if self.options.trusted_keys.is_empty() {
                return Err(CheckpointError::Untrusted {
                    signer: cp.signer().unwrap_or("nobody").to_owned(),
                });
            }
            cp.verify(&self.options.trusted_keys)?;
            let root = cp.root()?;
            Ok((cp, root))
        });
        match checked {
            Ok((cp, root)) => {
                if self.whole_journal {
                    self.frontier = Some(Frontier::new());
                }
                self.report.checkpoint = Some(cp.clone());
                self.checkpoint = Some((cp, root));
            }
            Err(e) => {
                let hint = if self.options.trusted_keys.is_empty() {
                    " (no trusted key: pass the runtime's audit public key with --trusted-key)"
                } else {
                    ""
                };
                self.find(
                    Some(n),
                    FindingKind::Untrusted,
                    format!("the bundle's checkpoint is not trusted: {e}{hint}"),
                );
            }
        }
    }

    /// Proves one event in the checkpoint's tree.
    pub(super) fn prove(
        &mut self,
        n: usize,
        name: &str,
        line: &Map<String, Value>,
        chain_hash: &str,
        disclosed_hash: &str,
    ) {
        let Some((checkpoint, root)) = &self.checkpoint else {
            return;
        };
        let size = checkpoint.tree_size;
        let leaf = event_leaf(chain_hash, disclosed_hash);
        let Some(index) = line.get("leaf_index").and_then(Value::as_u64) else {
            self.find(
                Some(n),
                FindingKind::NotInTree,
                format!("{name}: no leaf_index: the event is not proven in the checkpoint's tree"),
            );
            return;
        };
        if let Some(frontier) = &mut self.frontier {
            if index != frontier.size() {
                let message = format!(
                    "{name}: leaf {index} where leaf {} was due: a whole-journal bundle holds every leaf in order",
                    frontier.size()
                );
                self.find(Some(n), FindingKind::NotInTree, message);
                return;
            }
            frontier.push(leaf);
            self.report.events_proven += 1;
            self.check_old_prefix(n);
            return;
        }
        let proof: Option<Vec<Hash>> =
            line.get("inclusion")
                .and_then(Value::as_array)
                .and_then(|items| {
                    items
                        .iter()
                        .map(|h| h.as_str().and_then(|h| parse_hash(h).ok()))
                        .collect()
                });
        let Some(proof) = proof else {
            self.find(
                Some(n),
                FindingKind::NotInTree,
                format!("{name}: no inclusion proof against the checkpoint"),
            );
            return;
        };
        match verify_inclusion(&leaf, index, size, &proof, root) {
            Ok(()) => self.report.events_proven += 1,
            Err(e) => self.find(
                Some(n),
                FindingKind::NotInTree,
                format!("{name}: not leaf {index} of the checkpoint's tree of {size}: {e}"),
            ),
        }
    }

    /// Whole-journal bundles: the journal at the --checkpoint size must be the one it describes.
    fn check_old_prefix(&mut self, n: usize) {
        let (Some(old), Some(frontier)) = (&self.options.old_checkpoint, &self.frontier) else {
            return;
        };
        if frontier.size() != old.tree_size || self.old_root_seen {
            return;
        }
        self.old_root_seen = true;
        let root = hex::encode(frontier.root());
        if root != old.root_hash {
            let message = format!(
                "the journal's first {} events hash to root {root}, but checkpoint {} (of {}) says {}: events before it were changed, removed or reordered",
                old.tree_size, old.tree_size, old.timestamp, old.root_hash
            );
            self.find(Some(n), FindingKind::NotAppendOnly, message);
        }
    }

    /// After the manifest: the whole-journal root, and the --checkpoint consistency.
    pub(super) fn finish_tree(&mut self, manifest: Option<&Value>) {
        let Some((checkpoint, root)) = self.checkpoint.clone() else {
            return;
        };
        if let Some(frontier) = &self.frontier {
            if frontier.size() != checkpoint.tree_size || frontier.root() != root {
                let message = format!(
                    "the bundle's {} events rebuild root {}, but its checkpoint says {} events with root {}",
                    frontier.size(),
                    hex::encode(frontier.root()),
                    checkpoint.tree_size,
                    checkpoint.root_hash
                );
                self.find(None, FindingKind::NotInTree, message);
            }
        }
        let Some(old) = self.options.old_checkpoint.clone() else {
            return;
        };
        let problem = if old.journal_id != checkpoint.journal_id {
            Some(format!(
                "checkpoint {} is of journal {}, the bundle's of journal {}: the tree was rebuilt or this is another journal",
                old.tree_size, old.journal_id, checkpoint.journal_id
            ))
        } else if old.tree_size > checkpoint.tree_size {
            Some(format!(
                "the bundle's journal has {} events, fewer than the {} of checkpoint {}: events were deleted",
                checkpoint.tree_size, old.tree_size, old.timestamp
            ))
        } else if self.frontier.is_some() {
            // Checked while the leaves went past.
            None
        } else {
            let consistency = manifest.and_then(|m| m.get("consistency"));
            let from = consistency
                .and_then(|c| c.get("from"))
                .and_then(Value::as_u64);
            let proof: Option<Vec<Hash>> = consistency
                .and_then(|c| c.get("proof"))
                .and_then(Value::as_array)
                .and_then(|items| {
                    items
                        .iter()
                        .map(|h| h.as_str().and_then(|h| parse_hash(h).ok()))
                        .collect()
                });
            match (from, proof, old.root()) {
                (Some(from), Some(proof), Ok(old_root)) if from == old.tree_size => {
                    match verify_consistency(old.tree_size, checkpoint.tree_size, &old_root, &root, &proof) {
                        Ok(()) => None,
                        Err(e) => Some(format!(
                            "the bundle's checkpoint ({} events, root {}) does not extend checkpoint {} (root {}): {e}; proof [{}]",
                            checkpoint.tree_size,
                            checkpoint.root_hash,
                            old.tree_size,
                            old.root_hash,
                            proof.iter().map(hex::encode).collect::<Vec<_>>().join(", ")
                        )),
                    }
                }
                _ => Some(format!(
                    "the bundle carries no consistency proof from tree size {}: export it with --consistency-from {} (or ?consistency_from={})",
                    old.tree_size, old.tree_size, old.tree_size
                )),
            }
        };
        match problem {
            Some(message) => self.find(None, FindingKind::NotAppendOnly, message),
            None => {
                if self.frontier.is_some() && !self.old_root_seen && old.tree_size > 0 {
                    self.find(
                        None,
                        FindingKind::NotAppendOnly,
                        format!("the bundle never reached tree size {}", old.tree_size),
                    );
                } else {
                    self.report.extends = Some(old);
                }
            }
        }
    }
}
