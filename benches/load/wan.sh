#!/usr/bin/env bash
# The send path as it runs: a TLS upstream 50 ms away, a fixed rate of sends.
#
#   bash benches/load/wan.sh          (run.sh calls it last unless WAN=0; needs root)
#
# Builds its own test host: a network namespace joined to this one by a veth pair, with
# `tc netem delay 25ms` on each end (50 ms round trip). Kernels built without sch_netem
# (this project's VMs: "Specified qdisc kind is unknown") get the same delay from
# examples/delay_relay.rs instead, a TCP relay in the namespace that holds each chunk
# 25 ms per direction in front of the stand-in (the report says which). In the namespace, nginx is the
# stand-in Graph: TLS 1.2 and 1.3 on :9443 (certificate from a test CA made here with openssl, ALPN
# h2 and http/1.1, like graph.facebook.com), plain HTTP on :9080 (the "direct" row: the
# same round trip without a proxy), stub_status on :9081 (connections accepted = TLS
# handshakes). On this side, each proxy under test listens on loopback and forwards over
# the WAN:
#   wa-breaker (relay)  fast_path = true: HTTP/2 by ALPN over TLS (rustls; a few
#                       connections per worker, streams multiplexed); HTTP/1.1 pool when
#                       the server selects http/1.1 (binaries before h2up: HTTP/1.1 only)
#   wa-breaker (hyper)  fast_path = false: hyper's client, HTTP/2 by ALPN
#   nginx               proxy_pass https, proxy_ssl_session_reuse, TLS 1.2-1.3, upstream
#                       keepalive 512
#   HAProxy             server ... ssl, http-reuse always (HTTP/1.1: no alpn set)
# examples/fixed_rate.rs sends WAN_RATE sends/s over WAN_CONNS client connections to each
# in turn, WAN_ROUNDS times. Per row: added latency over direct and server CPU per send
# (medians of the rounds), upstream connections open at the end (ss, by process), TLS
# handshakes over the rounds (stub_status accepts) and the TLS/HTTP versions the stand-in
# logged. Everything it starts, the namespace and the veth are removed on exit.
#
# Environment: WAN_RATE=2000 WAN_CONNS=256 WAN_DURATION=15s WAN_WARMUP=3s WAN_DELAY=25ms
#   WAN_ROUNDS=3 (every row runs once per round, rows in turn; the table gives medians and
#   a second table every round's p99, CPU per send and handshakes)
#   WAN_ROWS="direct relay hyper nginx haproxy" (the rows to run, in this order; without
#   direct, the "added" columns are "—"; with WAB_BIN_BEFORE the default adds "before"
#   after relay: that older binary, configured as the relay row, on :9219)
#   WAB_BIN, FR_BIN (built by run.sh), OUT_DIR (default target/bench-load: wan.md, wan.tsv
#   with every round's raw line, wan-summary.tsv with the table's medians), KEEP_TMP=1.
set -euo pipefail
# The pace step runs on every send (shaping.mode defaults to enforce) but must not bind:
# these loads drive one phone number far past Meta's 80/s. Binaries from before shaping
# ignore the variable (unknown WA_BREAKER_ variables are logged and ignored).
export WA_BREAKER_SHAPING__THROUGHPUT=${WA_BREAKER_SHAPING__THROUGHPUT:-100000}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WAN_RATE=${WAN_RATE:-2000}
WAN_CONNS=${WAN_CONNS:-256}
WAN_DURATION=${WAN_DURATION:-15s}
WAN_WARMUP=${WAN_WARMUP:-3s}
WAN_DELAY=${WAN_DELAY:-25ms}
WAN_ROUNDS=${WAN_ROUNDS:-3}
[[ $WAN_ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "[wan] ERROR: WAN_ROUNDS must be a positive whole number" >&2; exit 1; }
WAB_BIN=${WAB_BIN:-$ROOT/target/release/wa-breaker}
FR_BIN=${FR_BIN:-$ROOT/target/release/examples/fixed_rate}
DELAY_BIN=${DELAY_BIN:-$ROOT/target/release/examples/delay_relay}
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-load}
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)
URL_PATH=/v21.0/106540352242922/messages

# Names and a /30 of our own, per run (other runs may build their own at the same time).
ID=$(($$ % 250 + 1))
NS=wabwan$$
VH=wwh$$
VN=wwn$$
HOST_IP=10.241.$ID.1
NS_IP=10.241.$ID.2

