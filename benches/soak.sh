#!/usr/bin/env bash
# Soak: hold a fixed send rate through the gateway for a while, with trips, closes and
# webhooks along the way, and sample what must stay flat — RSS, open descriptors, the size
# of /metrics — every 10 s. Loopback only, bounded in time.
#
#   bash benches/soak.sh                      # 10 minutes at 2 000 sends/s
#   SOAK_MINUTES=30 bash benches/soak.sh      # the run BENCHMARKS.md reports
#   SOAK_RATE=500 SOAK_MINUTES=2 FAST_PATH=false bash benches/soak.sh   # the hyper engine
#
# The load (examples/soak_load.rs): 32 keep-alive connections, 1 % of sends to phone-number
# ids the gateway does not know (a pool of 10 000), the rest round-robin over 50 mapped
# numbers of 10 WABAs. WABA 1's first number is one the stand-in Cloud API blocks (403/368),
# so its circuit trips; every 60 s an operator closes it and the next send trips it again.
# Every 60 s a signed DISABLED_UPDATE opens WABA 2 and a REINSTATE 20 s later closes it; every
# 10 s a signed `messages` webhook (statuses, one with error 131047) is delivered.
#
# Writes $OUT (CSV, one row per sample; default $RUN/soak.csv, kept) and prints a summary:
# RSS, fds and /metrics size at the first sample after warm-up vs the last, and their max.
# Needs target/release/wa-breaker, target/release/examples/{fake_cloud,soak_load}
# (cargo build --release --bins --examples), python3 and curl.
set -euo pipefail
# The pace step runs on every send (shaping.mode defaults to enforce) but must not bind:
# these loads drive one phone number far past Meta's 80/s. Binaries from before shaping
# ignore the variable (unknown WA_BREAKER_ variables are logged and ignored).
export WA_BREAKER_SHAPING__THROUGHPUT=${WA_BREAKER_SHAPING__THROUGHPUT:-100000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MINUTES=${SOAK_MINUTES:-10}
RATE=${SOAK_RATE:-2000}
FAST_PATH=${FAST_PATH:-true}
RUN=$(mktemp -d /tmp/wab-soak.XXXXXX)
OUT=${OUT:-$RUN/soak.csv}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for b in wa-breaker examples/fake_cloud examples/soak_load; do
  [[ -x "$ROOT/target/release/$b" ]] || { echo "missing target/release/$b: cargo build --release --bins --examples" >&2; exit 1; }
done

UP=19821 GW=19822 ADMIN=19823
SECRET="soak-app-secret"
TOKEN="soak-admin-token-0123456789"
BLOCKED=106540352242922
waba() { echo $((102290129340000 + $1)); }
phone() { if [[ $1 == 1 && $2 == 1 ]]; then echo $BLOCKED; else echo $((106540352200000 + $1 * 10 + $2)); fi; }

PHONES=()
{
  echo "fast_path = $FAST_PATH"
  echo "listen = \"127.0.0.1:$GW\""
  echo "admin_listen = \"127.0.0.1:$ADMIN\""
  echo "upstream = \"http://127.0.0.1:$UP\""
  echo "state_dir = \"$RUN/state\""
  echo "admin_token = \"$TOKEN\""
  echo "log_level = \"warn\""
  printf '[webhook]\napp_secret = "%s"\n' "$SECRET"
  for w in $(seq 10); do
    ids=()
    for p in $(seq 5); do ids+=("\"$(phone "$w" "$p")\""); PHONES+=("$(phone "$w" "$p")"); done
    printf '[[accounts]]\nwaba_id = "%s"\nphone_number_ids = [%s]\n' "$(waba "$w")" "$(IFS=,; echo "${ids[*]}")"
  done
} >"$RUN/config.toml"

FAKE_QUIET=1 FAKE_BLOCKED=$BLOCKED FAKE_CLOUD_ADDR=127.0.0.1:$UP \
  "$ROOT/target/release/examples/fake_cloud" >"$RUN/fake.log" 2>&1 &
PIDS+=($!)
"$ROOT/target/release/wa-breaker" --config "$RUN/config.toml" >"$RUN/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done

SOAK_TARGET=127.0.0.1:$GW SOAK_RATE=$RATE SOAK_SECONDS=$((MINUTES * 60)) SOAK_CONNS=32 \
  SOAK_UNMAPPED_PCT=1 SOAK_PHONES=$(IFS=,; echo "${PHONES[*]}") \
  "$ROOT/target/release/examples/soak_load" >"$RUN/load.jsonl" 2>"$RUN/load.err" &
LOAD_PID=$!
PIDS+=($LOAD_PID)

echo "soak: ${MINUTES} min at ${RATE} sends/s, fast_path=$FAST_PATH, gateway pid $GW_PID, files in $RUN"
python3 - "$GW_PID" "$LOAD_PID" "$ADMIN" "$TOKEN" "$SECRET" "$(waba 1)" "$(waba 2)" "$(phone 3 1)" "$RUN/load.jsonl" "$OUT" "$MINUTES" <<'PY'
import hashlib, hmac, http.client, json, os, sys, time
gw, load, admin, token, secret, waba1, waba2, phone3, load_log, out, minutes = sys.argv[1:]
gw, load, minutes = int(gw), int(load), int(minutes)

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))

