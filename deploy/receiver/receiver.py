#!/usr/bin/env python3
"""An example webhook receiver for hookq, standard library only.

It does what a receiver in production should do with hookq's requests:

* finds the app by the `X-Pusher-Key` header and checks `X-Pusher-Signature`,
  the hex HMAC-SHA256 of the exact request body under the app's secret
  (constant-time comparison); a bad or missing signature is answered 401;
* checks the envelope's `time_ms` is within 5 minutes of now (what Pusher's
  own libraries check), also 401 when it is not;
* de-duplicates: delivery is at least once, so the same event can arrive
  twice (a worker killed after sending but before acknowledging). With
  `webhooks.event_ids: true` every event carries an `id` that stays the same
  across re-sends; without it, this counts by the event's content;
* answers 200 quickly and logs one line per request (every event with
  RECEIVER_LOG_EVENTS=1).

Apps (key -> secret) come from the hookq config itself (RECEIVER_CONFIG, the
same file the workers read; plain JSON, no comments) and/or from
RECEIVER_APPS="key1:secret1,key2:secret2".

GET /stats returns the counts as JSON (the compose end-to-end test reads
them); GET /health answers "ok". Listens on 0.0.0.0:$PORT (default 8000).

For tests only, RECEIVER_CONTROL=1 adds POST /control/pause and
/control/resume: while paused, webhook requests wait (up to 30 s) before they
are processed and answered, so a test can kill a worker while it has
requests in flight.
"""

import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_SKEW_MS = 5 * 60 * 1000


def load_secrets():
    """key -> (app id, secret), from RECEIVER_CONFIG and RECEIVER_APPS."""
    secrets = {}
    path = os.environ.get("RECEIVER_CONFIG")
    if path:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        apps = config.get("app_manager", {}).get("array", {}).get("apps", [])
        for app in apps:
            secrets[app["key"]] = (app.get("id", app["key"]), app["secret"])
    for pair in filter(None, os.environ.get("RECEIVER_APPS", "").split(",")):
        key, _, secret = pair.partition(":")
        secrets[key.strip()] = (key.strip(), secret.strip())
    return secrets


class Stats:
    """Counts, shared by the request threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.rejected = 0  # bad signature, unknown key, stale time_ms, bad body
        self.events = 0  # deliveries of events in verified requests
        self.seen = Counter()  # (app, event id) -> deliveries
        self.names = Counter()
        self.webhook_ids = set()
        self.first_at = None
        self.last_at = None

    def record(self, app, events, webhook_id):
        now = time.time()
        duplicates = 0
        with self.lock:
            self.requests += 1
            self.first_at = self.first_at or now
            self.last_at = now
            if webhook_id:
                self.webhook_ids.add(webhook_id)
            for e in events:
                key = (app, event_key(e))
                self.seen[key] += 1
                if self.seen[key] > 1:
                    duplicates += 1
                self.names[e.get("name", "?")] += 1
                self.events += 1
        return duplicates

    def reject(self):
        with self.lock:
            self.requests += 1
            self.rejected += 1

    def snapshot(self):
        with self.lock:
            distinct = len(self.seen)
            return {
                "requests": self.requests,
                "rejected": self.rejected,
                "events": self.events,
                "distinct": distinct,
                "duplicates": self.events - distinct,
                "events_seen_more_than_once": sum(1 for n in self.seen.values() if n > 1),
                "batches": len(self.webhook_ids),
                "waiting": WAITING[0],
                "by_name": dict(self.names),
                "first_at": self.first_at,
                "last_at": self.last_at,
            }


def event_key(event):
    """hookq's per-event id when it is sent, else the event's whole content."""
    if event.get("id"):
        return event["id"]
    return json.dumps(event, sort_keys=True)


SECRETS = {}
STATS = Stats()
LOG_EVENTS = os.environ.get("RECEIVER_LOG_EVENTS") == "1"
CONTROL = os.environ.get("RECEIVER_CONTROL") == "1"
RUNNING = threading.Event()  # cleared while paused (RECEIVER_CONTROL)
RUNNING.set()
WAITING = [0]  # requests waiting while paused


def log(line):
    sys.stdout.write(time.strftime("%H:%M:%S ") + line + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as hookq's client expects
    disable_nagle_algorithm = True  # else ~40 ms per answer on a kept-alive connection
    server_version = "hookq-example-receiver"

    def answer(self, status, body, content_type="text/plain"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.answer(200, "ok\n")
        elif self.path == "/stats":
            self.answer(200, json.dumps(STATS.snapshot()) + "\n", "application/json")
        else:
            self.answer(404, "not found\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if CONTROL and self.path in ("/control/pause", "/control/resume"):
            (RUNNING.clear if self.path == "/control/pause" else RUNNING.set)()
            log(f"control: {self.path.rsplit('/', 1)[1]}d")
            return self.answer(200, "ok\n")
        if not RUNNING.is_set():
            with STATS.lock:
                WAITING[0] += 1
            RUNNING.wait(30)
            with STATS.lock:
                WAITING[0] -= 1
        key = self.headers.get("X-Pusher-Key", "")
        signature = self.headers.get("X-Pusher-Signature", "")
        app = SECRETS.get(key)
        if app is None:
            return self.refuse(f"unknown X-Pusher-Key {key!r}")
        expected = hmac.new(app[1].encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return self.refuse(f"{app[0]}: bad signature")
        try:
            envelope = json.loads(body)
            events = envelope["events"]
            skew = abs(time.time() * 1000 - envelope["time_ms"])
        except (ValueError, KeyError, TypeError) as e:
            return self.refuse(f"{app[0]}: not a webhook envelope ({e})")
        if skew > MAX_SKEW_MS:
            return self.refuse(f"{app[0]}: time_ms {skew / 1000:.0f} s away from now")
        duplicates = STATS.record(app[0], events, self.headers.get("webhook-id"))
        self.answer(200, "ok\n")
        names = Counter(e.get("name", "?") for e in events)
        summary = ", ".join(f"{n}×{c}" for n, c in names.most_common())
        dup = f", {duplicates} already seen" if duplicates else ""
        log(f"{app[0]} {self.path}: {len(events)} event(s) {summary}{dup} — signature ok")
        if LOG_EVENTS:
            for e in events:
                log("  " + json.dumps(e))

    def refuse(self, why):
        STATS.reject()
        log(f"REFUSED {self.path}: {why}")
        self.answer(401, why + "\n")

    def log_message(self, format, *args):  # one line per webhook is enough
        pass


def main():
    SECRETS.update(load_secrets())
    if not SECRETS:
        sys.exit("receiver: no apps; set RECEIVER_CONFIG (a hookq config) or RECEIVER_APPS=key:secret,...")
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    # PID 1 in a container: exit on SIGTERM instead of waiting for SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(f"receiver on :{port}, verifying signatures for app(s) {', '.join(a for a, _ in SECRETS.values())}")
    try:
        server.serve_forever()
    finally:
        log("receiver stopping: " + json.dumps(STATS.snapshot()))


if __name__ == "__main__":
    main()
