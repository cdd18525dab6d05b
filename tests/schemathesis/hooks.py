"""Schemathesis hooks for the runtime's API fuzz run (tests/it/openapi.rs runs it; docs/http-api.md).

Internal signature tokens are single use (their nonce is consumed by the server), so a fixed
`--header` would be refused from the second request on: this auth provider mints a fresh
`X-OA-RUNTIME-SIGNATURE` token for every request, in the format of `engine::auth::mint`
(`v1.<b64url(claims JSON)>.<b64url(HMAC-SHA256(claims segment, secret))>`, unpadded), and sends the
principal header the token is bound to. Operations whose security is the Khala `sync_token` bearer
get the sync token the test minted instead.

Environment: OA_RUNTIME_SIGNATURE_SECRET (required), OA_FUZZ_USER_ID (default `1`),
OA_FUZZ_SYNC_TOKEN (a sync JWT for hydration; optional).
"""

import base64
import hashlib
import hmac
import json
import os
import time
import uuid

import schemathesis


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_internal_token(secret: bytes, user_id: str, ttl_secs: int = 300) -> str:
    """A single-use internal token bound to `user_id`, as `openagents-runtime token internal` mints."""
    now = int(time.time())
    claims = {"iat": now, "exp": now + ttl_secs, "nonce": uuid.uuid4().hex, "user_id": user_id}
    segment = _b64url(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    signature = _b64url(hmac.new(secret, segment.encode("ascii"), hashlib.sha256).digest())
    return f"v1.{segment}.{signature}"


def _uses_sync_token(operation) -> bool:
    security = operation.definition.raw.get("security")
    return bool(security) and any("sync_token" in requirement for requirement in security)


@schemathesis.auth(refresh_interval=None)
class RuntimeSignature:
    """A fresh token per request (`refresh_interval=None`: nothing is cached)."""

    def __init__(self):
        secret = os.environ.get("OA_RUNTIME_SIGNATURE_SECRET")
        if not secret:
            raise RuntimeError("OA_RUNTIME_SIGNATURE_SECRET is not set")
        self.secret = secret.encode("utf-8")
        self.user_id = os.environ.get("OA_FUZZ_USER_ID", "1")
        self.sync_token = os.environ.get("OA_FUZZ_SYNC_TOKEN", "")

    def get(self, case, context):
        if _uses_sync_token(context.operation):
            return ("sync", self.sync_token)
        return ("internal", mint_internal_token(self.secret, self.user_id))

    def set(self, case, data, context):
        kind, token = data
        case.headers = case.headers or {}
        if kind == "sync":
            case.headers["Authorization"] = f"Bearer {token}"
        else:
            case.headers["X-OA-RUNTIME-SIGNATURE"] = token
            case.headers.setdefault("x-oa-user-id", self.user_id)
