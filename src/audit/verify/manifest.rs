//! The manifest line (the hash of every byte before it, and the counts) and the signatures of
//! receipts and manifest.

use engine::artifacts::signature::{verify_receipt_signature, ReceiptSignature};
use serde_json::Value;

use super::{FindingKind, Verifier};
use crate::audit::export::manifest_digest;

impl Verifier {
    pub(super) fn check_signature(
        &mut self,
        n: usize,
        what: &str,
        signature: &Value,
        signed: &str,
    ) {
        let parsed: Result<ReceiptSignature, _> = serde_json::from_value(signature.clone());
        let problem = match parsed {
            Err(e) => Some(format!("{what}: malformed signature: {e}")),
            Ok(sig) if sig.signed_sha256 != signed => Some(format!(
                "{what}: the signature signs {}, not {signed}",
                sig.signed_sha256
            )),
            Ok(sig) => match verify_receipt_signature(&sig) {
                Ok(true) => {
                    if let Some(expected) = &self.expected_signer {
                        if *expected != sig.signer_pubkey {
                            Some(format!(
                                "{what}: signed by {}, expected {expected}",
                                sig.signer_pubkey
                            ))
                        } else {
                            None
                        }
                    } else {
                        None
                    }
                }
                Ok(false) => Some(format!(
                    "{what}: the signature does not verify with signer_pubkey {}",
                    sig.signer_pubkey
                )),
                Err(e) => Some(format!("{what}: {e}")),
            },
        };
        if let Some(message) = problem {
            self.find(Some(n), FindingKind::BadSignature, message);
        }
    }

    pub(super) fn manifest(&mut self, n: usize, manifest: &Value, bundle_sha256: &str) {
        let stated = manifest
            .get("bundle_sha256")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if stated != bundle_sha256 {
            self.find(Some(n), FindingKind::BundleHashMismatch, format!("the bytes before the manifest hash to {bundle_sha256}, the manifest says {stated}"));
        }
        let counts = manifest.get("counts");
        let expect = |key: &str| counts.and_then(|c| c.get(key)).and_then(Value::as_u64);
        for (key, actual) in [
            ("events", self.report.events),
            ("aggregates", self.aggregates.len() as u64),
            ("receipts", self.report.receipts_checked),
            ("replays", self.report.replays_checked),
        ] {
            if expect(key) != Some(actual) {
                self.find(
                    Some(n),
                    FindingKind::CountMismatch,
                    format!(
                        "the manifest counts {} {key}, the bundle holds {actual}",
                        expect(key).map_or("no".into(), |c| c.to_string())
                    ),
                );
            }
        }
        match manifest.get("signature") {
            Some(signature) => {
                let digest = manifest_digest(manifest);
                self.check_signature(n, "manifest", signature, &digest);
                self.report.signed_by = signature
                    .get("signer_pubkey")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            None if self.expected_signer.is_some() => self.find(
                Some(n),
                FindingKind::BadSignature,
                "the manifest is not signed".into(),
            ),
            None => {}
        }
    }
}
