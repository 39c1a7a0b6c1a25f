#!/usr/bin/env bash
# Memory of the learned phone → WABA map: RSS of one gateway before and after it learns
# N phone numbers (default 100 000) from signed `messages` webhooks (4 000 per delivery,
# 100 WABAs), then after a restart that loads them from the embedded store. Loopback only.
#
#   bash benches/learned-memory.sh          # N=100000
#   N=250000 bash benches/learned-memory.sh
#
# Needs target/release/wa-breaker (cargo build --release) and python3.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${N:-100000}
RUN=$(mktemp -d /tmp/wab-learned.XXXXXX)
PID=""
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT INT TERM
cat >"$RUN/config.toml" <<CFG
listen = "127.0.0.1:19811"
admin_listen = "127.0.0.1:19812"
upstream = "http://127.0.0.1:9"
state_dir = "$RUN/state"
admin_token = "learned-memory-admin-token"
log_level = "warn"
workers = 2
[webhook]
app_secret = "learned-memory-secret"
CFG
start() {
  "$ROOT/target/release/wa-breaker" --config "$RUN/config.toml" >>"$RUN/log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:19812/readyz >/dev/null && return; sleep 0.1; done
  echo "gateway did not start:"; cat "$RUN/log"; exit 1
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
start
before=$(rss)
python3 - "$N" <<'PY'
import hashlib, hmac, json, sys, urllib.request
n = int(sys.argv[1]); per = 4000; secret = b"learned-memory-secret"
for start in range(0, n, per):
    entries = []
    for i in range(start, min(n, start + per)):
        entries.append({"id": str(102290129300000 + i % 100), "time": 1800000000, "changes": [{
            "field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": str(106540352000000 + i)},
            "statuses": []}}]})
    body = json.dumps({"object": "whatsapp_business_account", "entry": entries}).encode()
    sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    req = urllib.request.Request("http://127.0.0.1:19811/webhook", body,
                                 {"X-Hub-Signature-256": sig, "Content-Type": "application/json"})
    assert urllib.request.urlopen(req, timeout=60).status == 200
PY
learned=$(curl -s http://127.0.0.1:19812/metrics | awk '/^wa_breaker_phone_numbers_known\{kind="learned"\}/ {print $2}')
after=$(rss)
kill -TERM "$PID"; wait "$PID" || true
start
restarted=$(rss)
loaded=$(curl -s -H 'Authorization: Bearer learned-memory-admin-token' http://127.0.0.1:19812/admin/accounts | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
store=$(du -k "$RUN/state/circuits.redb" | cut -f1)
echo "learned phone numbers: $learned (listed after restart: $loaded)"
echo "RSS before: ${before} kB; after learning: ${after} kB (+$(( (after - before) )) kB, $(( (after - before) * 1024 / N )) B per phone number)"
echo "RSS after a restart that loaded them: ${restarted} kB; store file: ${store} kB"
