#!/usr/bin/env bash
# Where a proxied send's CPU goes: the gateway (relay) beside nginx, per request.
#
#   bash benches/load/profile.sh
#
# run.sh says how fast; this says why. For the wa-breaker relay and the nginx proxy
# (benches/load/nginx-proxy.conf), both in front of the stand-in upstream
# (benches/load/nginx-up.conf) and both driven by `wrk -t2 -c$CONNS` with post.lua, it reports per request:
#   - CPU split into user and kernel time (/proc/PID/task/*/stat, all threads);
#   - voluntary context switches (the worker slept in epoll_wait and was woken) and
#     involuntary ones (preempted), from /proc/PID/task/*/status;
#   - TCP segments sent and received on the machine (nstat: TcpOutSegs, TcpInSegs,
#     TcpExtTCPPureAcks): 4 is the floor, one per hop and direction;
#   - with STRACE=1 (default), syscalls per request from `strace -c -f` in a separate run
#     (strace slows the server ~5x: counts only, no times);
# then the kernel's floor from `cargo bench --bench kernel_floor` (FLOOR=0 skips it): the
# fixed cost of one syscall and of one loopback TCP send + recv.
# Each of ROUNDS rounds runs the gateway then nginx; the table gives every round and the
# medians. Loopback only, on ports of its own (127.0.0.1:9301 stand-in, :9312 nginx,
# :9315/:9316 wa-breaker), so run.sh can call it last with its own servers still up;
# everything started is stopped on exit.
#
# Environment: CONNS=64 DURATION=8 (s) WARMUP=2 (s) ROUNDS=3 STRACE=1 FLOOR=1
#   WAB_ACCOUNTS=10000 ([[accounts]] in the gateway's config, as run.sh generates them)
#   WAB_BIN (default target/release/wa-breaker; not built here), OUT_DIR (default
#   target/bench-load: profile.md), KEEP_TMP=1.
set -euo pipefail
# The pace step must not bind: the load drives one phone number far past Meta's 80/s.
export WA_BREAKER_SHAPING__THROUGHPUT=${WA_BREAKER_SHAPING__THROUGHPUT:-100000}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CONNS=${CONNS:-64}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
STRACE=${STRACE:-1}
FLOOR=${FLOOR:-1}
WAB_ACCOUNTS=${WAB_ACCOUNTS:-10000}
WAB_BIN=${WAB_BIN:-$ROOT/target/release/wa-breaker}
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-load}
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)
URL=/v21.0/106540352242922/messages

log() { printf '[profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for t in wrk nginx nstat; do command -v "$t" >/dev/null || die "$t not found (apt-get install wrk nginx-light iproute2)"; done
NO_STRACE=""
if [[ $STRACE == 1 ]] && ! command -v strace >/dev/null; then
  NO_STRACE="strace not found (apt-get install strace): the syscall table is left out"
  log "$NO_STRACE"
  STRACE=0
fi
[[ -x $WAB_BIN ]] || die "no gateway binary at $WAB_BIN (cargo build --release)"
for p in 9301 9312 9314 9315 9316; do
  ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || die "port $p is in use"
done

RUNDIR=$(mktemp -d "${TMPDIR:-/tmp}/wab-profile.XXXXXX")
GW=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [[ -n $GW ]] && kill -TERM "$GW" 2>/dev/null && wait "$GW" 2>/dev/null
  for c in up proxy; do
    [[ -f $RUNDIR/nginx-$c.pid ]] && kill -TERM "$(cat "$RUNDIR/nginx-$c.pid")" 2>/dev/null
  done
  if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $RUNDIR"; else rm -rf -- "$RUNDIR"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$OUT_DIR" "$RUNDIR/state"

# run.sh's configs on this script's ports.
ports='s/127\.0\.0\.1:9001/127.0.0.1:9301/g; s/127\.0\.0\.1:9012/127.0.0.1:9312/g; s/127\.0\.0\.1:9014/127.0.0.1:9314/g'
sed "s#@RUNDIR@#$RUNDIR#g; $ports" "$HERE/nginx-up.conf" >"$RUNDIR/up.conf"
sed "s#@RUNDIR@#$RUNDIR#g; $ports" "$HERE/nginx-proxy.conf" >"$RUNDIR/proxy.conf"
nginx -e "$RUNDIR/up.err" -c "$RUNDIR/up.conf" || die "stand-in upstream: $(tail -3 "$RUNDIR/up.err")"
nginx -e "$RUNDIR/proxy.err" -c "$RUNDIR/proxy.conf" || die "nginx proxy: $(tail -3 "$RUNDIR/proxy.err")"
cat >"$RUNDIR/gw.toml" <<EOF
listen = "127.0.0.1:9315"
admin_listen = "127.0.0.1:9316"
upstream = "http://127.0.0.1:9301"
state_dir = "$RUNDIR/state"
admin_token = "profile-admin-token"
log_level = "warn"

[[accounts]]
waba_id = "102290129340398"
phone_number_ids = ["106540352242922"]
EOF
# The rest of the accounts, as run.sh writes them (%.0f: mawk's %d overflows at 2^31).
awk -v n=$((WAB_ACCOUNTS - 1)) 'BEGIN { for (i = 1; i <= n; i++)
  printf "\n[[accounts]]\nwaba_id = \"%.0f\"\nphone_number_ids = [\"%.0f\"]\n", 100000000000000 + i, 200000000000000 + i }' >>"$RUNDIR/gw.toml"
