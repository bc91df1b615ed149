"""`helm test`: one chat request through the release's Service is a miss, the same again a hit.

Run by the test hook pod (templates/tests/test-miss-then-hit.yaml) with the processor image's
Python, standard library only. Waits for the processor's /readyz to say the backend serves, sends a
prompt unique to this run (so it is never cached yet), then repeats it until a hit: stores happen
after the response, and with the memory backend every replica has its own cache, so a repeat may
land on another pod first. Exit 0 on miss then hit; otherwise 1 with what to check.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

CHAT_URL = os.environ["CHAT_URL"]
READY_URL = os.environ["READY_URL"]
MODEL = os.environ["MODEL"]
SCOPE_MODE = os.environ.get("SCOPE_MODE", "global")
SCOPE_HEADER = os.environ.get("SCOPE_HEADER", "x-tenant-id")
TRUST_CLIENT_HEADER = os.environ.get("TRUST_CLIENT_HEADER", "false") == "true"
READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT_SECONDS", "120"))
HIT_ATTEMPTS = int(os.environ.get("HIT_ATTEMPTS", "20"))


def readyz() -> dict:
    """The processor's /readyz (one pod behind the metrics Service), or why it is unreachable."""
    try:
        with urllib.request.urlopen(READY_URL, timeout=5) as response:
            return json.load(response)
    except (OSError, ValueError) as exc:
        return {"caching": False, "not_caching_because": f"{READY_URL} unreachable: {exc}"}


def wait_ready() -> dict:
    """Until the backend serves or READY_TIMEOUT passes; the last /readyz either way."""
    deadline = time.monotonic() + READY_TIMEOUT
    state = readyz()
    while not state.get("caching", True) and time.monotonic() < deadline:
        print(f"waiting for the cache backend: {state.get('not_caching_because', '')}".rstrip())
        time.sleep(5)
        state = readyz()
    return state


def chat(prompt: str) -> tuple[int, dict, str]:
    """POST one chat completion through the Service: (status, lower-case headers, body)."""
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": prompt}]}
    headers = {"content-type": "application/json"}
    if SCOPE_MODE == "authorization":
        headers["authorization"] = "Bearer helm-test"
    elif SCOPE_MODE == "header":
        headers[SCOPE_HEADER] = "helm-test"
    request = urllib.request.Request(CHAT_URL, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read().decode()
            return response.status, {k.lower(): v for k, v in response.headers.items()}, text
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, text


def explain_bypass(state: dict) -> str:
    """Why a request bypassed the cache, as far as the test can tell."""
    if SCOPE_MODE == "header" and not TRUST_CLIENT_HEADER:
        return (
            f"scope.mode=header: Envoy strips the client's {SCOPE_HEADER} (trustClientHeader=false), so a "
            "request without your trusted gateway has no scope (bypass reason no_scope)"
        )
    if not state.get("caching", True):
        return f"the backend is not ready: {state.get('not_caching_because', '')}".rstrip()
    return "see semantic_cache_bypass_total by reason on the metrics Service, or the processor's debug log"


def main() -> int:
    """Miss, then hit; 0 when both happened."""
    state = wait_ready()
    prompt = f"helm test {uuid.uuid4().hex[:12]}: reply with the single word ok"
    status, headers, body = chat(prompt)
    decision = headers.get("x-semantic-cache")
    print(f"request 1: HTTP {status}, x-semantic-cache: {decision}")
    if decision is None:
        print("FAIL: no x-semantic-cache header: the request did not pass the processor (is it running?)")
        return 1
    if decision == "bypass":
        reason = explain_bypass(state)
        if SCOPE_MODE == "header" and not TRUST_CLIENT_HEADER:
            # Expected in this mode: the entry point works; the cache needs the gateway's header.
            print(f"OK (bypass): {reason}")
            return 0
        print(f"FAIL: bypass: {reason}")
        return 1
    if decision != "miss" or status != 200:
        print(f"FAIL: expected a 200 miss, got {status} {decision}: {body[:300]}")
        if status != 200:
            print(f"the upstream refused the request: is model {MODEL!r} (upstream.servedModelName) served?")
        return 1
    for attempt in range(2, HIT_ATTEMPTS + 2):
        status, headers, body = chat(prompt)
        decision = headers.get("x-semantic-cache")
        print(f"request {attempt}: HTTP {status}, x-semantic-cache: {decision}")
        if decision == "hit":
            print(f"OK: miss then hit (similarity {headers.get('x-semantic-cache-similarity')})")
            return 0
        time.sleep(1)
    print(f"FAIL: no hit after {HIT_ATTEMPTS} repeats: {explain_bypass(readyz())}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
