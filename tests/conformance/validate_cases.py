"""Check the conformance corpus in cases/*.toml (not a test; run it after editing cases).

    python3 tests/conformance/validate_cases.py

It checks that every file parses, ids are unique, every case has the required keys, and that
h11 parses every status-200 request to the method/target/headers/body the case expects.
rrproxy is stricter than h11, so h11 accepting an invalid case is expected; the few valid
cases where h11 itself differs are listed (the server has to cover those on top of h11).
"""

from __future__ import annotations

import collections
import pathlib
import sys
import tomllib

import h11

CASES_DIR = pathlib.Path(__file__).with_name("cases")
SENTINEL = b"GET /__sentinel HTTP/1.1\r\nHost: x\r\n\r\n"
REQUIRED = ("id", "source", "request", "status", "closed")
VALID_ONLY = ("method", "target", "headers", "body")
ALLOWED = {*REQUIRED, *VALID_ONLY, "options", "sentinel", "note"}


def h11_first_request(data: bytes) -> tuple[str, str, list[list[str]], str]:
    # rrproxy skips empty lines before a request line (RFC 9112 §2.2); h11 does not.
    while data.startswith(b"\r\n"):
        data = data[2:]
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    request = None
    body = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise RuntimeError(f"unexpected h11 event {event!r}")
    assert request is not None
    headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers]
    return (
        request.method.decode("latin-1"),
        request.target.decode("latin-1"),
        headers,
        body.decode("latin-1"),
    )


def main() -> int:
    problems: list[str] = []
    h11_differs: list[str] = []
    seen: set[str] = set()
    counts: dict[str, list[int]] = collections.OrderedDict()
    for path in sorted(CASES_DIR.glob("*.toml")):
        with path.open("rb") as f:
            doc = tomllib.load(f)
        if set(doc) != {"case"}:
            problems.append(f"{path.name}: top level must be [[case]] tables only")
            continue
        tally = counts.setdefault(path.stem, [0, 0])
        for case in doc["case"]:
            cid = case.get("id", "?")
            problems += [f"{cid}: missing {k}" for k in REQUIRED if k not in case]
            if set(case) - ALLOWED:
                problems.append(f"{cid}: unknown keys {sorted(set(case) - ALLOWED)}")
            if cid in seen:
                problems.append(f"{cid}: duplicate id")
            seen.add(cid)
            if case.get("status") != 200:
                tally[1] += 1
                if any(k in case for k in VALID_ONLY):
                    problems.append(f"{cid}: method/target/headers/body on an error case")
                continue
            tally[0] += 1
            problems += [f"{cid}: status 200 without {k}" for k in VALID_ONLY if k not in case]
            raw = case["request"].encode("latin-1")
            if case.get("sentinel", True):
                raw += SENTINEL
            want = (case["method"], case["target"], case["headers"], case["body"])
            try:
                got = h11_first_request(raw)
            except h11.RemoteProtocolError as exc:
                h11_differs.append(f"{cid}: h11 rejects it ({exc})")
                continue
            if got != want:
                h11_differs.append(f"{cid}: h11 sees {got!r}")
    for name, (valid, invalid) in counts.items():
        print(f"{name:26s} valid {valid:3d}  invalid {invalid:3d}")
    print(f"{len(seen)} cases")
    for line in h11_differs:
        print("h11 differs:", line)
    for line in problems:
        print("PROBLEM:", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
