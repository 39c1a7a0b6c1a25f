#!/usr/bin/env bash
# What the durability acknowledgement costs the answer that trips a circuit: the same
# 403/368 from the stand-in Cloud API, timed through a gateway where it trips a circuit
# (the answer waits for the commit to the embedded store) and through one where 368 is not
# a trip code (no trip, no wait). Loopback only; N rounds each, interleaved.
#
#   bash benches/trip-latency.sh            # N=200, state_dir in a temp dir on /tmp's disk
#   N=500 STATE_PARENT=/var/lib bash benches/trip-latency.sh
#
# Needs target/release/wa-breaker and target/release/examples/fake_cloud
# (cargo build --release --bins --examples) and python3.
set -euo pipefail
# The pace step runs on every send (shaping.mode defaults to enforce) but must not bind:
# these loads drive one phone number far past Meta's 80/s. Binaries from before shaping
# ignore the variable (unknown WA_BREAKER_ variables are logged and ignored).
export WA_BREAKER_SHAPING__THROUGHPUT=${WA_BREAKER_SHAPING__THROUGHPUT:-100000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${N:-200}
RUN=$(mktemp -d "${STATE_PARENT:-/tmp}/wab-trip.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT INT TERM

FAKE_CLOUD_ADDR=127.0.0.1:19801 "$ROOT/target/release/examples/fake_cloud" >"$RUN/fake.log" 2>&1 &
PIDS+=($!)
for g in trip plain; do
  port=$([[ $g == trip ]] && echo 19802 || echo 19804)
  admin=$((port + 1))
  mkdir -p "$RUN/$g"
  {
    echo "listen = \"127.0.0.1:$port\""
    echo "admin_listen = \"127.0.0.1:$admin\""
    echo "upstream = \"http://127.0.0.1:19801\""
    echo "state_dir = \"$RUN/$g/state\""
    echo "admin_token = \"trip-latency-admin-token\""
    echo "log_level = \"warn\""
    # Unmapped phone numbers trip too (their own circuit): the plain gateway does not treat
    # 368 as a trip code at all.
    [[ $g == plain ]] && echo 'trip_codes = [131031]'
    if [[ $g == trip ]]; then
      printf '[[accounts]]\nwaba_id = "102290129340398"\nphone_number_ids = ["106540352242922"]\n'
    fi
  } >"$RUN/$g/config.toml"
  "$ROOT/target/release/wa-breaker" --config "$RUN/$g/config.toml" >"$RUN/$g/log" 2>&1 &
  PIDS+=($!)
done
for port in 19803 19805; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done

python3 - "$N" <<'PY'
import http.client, json, statistics, sys, time
n = int(sys.argv[1])
body = b'{"messaging_product":"whatsapp","to":"15551234567","type":"template","template":{"name":"t","language":{"code":"en_US"}}}'
def conn(port):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)
send = {"trip": conn(19802), "plain": conn(19804)}
admin = conn(19803)
def post(c, path, data, headers):
    c.request("POST", path, data, headers)
    r = c.getresponse(); r.read(); return r
times = {"trip": [], "plain": []}
for i in range(n):
    r = post(admin, "/admin/circuits/102290129340398/close", b"", {"Authorization": "Bearer trip-latency-admin-token"})
    assert r.status == 200, r.status
    for g in ("trip", "plain"):
        t = time.perf_counter()
        r = post(send[g], "/v21.0/106540352242922/messages", body, {"Content-Type": "application/json"})
        times[g].append((time.perf_counter() - t) * 1000)
        assert r.status == 403 and r.getheader("x-wa-breaker") is None, (g, r.status)
def q(v, p): return sorted(v)[min(len(v) - 1, int(p * len(v)))]
print(f"{n} rounds, ms: answer head and body of a 403/368 from the stand-in upstream")
for g, label in (("plain", "no trip (368 not a trip code)"), ("trip", "trips the circuit (waits for the commit)")):
    v = times[g]
    print(f"  {label:42s} median {statistics.median(v):6.2f}  p90 {q(v, .9):6.2f}  p99 {q(v, .99):6.2f}  max {max(v):6.2f}")
d = [a - b for a, b in zip(times["trip"], times["plain"])]
print(f"  added by the acknowledgement: median {statistics.median(d):.2f} ms, p90 {q(d, .9):.2f} ms, p99 {q(d, .99):.2f} ms")
PY
echo "state_dir file system: $(df -T "$RUN" | awk 'NR==2 {print $2}') at $(df "$RUN" | awk 'NR==2 {print $6}')"
