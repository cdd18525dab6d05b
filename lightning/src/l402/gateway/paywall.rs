//! The paywall: an unpaid request gets `402` with an invoice from LND `AddInvoice` and a macaroon
//! bound to its payment hash; a paid one shows `L402 <macaroon>:<preimage>`, checked here.

use aggregates::payment::Msat;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{error_json, GatewayRoute, L402Gateway};
use crate::l402::macaroon::Macaroon;

impl L402Gateway {
    /// Checks an `L402 <macaroon>:<preimage>` credential for `route`.
    pub(super) fn verify(
        &self,
        credential: &str,
        route: &GatewayRoute,
    ) -> Result<(), &'static str> {
        let (macaroon, preimage) = credential.rsplit_once(':').ok_or("malformed credential")?;
        let macaroon = Macaroon::from_base64(macaroon).map_err(|_| "malformed macaroon")?;
        macaroon
            .verify_signature(&self.config.root_key)
            .map_err(|_| "macaroon signature does not verify")?;
        let hash = macaroon
            .payment_hash()
            .ok_or("macaroon has no payment hash")?;
        let preimage = hex::decode(preimage.trim()).map_err(|_| "preimage is not hex")?;
        if preimage.len() != 32 || Sha256::digest(&preimage).as_slice() != hash {
            return Err("preimage does not match the payment hash");
        }
        for caveat in &macaroon.caveats {
            let (key, value) = caveat.split_once('=').ok_or("unknown caveat")?;
            match key {
                "services" => {
                    let ok = value
                        .split(',')
                        .any(|s| s.split(':').next() == Some(route.paywall_id.as_str()));
                    if !ok {
                        return Err("credential is for another paywall");
                    }
                }
                "valid_until" => {
                    let until: i64 = value.parse().map_err(|_| "bad valid_until caveat")?;
                    if chrono::Utc::now().timestamp() > until {
                        return Err("credential expired");
                    }
                }
                _ => return Err("unknown caveat"),
            }
        }
        Ok(())
    }

    pub(super) async fn challenge(&self, route: &GatewayRoute, smoke: bool) -> Response {
        let mut preimage = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut preimage);
        let created = self
            .node
            .add_invoice(
                Msat(route.amount_msats),
                &format!("L402 {}", route.id),
                self.config.invoice_expiry_secs,
                Some(preimage),
            )
            .await;
        let created = match created {
            Ok(created) => created,
            Err(error) => {
                tracing::warn!(route = %route.id, error.message = %error, "AddInvoice failed");
                return error_json(
                    StatusCode::BAD_GATEWAY,
                    "invoice_unavailable",
                    "cannot create an invoice",
                );
            }
        };
        let hash: [u8; 32] = hex::decode(created.payment_hash.as_str())
            .ok()
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 32]);
        let mut token_id = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut token_id);
        let valid_until = chrono::Utc::now().timestamp()
            + i64::try_from(self.config.invoice_expiry_secs).unwrap_or(3600);
        let macaroon = Macaroon::mint(
            &self.config.root_key,
            &self.config.location,
            Macaroon::l402_identifier(&hash, &token_id),
            vec![
                format!("services={}:0", route.paywall_id),
                format!("valid_until={valid_until}"),
            ],
        );
        let mac64 = macaroon.to_base64();
        let mut response = (
            StatusCode::PAYMENT_REQUIRED,
            json!({
                "ok": false,
                "error": { "code": "payment_required", "message": "payment required" },
                "invoice": created.payment_request,
                "amountMsats": route.amount_msats,
                "routeId": route.id,
            })
            .to_string(),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(value) = HeaderValue::from_str(&format!(
            "L402 macaroon=\"{mac64}\", invoice=\"{}\"",
            created.payment_request
        )) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if smoke {
            // Ops probes (reconcile) get a credential for this challenge, like the original's
            // `x-oa-smoke-auth`: proves macaroon verification and proxying without moving money.
            if let Ok(value) =
                HeaderValue::from_str(&format!("L402 {mac64}:{}", hex::encode(preimage)))
            {
                headers.insert("x-oa-smoke-auth", value);
            }
        }
        response
    }
}
