//! Writing bundle lines: a buffered writer that hashes each chunk on a blocking thread while the
//! next one is produced, and the event line with its fields in a fixed order.

use std::io::Write as _;
use std::sync::Arc;

use aggregates::canonical::{write_json_string, PrefixedSha256};
use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::audit::source::AuditRow;

/// Bytes buffered before a chunk is written and hashed.
const CHUNK: usize = 256 * 1024;

/// Buffers lines and writes them out in large chunks, hashing each chunk on a blocking thread
/// while the next one is being produced. Two buffers take turns (one filling, one being hashed),
/// so no chunk is copied or allocated afresh.
pub(super) struct LineWriter<W> {
    pub(super) out: W,
    pub(super) buffer: Vec<u8>,
    /// The bundle hash so far: either at hand, or inside the task hashing the last chunk. The task
    /// owns it (and that chunk) until it is awaited at the next flush (or at
    /// [`LineWriter::finish_hash`]).
    hasher: Hashing,
    pub(super) bytes: u64,
}

enum Hashing {
    Idle(PrefixedSha256),
    Busy(tokio::task::JoinHandle<(PrefixedSha256, Arc<Vec<u8>>)>),
}

impl Hashing {
    /// The hasher, and the last chunk's buffer when nothing else holds it.
    async fn take(self) -> anyhow::Result<(PrefixedSha256, Option<Vec<u8>>)> {
        match self {
            Hashing::Idle(hasher) => Ok((hasher, None)),
            Hashing::Busy(task) => {
                let (hasher, chunk) = task.await.context("hash task")?;
                Ok((hasher, Arc::try_unwrap(chunk).ok()))
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> LineWriter<W> {
    pub(super) fn new(out: W) -> Self {
        Self {
            out,
            buffer: Vec::with_capacity(2 * CHUNK),
            hasher: Hashing::Idle(PrefixedSha256::new()),
            bytes: 0,
        }
    }

    pub(super) async fn end_line(&mut self) -> anyhow::Result<()> {
        self.buffer.push(b'\n');
        if self.buffer.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    pub(super) async fn flush(&mut self) -> anyhow::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let previous = std::mem::replace(&mut self.hasher, Hashing::Idle(PrefixedSha256::new()));
        let (mut hasher, spare) = previous.take().await?;
        let next = match spare {
            Some(mut spare) => {
                spare.clear();
                spare
            }
            None => Vec::with_capacity(2 * CHUNK),
        };
        let chunk = Arc::new(std::mem::replace(&mut self.buffer, next));
        let to_hash = Arc::clone(&chunk);
        self.hasher = Hashing::Busy(tokio::task::spawn_blocking(move || {
            hasher.update(&to_hash);
            (hasher, to_hash)
        }));
        self.bytes += chunk.len() as u64;
        self.out
            .write_all(&chunk)
            .await
            .context("write the bundle")?;
        Ok(())
    }

    /// Flushes and returns the hash of everything written.
    pub(super) async fn finish_hash(&mut self) -> anyhow::Result<String> {
        self.flush().await?;
        let hashing = std::mem::replace(&mut self.hasher, Hashing::Idle(PrefixedSha256::new()));
        Ok(hashing.take().await?.0.finish())
    }

    /// Appends whole lines (each ending in `\n`).
    pub(super) async fn lines(&mut self, lines: &[u8]) -> anyhow::Result<()> {
        self.buffer.extend_from_slice(lines);
        if self.buffer.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    pub(super) async fn value_line(&mut self, value: &Value) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.buffer, value)?;
        self.end_line().await
    }
}

/// The event line, fields in a fixed order; `payload` embeds the stored text unless a reformatted
/// value is given (stored text spanning lines).
#[allow(clippy::too_many_arguments)]
pub(super) fn write_event_line(
    buf: &mut Vec<u8>,
    row: &AuditRow,
    recorded_at: Option<&str>,
    reformatted_payload: Option<&Value>,
    metadata: LineMetadata<'_>,
    content_hash: &str,
    prev: Option<&str>,
    chain_hash: &str,
    proof: &EventProof<'_>,
) -> anyhow::Result<()> {
    write!(
        buf,
        "{{\"type\":\"event\",\"position\":{},\"transaction_id\":{},\"aggregate_type\":",
        row.position, row.transaction_id
    )?;
    write_str(&row.aggregate_type, buf)?;
    buf.extend_from_slice(b",\"aggregate_id\":");
    write_str(&row.aggregate_id, buf)?;
    write!(buf, ",\"sequence\":{},\"event_type\":", row.sequence)?;
    write_str(&row.event_type, buf)?;
    buf.extend_from_slice(b",\"event_version\":");
    write_str(&row.event_version, buf)?;
    buf.extend_from_slice(b",\"recorded_at\":");
    match recorded_at {
        Some(at) => write_str(at, buf)?,
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"payload\":");
    match reformatted_payload {
        Some(p) => serde_json::to_writer(&mut *buf, p)?,
        None => buf.extend_from_slice(row.payload.as_bytes()),
    }
    buf.extend_from_slice(b",\"metadata\":");
    match metadata {
        LineMetadata::Text(text) => buf.extend_from_slice(text),
        LineMetadata::Value(value) => serde_json::to_writer(&mut *buf, value)?,
    }
    buf.extend_from_slice(b",\"content_hash\":");
    write_str(content_hash, buf)?;
    buf.extend_from_slice(b",\"prev_chain_hash\":");
    match prev {
        Some(p) => write_str(p, buf)?,
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"chain_hash\":");
    write_str(chain_hash, buf)?;
    if let Some((pointers, disclosed_hash)) = proof.redaction {
        buf.extend_from_slice(b",\"redacted\":");
        serde_json::to_writer(&mut *buf, pointers)?;
        buf.extend_from_slice(b",\"disclosed_hash\":");
        write_str(disclosed_hash, buf)?;
    }
    if let Some(index) = proof.leaf_index {
        write!(buf, ",\"leaf_index\":{index}")?;
    }
    if let Some(inclusion) = proof.inclusion {
        buf.extend_from_slice(b",\"inclusion\":");
        serde_json::to_writer(&mut *buf, inclusion)?;
    }
    buf.push(b'}');
    Ok(())
}

/// Writes `text` as a JSON string as serde_json does ([`write_json_string`]), copying it straight
/// through when nothing in it needs escaping (hashes, ids, types, times).
fn write_str(text: &str, buf: &mut Vec<u8>) -> std::io::Result<()> {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.reserve(text.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'"');
        Ok(())
    } else {
        write_json_string(text, buf)
    }
}

/// An event line's `metadata` (without the chain keys): JSON text already cut to shape, or a
/// value to serialise.
pub(super) enum LineMetadata<'a> {
    Text(&'a [u8]),
    Value(&'a Value),
}

/// What an event line carries besides the stored event: its redactions and its place in the
/// audit tree.
pub(super) struct EventProof<'a> {
    /// Pointers of the redacted fields and the disclosed content hash.
    pub(super) redaction: Option<(&'a [String], &'a str)>,
    pub(super) leaf_index: Option<u64>,
    /// Inclusion proof against the bundle's checkpoint (hex hashes).
    pub(super) inclusion: Option<&'a Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for text in [
            "",
            "sha256:00ff",
            "run/é ✓",
            "a\"b",
            "back\\slash",
            "line\nbreak",
            "\u{1}\u{1f}\u{7f}",
        ] {
            let mut ours = Vec::new();
            write_str(text, &mut ours).unwrap();
            assert_eq!(ours, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }
}