log() { printf '[wan %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

WAB_BIN_BEFORE=${WAB_BIN_BEFORE:-}
if [[ -n $WAB_BIN_BEFORE ]]; then
  [[ -x $WAB_BIN_BEFORE ]] || die "WAB_BIN_BEFORE=$WAB_BIN_BEFORE is not an executable file"
  WAN_ROWS=${WAN_ROWS:-direct relay before hyper nginx haproxy}
else
  WAN_ROWS=${WAN_ROWS:-direct relay hyper nginx haproxy}
fi
for t in $WAN_ROWS; do
  [[ " direct relay before hyper nginx haproxy " == *" $t "* ]] || die "WAN_ROWS: no row '$t' (direct relay before hyper nginx haproxy)"
  [[ $t != before || -n $WAB_BIN_BEFORE ]] || die "WAN_ROWS: the before row needs WAB_BIN_BEFORE"
done
[[ $(id -u) == 0 ]] || die "needs root (ip netns, tc); run.sh skips this table otherwise"
for t in ip tc openssl nginx haproxy curl ss; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install iproute2 openssl nginx-light haproxy curl)"
done
[[ -x $WAB_BIN ]] || die "no gateway binary at $WAB_BIN"
[[ -x $FR_BIN ]] || die "no fixed-rate generator at $FR_BIN (cargo build --release --example fixed_rate)"

RUNDIR=""
PIDS=()
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  set +e
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null
  done
  sleep 0.5
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  done
  [[ -n $RUNDIR && -f $RUNDIR/up.pid ]] && kill -TERM "$(cat "$RUNDIR/up.pid")" 2>/dev/null
  [[ -n $RUNDIR && -f $RUNDIR/nginx.pid ]] && kill -TERM "$(cat "$RUNDIR/nginx.pid")" 2>/dev/null
  [[ -n $RUNDIR && -f $RUNDIR/haproxy.pid ]] && kill -TERM "$(cat "$RUNDIR/haproxy.pid")" 2>/dev/null
  ip link del "$VH" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  if [[ -n $RUNDIR ]]; then
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $RUNDIR"; else rm -rf -- "$RUNDIR"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
RUNDIR=$(mktemp -d "${TMPDIR:-/tmp}/wab-wan.XXXXXX")
mkdir -p "$OUT_DIR/raw"

# ---------------------------------------------------------------- the test host
log "namespace $NS: veth $VH ($HOST_IP) <-> $VN ($NS_IP), netem delay $WAN_DELAY each way"
ip netns add "$NS"
ip link add "$VH" type veth peer name "$VN"
ip link set "$VN" netns "$NS"
ip addr add "$HOST_IP/30" dev "$VH"
ip link set "$VH" up
ip netns exec "$NS" ip addr add "$NS_IP/30" dev "$VN"
ip netns exec "$NS" ip link set "$VN" up
ip netns exec "$NS" ip link set lo up
# A large queue: 2 000 sends/s x 25 ms in flight each way must not be dropped by netem.
if tc qdisc add dev "$VH" root netem delay "$WAN_DELAY" limit 100000 2>"$RUNDIR/tc.err" \
   && ip netns exec "$NS" tc qdisc add dev "$VN" root netem delay "$WAN_DELAY" limit 100000 2>>"$RUNDIR/tc.err"; then
  DELAY_HOW="tc netem delay $WAN_DELAY on each end of the veth"
  UP_TLS=$NS_IP:9443
  UP_PLAIN=$NS_IP:9080
else
  log "tc netem unavailable ($(tr '\n' ' ' <"$RUNDIR/tc.err")): delaying with examples/delay_relay.rs in the namespace"
  [[ -x $DELAY_BIN ]] || die "no delay relay at $DELAY_BIN (cargo build --release --example delay_relay)"
  DELAY_HOW="no sch_netem in this kernel: examples/delay_relay.rs in the namespace holds every chunk $WAN_DELAY per direction (TCP relay in front of the stand-in; TLS end to end)"
  UP_TLS=127.0.0.1:19443
  UP_PLAIN=127.0.0.1:19080
  ip netns exec "$NS" "$DELAY_BIN" --listen "$NS_IP:9443" --to "$UP_TLS" --delay "$WAN_DELAY" &
  PIDS+=($!)
  ip netns exec "$NS" "$DELAY_BIN" --listen "$NS_IP:9080" --to "$UP_PLAIN" --delay "$WAN_DELAY" &
  PIDS+=($!)