"$WAB_BIN" --config "$RUNDIR/gw.toml" >"$RUNDIR/gw.log" 2>&1 &
GW=$!
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/9316) 2>/dev/null && break
  sleep 0.1
done
kill -0 "$GW" 2>/dev/null || die "gateway did not start: $(tail -3 "$RUNDIR/gw.log")"
sleep 0.5

# The nginx proxy's worker pids (children of its master).
NGX=$(pgrep -P "$(cat "$RUNDIR/nginx-proxy.pid")" | paste -sd' ' -)
declare -A PIDS=([wa-breaker]=$GW [nginx]=$NGX)
declare -A PORT=([wa-breaker]=9315 [nginx]=9312)

# "user_ticks sys_ticks voluntary involuntary" summed over every thread of the pids.
snap() {
  local p t
  for p in $1; do
    for t in /proc/"$p"/task/*; do
      awk '{ printf "%s %s ", $14, $15 }' "$t/stat"
      awk '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 } END { print v, n }' "$t/status"
    done
  done | awk '{ u += $1; s += $2; v += $3; n += $4 } END { print u + 0, s + 0, v + 0, n + 0 }'
}
load() { # port seconds -> wrk output
  wrk -t2 -c"$CONNS" -d"$2"s -s "$HERE/post.lua" "http://127.0.0.1:$1$URL"
}
requests_of() { awk '/^WAB_SUMMARY/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "requests") print kv[2] } }'; }

RES=$RUNDIR/profile.tsv
: >"$RES"
for r in $(seq 1 "$ROUNDS"); do
  for t in wa-breaker nginx; do
    load "${PORT[$t]}" "$WARMUP" >/dev/null
    s0=$(snap "${PIDS[$t]}")
    nstat -n >/dev/null
    out=$(load "${PORT[$t]}" "$DURATION")
    segs=$(nstat -z 2>/dev/null | awk '$1 == "TcpOutSegs" { o = $2 } $1 == "TcpInSegs" { i = $2 } $1 == "TcpExtTCPPureAcks" { a = $2 } END { print o + 0, i + 0, a + 0 }')
    s1=$(snap "${PIDS[$t]}")
    req=$(requests_of <<<"$out")
    [[ -n $req && $req -gt 0 ]] || die "$t: no requests counted: $out"
    # Every answer must be the upstream's 200: errors would make the CPU per request
    # someone else's figure.
    bad=$(awk '/^WAB_SUMMARY/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] != "requests" && kv[1] != "duration_us") n += kv[2] } print n + 0 }' <<<"$out")
    [[ $bad == 0 ]] || die "$t: $bad non-2xx answers or socket errors in the measured run: $(grep '^WAB_SUMMARY' <<<"$out")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$r" "$req" "$s0" "$s1" "$segs" >>"$RES"
    log "round $r $t: $req requests"
  done
done

SYS=$RUNDIR/strace
if [[ $STRACE == 1 ]]; then
  for t in wa-breaker nginx; do
    args=()
    for p in ${PIDS[$t]}; do args+=(-p "$p"); done
    strace -c -f "${args[@]}" -o "$SYS-$t.txt" 2>/dev/null &
    sp=$!
    sleep 1
    out=$(load "${PORT[$t]}" 4)
    kill -INT "$sp"
    wait "$sp" 2>/dev/null || true
    echo "$(requests_of <<<"$out")" >"$SYS-$t.req"
  done
fi

FLOOR_OUT=$RUNDIR/floor.txt
if [[ $FLOOR == 1 ]]; then
  log "cargo bench --bench kernel_floor"
  (cd "$ROOT" && cargo bench --bench kernel_floor -- --warm-up-time 1 --measurement-time 3) >"$FLOOR_OUT" 2>&1 \
    || die "kernel_floor: $(tail -5 "$FLOOR_OUT")"
fi

REPORT=$RUNDIR/profile.md
{
  echo "## Per-request profile — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- \`bash benches/load/profile.sh\` (CONNS=$CONNS, ${DURATION}s measured after ${WARMUP}s warm-up, $ROUNDS rounds); $(nproc) CPUs, $(uname -r)"
  echo "- wa-breaker: $WAB_BIN (relay, workers pinned), $WAB_ACCOUNTS accounts; nginx: benches/load/nginx-proxy.conf (2 workers pinned); both in front of nginx-up.conf"
  echo
  echo "| target | round | rps | CPU µs/req | user µs | kernel µs | voluntary cs/req | involuntary cs/req | TCP segs out/req | pure ACKs/req |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' -v hz="$HZ" -v d="$DURATION" '
    function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    { split($4, a, " "); split($5, b, " "); split($6, s, " "); q = $3
      u = (b[1] - a[1]) * 1e6 / hz / q; k = (b[2] - a[2]) * 1e6 / hz / q
      row[$1, $2] = sprintf("| %s | %s | %.0f | %.2f | %.2f | %.2f | %.3f | %.3f | %.2f | %.3f |", $1, $2, q / d, u + k, u, k, (b[3] - a[3]) / q, (b[4] - a[4]) / q, s[1] / q, s[3] / q)
      n[$1]++; R[$1, n[$1]] = q / d; C[$1, n[$1]] = u + k; U[$1, n[$1]] = u; K[$1, n[$1]] = k
      V[$1, n[$1]] = (b[3] - a[3]) / q; I[$1, n[$1]] = (b[4] - a[4]) / q; rounds = $2 }
    END { split("wa-breaker nginx", ts, " ")
      for (x = 1; x <= 2; x++) { t = ts[x]; for (r = 1; r <= rounds; r++) print row[t, r]
        for (k2 = 1; k2 <= n[t]; k2++) { r1[k2] = R[t, k2]; c1[k2] = C[t, k2]; u1[k2] = U[t, k2]; k1[k2] = K[t, k2]; v1[k2] = V[t, k2]; i1[k2] = I[t, k2] }
        mc[t] = med(c1, n[t]); mu[t] = med(u1, n[t]); mk[t] = med(k1, n[t])
        printf "| **%s** | median | %.0f | **%.2f** | %.2f | %.2f | %.3f | %.3f | | |\n", t, med(r1, n[t]), mc[t], mu[t], mk[t], med(v1, n[t]), med(i1, n[t]) }
      printf "\nwa-breaker / nginx (medians): CPU %.2f x, user %.2f x, kernel %.2f x. ", mc["wa-breaker"] / mc["nginx"], mu["wa-breaker"] / mu["nginx"], mk["wa-breaker"] / mk["nginx"]
      printf "With no user time at all, wa-breaker would cost %.2f x nginx'\''s CPU per request: the kernel share bounds the ratio any user-space change can reach.\n", mk["wa-breaker"] / mc["nginx"] }
  ' "$RES"
  if [[ $STRACE == 1 ]]; then
    echo
    echo "Syscalls per request (\`strace -c -f\`, a separate 4 s run; strace slows the servers, so counts only):"
    echo
    echo "| syscall | wa-breaker | nginx |"
    echo "|---|---:|---:|"
    for t in wa-breaker nginx; do
      awk -v t="$t" -v q="$(cat "$SYS-$t.req")" '$4 ~ /^[0-9]+$/ && $NF != "total" { printf "%s\t%s\t%.3f\n", $NF, t, $4 / q }
        $NF == "total" && $4 ~ /^[0-9]+$/ { printf "(all)\t%s\t%.3f\n", t, $4 / q }' "$SYS-$t.txt"
    done | awk -F'\t' '{ v[$1, $2] = $3; k[$1] = 1 } END { for (s in k) if (v[s, "wa-breaker"] + v[s, "nginx"] >= 0.005) printf "| %s | %s | %s |\n", s, (v[s, "wa-breaker"] == "" ? "0" : v[s, "wa-breaker"]), (v[s, "nginx"] == "" ? "0" : v[s, "nginx"]) }' | sort
  fi
  [[ -z $NO_STRACE ]] || printf '\n%s.\n' "$NO_STRACE"
  if [[ $FLOOR == 1 ]]; then
    echo
    echo "The kernel's floor (\`cargo bench --bench kernel_floor\`, criterion medians):"
    echo
    echo "| what | time |"
    echo "|---|---:|"
    awk '/^kernel_floor\// { name = $1 } /time:/ && name != "" { gsub(/\[/, ""); printf "| %s | %s %s |\n", name, $4, $5; name = "" }' "$FLOOR_OUT"
  fi
} >"$REPORT"
cp "$REPORT" "$OUT_DIR/profile.md"
cat "$REPORT"
