"""Schemathesis hooks of tests/integration/test_api_fuzz.py (loaded with
``SCHEMATHESIS_HOOKS``): every request the fuzzer sends is rewritten, just before it goes
out, so that nothing it registers can make a service contact a real host.

* ``address`` becomes a loopback literal (127.0.0.x) and ``ssh_port`` a loopback port
  where nothing listens (``LABFLEET_FUZZ_CLOSED_PORT``): registrations fail at connect;
* URLs (``url``, ``repo_url``, ``libvirt_uri``) point at that closed loopback port;
* e-mail ``addresses`` get a local recipient.

Host *names* (``hostname``, ``name``) are labels that labfleet never resolves, so they
keep the fuzzed text: that is where bad input hides.  Values of the wrong type are left
as they are (the request is then refused at validation, before any service is asked).
"""
from __future__ import annotations

import os
from typing import Any

import schemathesis

CLOSED_PORT = int(os.environ.get("LABFLEET_FUZZ_CLOSED_PORT", "9"))
LOOPBACK_URL = f"http://127.0.0.1:{CLOSED_PORT}/fuzz"


def _keep_local(body: Any) -> None:
    if isinstance(body, list):
        for item in body:
            _keep_local(item)
        return
    if not isinstance(body, dict):
        return
    for key, value in list(body.items()):
        if key == "address" and isinstance(value, str):
            body[key] = f"127.0.0.{1 + len(value) % 250}"
        elif key == "ssh_port" and isinstance(value, int) and not isinstance(value, bool):
            body[key] = CLOSED_PORT
        elif key in ("url", "repo_url") and isinstance(value, str):
            body[key] = LOOPBACK_URL
        elif key == "libvirt_uri" and isinstance(value, str):
            body[key] = f"qemu+ssh://fuzz@127.0.0.1:{CLOSED_PORT}/system"
        elif key == "addresses" and isinstance(value, list):
            body[key] = ["fuzz@localhost" if isinstance(v, str) else v for v in value]
        else:
            _keep_local(value)


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    _keep_local(case.body)
    if isinstance(case.query, dict):
        _keep_local(case.query)