fi

# ---------------------------------------------------------------- test CA
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=wa-breaker bench CA" \
  -keyout "$RUNDIR/ca.key" -out "$RUNDIR/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=graph.wan.test" \
  -keyout "$RUNDIR/up.key" -out "$RUNDIR/up.csr" 2>/dev/null
printf 'subjectAltName=IP:%s,DNS:graph.wan.test\n' "$NS_IP" >"$RUNDIR/san.ext"
openssl x509 -req -in "$RUNDIR/up.csr" -CA "$RUNDIR/ca.pem" -CAkey "$RUNDIR/ca.key" \
  -CAcreateserial -days 2 -extfile "$RUNDIR/san.ext" -out "$RUNDIR/up.pem" 2>/dev/null

# The part of an nginx config both nginx instances share: pid, logs and temp paths in the
# run dir (name prefix $1), no access log; the caller closes the http block.
nginx_head() { # prefix workers
  cat <<EOF
worker_processes $2;
pid $RUNDIR/$1.pid;
error_log $RUNDIR/$1.err;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $RUNDIR/$1-body;
  proxy_temp_path $RUNDIR/$1-proxy;
  fastcgi_temp_path $RUNDIR/$1-fcgi;
  uwsgi_temp_path $RUNDIR/$1-uwsgi;
  scgi_temp_path $RUNDIR/$1-scgi;
EOF
}

# ---------------------------------------------------------------- stand-in Graph
SEND_RESULT='{"messaging_product":"whatsapp","contacts":[{"input":"15551234567","wa_id":"15551234567"}],"messages":[{"id":"wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}]}'
{ nginx_head up 1; cat <<EOF; } >"$RUNDIR/up.conf"
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  http2_max_concurrent_streams 1000;
  # What each request came over (TLS version, HTTP version), for the report's "upstream
  # protocol" column; buffered, so the stand-in does not write a line per request.
  log_format proto '\$ssl_protocol \$server_protocol';
  server {
    listen $UP_TLS ssl http2;
    access_log $RUNDIR/up-proto.log proto buffer=64k flush=1s;
    # TLS 1.3 as Graph offers it (nginx before 1.23.4 offers only up to 1.2 by default).
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $RUNDIR/up.pem;
    ssl_certificate_key $RUNDIR/up.key;
    location / { default_type application/json; return 200 '$SEND_RESULT'; }
  }
  server {
    listen $UP_PLAIN;
    location / { default_type application/json; return 200 '$SEND_RESULT'; }
  }
  server {
    listen $NS_IP:9081;
    location / { stub_status; }
  }
}
EOF
ip netns exec "$NS" nginx -p "$RUNDIR" -e "$RUNDIR/up.err" -c "$RUNDIR/up.conf" \
  || die "upstream nginx: $(tail -3 "$RUNDIR/up.err")"
for _ in $(seq 1 50); do curl -s -o /dev/null "http://$NS_IP:9081/" && break; sleep 0.2; done
# The round trip a plain request sees (time to first byte, median of 5).
RTT=$(for _ in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_starttransfer}\n' "http://$NS_IP:9080/"; done \
  | sort -n | awk 'NR == 3 { printf "%.1f", $1 * 1000 }')
log "round trip to the stand-in (plain request, median of 5): ${RTT:-?} ms"
accepts() { curl -s "http://$NS_IP:9081/" | awk 'NR == 3 { print $1 }'; }

# ---------------------------------------------------------------- proxies under test
{ echo "worker_cpu_affinity auto;"; nginx_head nginx 2; cat <<EOF; } >"$RUNDIR/nginx.conf"
  upstream graph { server $NS_IP:9443; keepalive 512; keepalive_requests 1000000; keepalive_timeout 120s; }
  server {
    listen 127.0.0.1:9212;
    keepalive_requests 1000000;
    location / {
      proxy_pass https://graph;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_trusted_certificate $RUNDIR/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name graph.wan.test;
      proxy_ssl_session_reuse on;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
    }
  }
}
EOF
nginx -p "$RUNDIR" -e "$RUNDIR/nginx.err" -c "$RUNDIR/nginx.conf" || die "nginx: $(tail -3 "$RUNDIR/nginx.err")"

