#!/usr/bin/env bash
# Memory per send waiting for its phone number's pace (issue 21): one gateway per engine
# (fast_path = true: the byte relay; false: hyper), `[shaping] mode = "enforce"`, a paced
# number at R = N/58 + 1 messages/s (173 for N = 10 000) with `max_delay = "60s"` (the
# longest allowed; R × 60 s + a burst of R > N, so none of N sends is answered 130429
# locally: they all wait) and a second number paced at 100 000/s (never waits). N client connections (default 10 000) over loopback:
#   A. each sends one send of the unpaced number (answered at once) and stays open, idle;
#   B. then each sends one of the paced number: a burst of R leaves at once, the rest wait for
#      their slot (up to 59 s) in the gateway.
# RSS (VmRSS) is read at start, after A and 2 s into B; (B − A) / (sends still waiting)
# is what a waiting send costs on top of its idle connection, (A − start) / N the idle
# connection. The gateway is stopped then (the waits are not sat out): ~30 s per engine.
# The upstream is a small asyncio HTTP/1.1 server answering 200 with a send result.
#
#   bash benches/pace-wait-memory.sh          # N=10000
#   N=2000 bash benches/pace-wait-memory.sh
#
# Needs target/release/wa-breaker (cargo build --release), python3 and N + 1200 open files per process.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${N:-10000}
R=$(( N / 58 + 1 ))
ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < N + 1200 )); then
  echo "open-file limit $(ulimit -n) is below N+1200 = $((N + 1200)) (each of client and gateway holds N sockets; the gateway up to 1024 upstream ones more)"; exit 1
fi
RUN=$(mktemp -d /tmp/wab-pacemem.XXXXXX)
PID="" UP=""
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null
  [[ -n $UP ]] && kill "$UP" 2>/dev/null
  rm -rf "$RUN"
}
trap cleanup EXIT INT TERM

cat >"$RUN/upstream.py" <<'PY'
import asyncio
BODY = (b'{"messaging_product":"whatsapp","contacts":[{"input":"15551234567","wa_id":"15551234567"}],'
        b'"messages":[{"id":"wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI1RjQyNUE3NEYxMzAzMzQ5MkEA"}]}')
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
          + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
async def serve(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            await r.readexactly(n)
            w.write(ANSWER)
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    w.close()
async def main():
    s = await asyncio.start_server(serve, "127.0.0.1", 19820, backlog=4096)
    await s.serve_forever()
asyncio.run(main())
PY

cat >"$RUN/client.py" <<'PY'
import asyncio, json, sys, time
pid, n = int(sys.argv[1]), int(sys.argv[2])
PACED, FREE = "106540352242922", "106540352242923"
BODY = (b'{"messaging_product":"whatsapp","to":"15551234567","type":"template","template":'
        b'{"name":"order_update","language":{"code":"en_US"}}}')
def req(phone):
    return (f"POST /v21.0/{phone}/messages HTTP/1.1\r\nHost: graph.facebook.com\r\n"
            f"Authorization: Bearer bench-token\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1])
async def answer(r):
    head = await r.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    return status
async def main():
    start = rss()
    conns = []
    for _ in range(n):
        conns.append(await asyncio.open_connection("127.0.0.1", 19821))
    free = req(FREE)
    a = []
    for i in range(0, n, 500):  # in batches: within upstream_concurrency + the queue
        batch = conns[i:i + 500]
        for _, w in batch:
            w.write(free)
        a += await asyncio.gather(*(answer(r) for r, _ in batch))
    assert all(s == 200 for s in a), f"phase A: {sorted(set(a))}"
    await asyncio.sleep(1.0)
    idle = rss()
    done = []
    async def paced(r):
        s = await answer(r)
        done.append(s)
    paced_req = req(PACED)
    t0 = time.monotonic()
    for _, w in conns:
        w.write(paced_req)
    tasks = [asyncio.create_task(paced(r)) for r, _ in conns]
    await asyncio.sleep(2.0)
    waiting_rss = rss()
    answered = len(done)
    elapsed = time.monotonic() - t0
    assert all(s == 200 for s in done), f"phase B answered {sorted(set(done))}: not all waited"
    waiting = n - answered
    assert waiting * 2 > n, f"only {waiting} of {n} still waiting"
    print(json.dumps({
        "n": n, "rss_kb_start": start, "rss_kb_idle_conns": idle, "rss_kb_waiting": waiting_rss,
        "answered_after_s": round(elapsed, 2), "answered": answered, "waiting": waiting,
        "bytes_per_idle_conn": round((idle - start) * 1024 / n),
        "bytes_per_waiting_send": round((waiting_rss - idle) * 1024 / waiting),
    }))
    for t in tasks:
        t.cancel()
asyncio.run(main())
PY

python3 "$RUN/upstream.py" 2>>"$RUN/upstream.log" &
UP=$!
for engine in true false; do
  cat >"$RUN/config.toml" <<CFG
fast_path = $engine
listen = "127.0.0.1:19821"
admin_listen = "127.0.0.1:19822"
upstream = "http://127.0.0.1:19820"
state_dir = "$RUN/state-$engine"
admin_token = "pace-memory-admin-token"
log_level = "warn"
workers = 2
max_connections = $((N + 100))
request_timeout = "90s"

[shaping]
mode = "enforce"
max_delay = "60s"

[shaping.phone_throughput]
"106540352242922" = $R
"106540352242923" = 100000

[[accounts]]
waba_id = "102290129340398"
phone_number_ids = ["106540352242922", "106540352242923"]
CFG
  "$ROOT/target/release/wa-breaker" --config "$RUN/config.toml" >>"$RUN/log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:19822/readyz >/dev/null && break; sleep 0.1; done
  curl -sf http://127.0.0.1:19822/readyz >/dev/null || { echo "gateway did not start:"; cat "$RUN/log"; exit 1; }
  out=$(timeout 120 python3 "$RUN/client.py" "$PID" "$N")
  echo "fast_path = $engine, paced number at $R/s: $out"
  wait_s=$(curl -s http://127.0.0.1:19822/metrics | awk '/^wa_breaker_shaping_wait_seconds_count/ {print $2}')
  shaped=$(curl -s http://127.0.0.1:19822/metrics | awk '/^wa_breaker_shaped_total/ {s += $2} END {print s + 0}')
  echo "  gateway: ${wait_s:-0} sends given a wait by the pace (wa_breaker_shaping_wait_seconds_count), ${shaped} answered locally (wa_breaker_shaped_total)"
  kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
  PID=""
done
