"""Schemathesis hooks for erpstream's API test (tests/tests/openapi.rs).

An ERP webhook's signature is an HMAC of the exact body bytes, which schemathesis serializes
after every hook it offers has run. So the signing happens where the bytes are final: in the
HTTP adapter. A request whose X-Signature header is the configured placeholder ("sign-me",
see schemathesis.toml) is signed with the pipeline's webhook secret; every other value is
left as sent, so schemathesis's own probes without credentials or with wrong ones still reach
the pipeline unsigned and must be refused.
"""

import hashlib
import hmac
import os

import requests.adapters

PLACEHOLDER = "sign-me"
SECRET = os.environ["ERPSTREAM_TEST_ERP_SECRET"].encode()
_send = requests.adapters.HTTPAdapter.send


def _signed_send(self, request, *args, **kwargs):
    if request.headers.get("X-Signature") == PLACEHOLDER:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        request.headers["X-Signature"] = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return _send(self, request, *args, **kwargs)


requests.adapters.HTTPAdapter.send = _signed_send