cat >"$RUNDIR/haproxy.cfg" <<EOF
global
  nbthread 2
  cpu-map auto:1/1-2 0-1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:9213
  default_backend b
backend b
  http-reuse always
  server s1 $NS_IP:9443 ssl verify required ca-file $RUNDIR/ca.pem
EOF
haproxy -f "$RUNDIR/haproxy.cfg" -D -p "$RUNDIR/haproxy.pid" >"$RUNDIR/haproxy.log" 2>&1 \
  || die "haproxy: $(tail -3 "$RUNDIR/haproxy.log")"

gateway() { # name port admin fast_path [binary]
  mkdir -p "$RUNDIR/state-$1"
  cat >"$RUNDIR/$1.toml" <<EOF
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
upstream = "https://$NS_IP:9443"
upstream_ca_file = "$RUNDIR/ca.pem"
state_dir = "$RUNDIR/state-$1"
admin_token = "bench-admin-token"
log_level = "warn"
fast_path = $4
upstream_concurrency = 4096

[[accounts]]
waba_id = "102290129340398"
phone_number_ids = ["106540352242922"]
EOF
  "${5:-$WAB_BIN}" --config "$RUNDIR/$1.toml" >"$RUNDIR/$1.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$1=$!"
  for _ in $(seq 1 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$3/readyz") == 200 ]] && return 0
    sleep 0.2
  done
  die "wa-breaker ($1) not ready: $(tail -5 "$RUNDIR/$1.log")"
}
gateway relay 9215 9216 true
gateway hyper 9217 9218 false
PID_before=""
[[ -z $WAB_BIN_BEFORE ]] || gateway before 9219 9220 true "$WAB_BIN_BEFORE"

# ---------------------------------------------------------------- measuring
ticks_of() { # pids (and their children) -> utime+stime ticks
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$1" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) root[r[i]] = 1 }
    { pid = $1; rest = substr($0, match($0, /\) [A-Za-z] /) + 2); split(rest, f, " ")
      if ((pid in root) || (f[2] in root)) sum += f[12] + f[13] }
    END { printf "%.0f\n", sum }'
}
conns_of() { # pids -> established TCP connections to the TLS upstream owned by them
  local p n=0
  for p in $1 $(for q in $1; do pgrep -P "$q"; done); do
    n=$((n + $(ss -tnpH state established dst "$NS_IP:9443" 2>/dev/null | grep -c "pid=$p," || true)))
  done
  echo "$n"
}
steal_other() { awk '/^cpu / { printf "%.0f %.0f\n", $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

declare -A PORT=([direct]="$NS_IP:9080" [relay]=127.0.0.1:9215 [before]=127.0.0.1:9219 [hyper]=127.0.0.1:9217 [nginx]=127.0.0.1:9212 [haproxy]=127.0.0.1:9213)
declare -A LABEL=([direct]="direct (plain HTTP over the WAN, no proxy)" [relay]="wa-breaker relay (HTTP/2 by ALPN, else HTTP/1.1)"
  [before]="wa-breaker relay, before (WAB_BIN_BEFORE)"
  [hyper]="wa-breaker hyper engine (HTTP/2 by ALPN)" [nginx]="nginx (proxy_ssl, keepalive 512)" [haproxy]="HAProxy (ssl, http-reuse always)")
declare -A SRV=([direct]="" [relay]=$PID_relay [before]=$PID_before [hyper]=$PID_hyper [nginx]=$(cat "$RUNDIR/nginx.pid") [haproxy]=$(cat "$RUNDIR/haproxy.pid"))
RES=$RUNDIR/wan.tsv
: >"$RES"
for r in $(seq 1 "$WAN_ROUNDS"); do
  for t in $WAN_ROWS; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "http://${PORT[$t]}$URL_PATH" || true)
    [[ $code == 200 ]] || die "$t sample answered $code"
    a0=$(accepts); s0=$(ticks_of "${SRV[$t]}"); st0=$(steal_other)
    p0=$(wc -l <"$RUNDIR/up-proto.log" 2>/dev/null || echo 0)
    raw=$OUT_DIR/raw/wan-$t-r$r.txt
    log "round $r/$WAN_ROUNDS, $t: $WAN_RATE sends/s over $WAN_CONNS connections, warm-up $WAN_WARMUP, $WAN_DURATION"
    "$FR_BIN" --url "http://${PORT[$t]}$URL_PATH" --rate "$WAN_RATE" --conns "$WAN_CONNS" \
      --duration "$WAN_DURATION" --warmup "$WAN_WARMUP" >"$raw" 2>&1 || die "fixed_rate: $(tail -3 "$raw")"
    s1=$(ticks_of "${SRV[$t]}"); st1=$(steal_other)
    up=$([[ $t == direct ]] && echo "—" || conns_of "${SRV[$t]}")
    a1=$(accepts)
    # The protocol the stand-in saw most in this row (its log is flushed every second).
    if [[ $t == direct ]]; then proto="—"; else
      sleep 1.5
      proto=$(tail -n +"$((p0 + 1))" "$RUNDIR/up-proto.log" | sort | uniq -c | sort -rn \
        | awk '{ n[NR] = $1; k[NR] = $2 " " $3; t += $1 } END { if (t) printf "%s (%.0f %%)", k[1], 100 * n[1] / t; else printf "?" }')
    fi
    line=$(grep '^FIXED_RATE ' "$raw") || die "no result in $raw"
    log "  $line"
    # handshakes: connections the TLS upstream accepted in the run, less this script's
    # own stub_status query (direct: its plain connections, no TLS)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$line" "$((s1 - s0))" "$up" "$((a1 - a0 - 1))" "$st0 $st1" "$proto" "$r" >>"$RES"
  done