def request(method, path, body=b"", headers=None):
    c = http.client.HTTPConnection("127.0.0.1", int(admin), timeout=10)
    c.request(method, path, body, headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data

def gateway(method, path, body=b"", headers=None):
    # Webhooks go to the main listener.
    port = int(admin) - 1
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body, headers or {})
    r = c.getresponse(); data = r.read(); c.close()
    return r.status, data

def webhook(payload):
    body = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return gateway("POST", "/webhook", body, {"Content-Type": "application/json", "X-Hub-Signature-256": sig})[0]

def account_update(waba, state):
    return webhook({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": int(time.time()), "changes": [
        {"field": "account_update", "value": {"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": state, "waba_ban_date": "2026-12-03"}}}]}]})

def messages(n):
    return webhook({"object": "whatsapp_business_account", "entry": [{"id": waba2, "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone3},
        "statuses": [{"id": f"wamid.soak{n}", "status": "delivered", "timestamp": str(int(time.time())), "recipient_id": "15551234567"},
                     {"id": f"wamid.soakf{n}", "status": "failed", "timestamp": str(int(time.time())), "recipient_id": "15551234567",
                      "errors": [{"code": 131047, "title": "Re-engagement message"}]}]}}]}]})

auth = {"Authorization": f"Bearer {token}"}
rows = []
events = {"closes": 0, "close_failed": 0, "disable": 0, "reinstate": 0, "messages": 0, "webhook_not_200": 0}
start = time.time()
end = start + minutes * 60
next_sample = start + 10
n = 0
with open(out, "w") as f:
    f.write("t_s,rss_kb,fds,metrics_bytes,sent,ok,local,other,errors,missed,p50_us,p99_us\n")
    while time.time() < end + 5:
        now = time.time()
        t = int(now - start)
        if now >= next_sample:
            next_sample += 10
            n += 1
            try:
                st, m = request("GET", "/metrics")
            except OSError:
                m = b""
            last = {}
            try:
                with open(load_log) as lf:
                    lines = [l for l in lf if l.startswith("{\"t\"")]
                    if lines:
                        last = json.loads(lines[-1])
            except (OSError, ValueError):
                pass
            try:
                row = [t, rss_kb(gw), fds(gw), len(m)] + [last.get(k, 0) for k in ("sent", "ok", "local", "other", "errors", "missed", "p50_us", "p99_us")]
            except FileNotFoundError:
                print("gateway exited", file=sys.stderr); sys.exit(1)
            rows.append(row)
            f.write(",".join(map(str, row)) + "\n"); f.flush()
            if messages(n) == 200:
                events["messages"] += 1
            else:
                events["webhook_not_200"] += 1
            if n % 6 == 0:
                st, _ = request("POST", f"/admin/circuits/{waba1}/close", b'{"reason":"soak"}', auth)
                events["closes" if st == 200 else "close_failed"] += 1
                events["disable"] += account_update(waba2, "DISABLE") == 200
            if n % 6 == 2:
                events["reinstate"] += account_update(waba2, "REINSTATE") == 200
            if n % 30 == 0:
                print(f"  t={t}s rss={row[1]} kB fds={row[2]} metrics={row[3]} B sent={row[4]} missed={row[9]} p99={row[11]} µs", flush=True)
        time.sleep(0.2)

try:
    os.waitpid(load, 0)
except ChildProcessError:
    pass
warm = [r for r in rows if r[0] >= 60] or rows
first, lastr = warm[0], warm[-1]
print(f"samples: {len(rows)} (every 10 s); from t={first[0]}s (after warm-up) to t={lastr[0]}s")
for i, name in ((1, "RSS kB"), (2, "open fds"), (3, "/metrics bytes")):
    vals = [r[i] for r in warm]
    print(f"  {name:15s} first {first[i]:>9}  last {lastr[i]:>9}  min {min(vals):>9}  max {max(vals):>9}")
p99 = [r[11] for r in warm]
print(f"  {'p99 µs (10 s)':15s} first {first[11]:>9}  last {lastr[11]:>9}  min {min(p99):>9}  max {max(p99):>9}")
print(f"events: {events}")
PY
echo "load: $(tail -1 "$RUN/load.jsonl")"
echo "gateway log: $(wc -l <"$RUN/gateway.log") lines, $(wc -c <"$RUN/gateway.log") bytes; state dir $(du -sh "$RUN/state" | cut -f1)"
grep -c -i "error\|panic" "$RUN/gateway.log" | sed 's/^/gateway log lines with error|panic: /' || true
echo "samples: $OUT"