done

# ---------------------------------------------------------------- report
REPORT=$RUNDIR/wan.md
# wan-summary.tsv, one line per row: row p50 p99 p99.9 (ms) added-p99 (ms) CPU µs/send
# upstream-conns handshakes errors steal% (the table's medians; read by run.sh's targets)
SUMMARY=$RUNDIR/wan-summary.tsv
# Per row, over the rounds: the median of each latency percentile and of CPU per send
# (the middle value; of an even count, the lower middle), the sum of handshakes and of
# errors, the lowest achieved rate, the highest steal; connections open and the protocol
# as at the end of the last round. "added" = the row's median less direct's median.
{
  echo "## TLS upstream over an emulated WAN — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- netns $NS joined by a veth pair; delay: $DELAY_HOW; a plain request's time to first byte: ${RTT:-?} ms (new connection: handshake + request); stand-in Graph: nginx, TLS 1.2 and 1.3 offered (as Graph) with a test CA, ALPN h2 + http/1.1"
  echo "- load: examples/fixed_rate.rs, $WAN_RATE sends/s over $WAN_CONNS client connections on loopback, warm-up $WAN_WARMUP, measured $WAN_DURATION; latency corrected for coordinated omission; $WAN_ROUNDS round(s) of every row in turn, medians"
  echo "- wa-breaker: workers = default (one per CPU, pinned), upstream_concurrency = 4096; nginx 2 workers pinned; HAProxy 2 threads pinned"
  echo
  echo "| target | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms | server CPU µs/send | upstream conns open | TLS handshakes | upstream protocol | achieved/s | errors | steal % |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
  awk -F'\t' -v hz="$HZ" -v rate="$WAN_RATE" -v w="$WAN_WARMUP" -v m="$WAN_DURATION" -v rows="$WAN_ROWS" -v sum="$SUMMARY" '
    function med(key,    n, i, j, a, x) {
      n = cnt[key]; for (i = 1; i <= n; i++) a[i] = val[key, i]
      for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
      return a[int((n + 1) / 2)]
    }
    function add(key, x) { val[key, ++cnt[key]] = x }
    FNR == NR { label[$1] = $2; next }
    { n = split($2, kv, " "); delete v
      for (i = 2; i <= n; i++) { split(kv[i], x, "="); v[x[1]] = x[2] }
      t = $1; sent = rate * ((w + 0) + (m + 0))
      add(t SUBSEP "p50", v["p50_us"] / 1000); add(t SUBSEP "p99", v["p99_us"] / 1000); add(t SUBSEP "p999", v["p999_us"] / 1000)
      add(t SUBSEP "cpu", (sent > 0) ? $3 * 1e6 / hz / sent : 0)
      split($6, s, " "); stl = (s[4] - s[2] > 0) ? 100 * (s[3] - s[1]) / (s[4] - s[2]) : 0
      if (!(t in steal) || stl > steal[t]) steal[t] = stl
      if (!(t in ach) || v["achieved"] + 0 < ach[t]) ach[t] = v["achieved"] + 0
      err[t] += v["errors"]; hs[t] += $5; conns[t] = $4; proto[t] = $7; seen[t] = 1 }
    END {
      nr = split(rows, order, " ")
      if ("direct" in seen) { d50 = med("direct" SUBSEP "p50"); d99 = med("direct" SUBSEP "p99"); d999 = med("direct" SUBSEP "p999") }
      for (k = 1; k <= nr; k++) { t = order[k]; if (!(t in seen)) continue
        p50 = med(t SUBSEP "p50"); p99 = med(t SUBSEP "p99"); p999 = med(t SUBSEP "p999")
        # added over direct: only when the direct row ran (WAN_ROWS without it: "—")
        nod = (t == "direct" || !("direct" in seen))
        printf "| %s | %.2f | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %s | %d | %d | %.1f |\n", label[t], p50, p99, p999,
          nod ? "—" : sprintf("%+.2f", p50 - d50), nod ? "—" : sprintf("%+.2f", p99 - d99),
          nod ? "—" : sprintf("%+.2f", p999 - d999), (t == "direct") ? "—" : sprintf("%.1f", med(t SUBSEP "cpu")),
          conns[t], (t == "direct") ? "—" : hs[t], proto[t], ach[t], err[t], steal[t]
        # The same medians for run.sh'"'"'s target table ("" where the table shows "—").
        printf "%s\t%.3f\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t%d\t%.1f\n", t, p50, p99, p999,
          nod ? "" : sprintf("%.3f", p99 - d99), (t == "direct") ? "" : sprintf("%.1f", med(t SUBSEP "cpu")),
          (t == "direct") ? "" : conns[t], (t == "direct") ? "" : hs[t], err[t], steal[t] > sum }
    }
  ' <(for t in "${!LABEL[@]}"; do printf '%s\t%s\n' "$t" "${LABEL[$t]}"; done) "$RES"
  echo
  echo "\`upstream conns open\`: established TCP connections from the proxy to the TLS upstream at the end of its last round (ss). \`TLS handshakes\`: connections the upstream accepted over all rounds (stub_status), each one handshake. \`server CPU µs/send\`: the proxy's CPU (user + system) over every send of a round, warm-up included (median of the rounds). \`upstream protocol\`: the TLS and HTTP versions the stand-in logged for most of the last round's requests (share in brackets)."
  if [[ $WAN_ROUNDS -gt 1 ]]; then
    echo
    echo "Every round (p99 ms / server CPU µs per send / TLS handshakes):"
    echo
    awk -F'\t' -v hz="$HZ" -v rate="$WAN_RATE" -v w="$WAN_WARMUP" -v m="$WAN_DURATION" -v rows="$WAN_ROWS" -v nrounds="$WAN_ROUNDS" '
      { n = split($2, kv, " "); delete v
        for (i = 2; i <= n; i++) { split(kv[i], x, "="); v[x[1]] = x[2] }
        sent = rate * ((w + 0) + (m + 0))
        cell[$1, $8] = sprintf("%.2f / %s / %s", v["p99_us"] / 1000, ($1 == "direct") ? "—" : sprintf("%.1f", $3 * 1e6 / hz / sent), ($1 == "direct") ? "—" : $5) }
      END {
        printf "| row |"; for (r = 1; r <= nrounds; r++) printf " round %d |", r; printf "\n|---|"
        for (r = 1; r <= nrounds; r++) printf "---:|"; printf "\n"
        nr = split(rows, order, " ")
        for (k = 1; k <= nr; k++) { printf "| %s |", order[k]; for (r = 1; r <= nrounds; r++) printf " %s |", cell[order[k], r]; printf "\n" }
      }' "$RES"
  fi
} >"$REPORT"
cp "$REPORT" "$OUT_DIR/wan.md"
cp "$RES" "$OUT_DIR/wan.tsv"
cp "$SUMMARY" "$OUT_DIR/wan-summary.tsv"
cat "$REPORT"
