#!/usr/bin/env bash
# Load benchmark: wa-breaker against peer proxies on the same machine, in the same run.
#
#   bash benches/load/run.sh
#
# Targets (all driven with `wrk -t2 -cC -dD --latency -s post.lua URL`,
# URL path /v21.0/106540352242922/messages, loopback only):
#   direct     stand-in upstream, nginx :9001 (200 + Cloud API send result)
#   nginx      nginx reverse proxy :9012 -> :9001
#   pingora    pingora reverse proxy :9011 -> :9001 (built from crates.io by this script,
#              configured as its authors run it: see build_pingora)
#   haproxy    HAProxy :9013 -> :9001 (2 threads)
#   wab_pass   wa-breaker :9015 -> :9001, circuit closed (pass-through)
#   wab_hyper  wa-breaker :9017 -> :9001 with fast_path = false: the hyper
#              stack alone, the before/after row for the relay
#   nginx_403  nginx :9014 answering 403 / code 368 locally
#   wab_local  wa-breaker :9015 answering 403 locally (circuit opened via admin API)
#   wab_before_pass, wab_before_local
#              only with WAB_BIN_BEFORE: the same two rows for an older binary on
#              :9019 (admin :9020), each measured right after its current counterpart
#
# CPU placement: wa-breaker's default pin_workers = "auto" pins worker i to CPU i,
# and the peers are pinned the same way by their configs (nginx-proxy.conf:
# worker_cpu_affinity auto; haproxy.cfg: cpu-map auto:1/1-2 0-1). wrk and the
# stand-in upstream (nginx :9001, 1 worker) are not pinned.
#
# Environment:
#   DURATION=8s          measured run length per target x connection level
#   WARMUP=2s            warm-up run before each measured run (output discarded)
#   CONNS="64 256"       connection levels
#   ROUNDS=3             repeat the whole sweep; each reported column is the
#                        median over rounds (computed per column)
#   WAB_NO_BUILD=1       do not run `cargo build --release`
#   WAB_SKIP_GATEWAY=1   benchmark the peers only (no build, no wa-breaker rows)
#   WAB_BIN=path         gateway binary (default target/release/wa-breaker)
#   WAB_BIN_BEFORE=path  also run an older ("before") wa-breaker binary, with the same
#                        generated config (same accounts, fast_path default) on :9019
#                        (admin :9020) with its own state_dir, and report two extra rows
#                        per connection level (pass-through and local 403, each right
#                        after the current binary's row), "current / before" ratio lines
#                        (no target) and its memory. Never built by this script.
#   WAB_ACCOUNTS=10000   number of [[accounts]] in the generated config
#   WAB_HYPER_ROW=0      skip the fast_path = false row (wab_hyper)
#   PINGORA=0            leave out the pingora peer (default: built and run, see below)
#   PINGORA_DIR=path     where the pingora peer is built and cached (default
#                        ${XDG_CACHE_HOME:-~/.cache}/wa-breaker-bench/pingora-peer; outside
#                        the repository, never committed)
#   PINGORA_VERSION=0.9  the pingora version asked of crates.io
#   FIXED_RATES="1000 5000 20000"
#                        open-loop rates (sends/s) of the fixed-rate table, driven by
#                        examples/fixed_rate.rs (latency corrected for coordinated
#                        omission); FIXED_RATES="" leaves the table out
#   FR_CONNS=64 FR_DURATION=10s FR_WARMUP=2s FR_ROUNDS=3
#                        its connections, measured time, warm-up and rounds (medians;
#                        every rate and target once per round, in turn)
#   FR_BIN=path          the generator (default target/release/examples/fixed_rate; built
#                        with the gateway unless WAB_NO_BUILD=1)
#   PROFILE=0            leave out the per-request profile (benches/load/profile.sh, run
#                        last: user/kernel CPU, context switches, TCP segments and
#                        syscalls per request for wa-breaker and nginx, and the kernel's
#                        floor from `cargo bench --bench kernel_floor`)
#   WAN=0                leave out the TLS + emulated-WAN table (benches/load/wan.sh, run
#                        at the end; needs root for its network namespace)
#   TASKSET=1            pin wrk to WRK_CPUS (default 0) and every server to
#                        SRV_CPUS (default 1) with taskset. The nginx proxy and HAProxy
#                        configs are then generated without their pin lines
#                        (worker_cpu_affinity, cpu-map): those would re-bind the workers
#                        to CPUs 0 and 1, outside the taskset CPU. wa-breaker sees one
#                        allowed CPU, runs one worker and does not pin it.
#   OTHER_MAX=10         a measured run during which processes this script did not start
#                        used more than this % of the CPU is measured again ...
#   RERUN_MAX=2          ... up to this many times (the rejected run's raw output is kept
#                        as raw/<target>-c<conns>-r<round>-rejected<N>.txt)
#   OUT_DIR=path         results (default target/bench-load): latest.md, results.tsv (one
#                        line per measured run: the raw per-round figures), raw/ (wrk output)
#   KEEP_TMP=1           keep the temp dir (configs, pid files, logs)
#   NO_INSTALL=1         never call apt-get; fail if a tool is missing
#
# Every process this script starts is stopped on exit, error, INT or TERM.
set -euo pipefail
# The pace step runs on every send (shaping.mode defaults to enforce) but must not bind:
# these loads drive one phone number far past Meta's 80/s. Binaries from before shaping
# ignore the variable (unknown WA_BREAKER_ variables are logged and ignored).
export WA_BREAKER_SHAPING__THROUGHPUT=${WA_BREAKER_SHAPING__THROUGHPUT:-100000}

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-"64 256"}
ROUNDS=${ROUNDS:-3}
THREADS=2
WAB_ACCOUNTS=${WAB_ACCOUNTS:-10000}
WAB_BIN=${WAB_BIN:-$ROOT/target/release/wa-breaker}
WAB_BIN_BEFORE=${WAB_BIN_BEFORE:-}
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-load}
OTHER_MAX=${OTHER_MAX:-10}
RERUN_MAX=${RERUN_MAX:-2}
RERUNS=0

PHONE_ID=106540352242922
WABA_ID=102290129340398
URL_PATH=/v21.0/$PHONE_ID/messages
ADMIN_TOKEN=bench-admin-token
PORTS=(9001 9012 9013 9014 9015 9016 9017 9018)
[[ ${PINGORA:-1} == 0 ]] || PORTS+=(9011)
[[ -z $WAB_BIN_BEFORE ]] || PORTS+=(9019 9020)
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)

RUNDIR=""
WRK_PID=""
# wa-breaker instances: main (the current binary, :9015), hyper (same binary with
# fast_path = false, :9017), before (WAB_BIN_BEFORE, :9019). Each has its listen port,
# admin base URL, binary, log, name in messages, and (once started) its pid.
GATEWAYS=(main hyper before)
declare -A GW_PORT=([main]=9015 [hyper]=9017 [before]=9019)
declare -A GW_ADMIN=([main]=http://127.0.0.1:9016 [hyper]=http://127.0.0.1:9018 [before]=http://127.0.0.1:9020)
declare -A GW_NAME=([main]=wa-breaker [hyper]="wa-breaker (fast_path = false)" [before]="wa-breaker (before)")
declare -A GW_LOG=([main]=wa-breaker.log [hyper]=wa-breaker-hyper.log [before]=wa-breaker-before.log)
declare -A GW_PID=()
# the gateway each wa-breaker target runs against
declare -A GW_OF=([wab_pass]=main [wab_local]=main [wab_hyper]=hyper [wab_before_pass]=before [wab_before_local]=before)
SERVER_PIDS=()
POLICY_RC_CREATED=0
T0=$(date +%s)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
stop_pid() { # pid name
  local pid=$1 name=$2 i
  [[ -n $pid ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "$name (pid $pid) did not stop on TERM; sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_pidfile() { # file name
  local f=$1 name=$2 pid
  [[ -f $f ]] || return 0
  while read -r pid; do
    [[ $pid =~ ^[0-9]+$ ]] && stop_pid "$pid" "$name"
  done <"$f"
}

cleanup() {
  local rc=$? g
  trap - EXIT INT TERM
  set +e
  stop_pid "$WRK_PID" wrk
  # pingora: INT is its fast shutdown (TERM waits for a grace period).
  [[ -n ${PINGORA_PID:-} ]] && kill -INT "$PINGORA_PID" 2>/dev/null
  stop_pid "${PINGORA_PID:-}" pingora
  for g in "${GATEWAYS[@]}"; do
    stop_pid "${GW_PID[$g]:-}" "${GW_NAME[$g]}"
  done
  if [[ -n $RUNDIR ]]; then
    stop_pidfile "$RUNDIR/haproxy.pid" haproxy
    # TERM to an nginx master is its fast shutdown; it reaps its workers.
    stop_pidfile "$RUNDIR/nginx-proxy.pid" "nginx proxy"
    stop_pidfile "$RUNDIR/nginx-up.pid" "nginx upstream"
  fi
  if [[ $POLICY_RC_CREATED == 1 ]]; then
    rm -f /usr/sbin/policy-rc.d && log "removed the temporary /usr/sbin/policy-rc.d"
  fi
  if [[ -n $RUNDIR && -d $RUNDIR ]]; then
    if [[ $rc != 0 ]]; then
      mkdir -p "$OUT_DIR/failed-run"
      cp "$RUNDIR"/*.log "$RUNDIR"/*.err "$OUT_DIR/failed-run/" 2>/dev/null
      log "run failed (exit $rc); logs copied to $OUT_DIR/failed-run/"
    fi
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
      log "kept temp dir $RUNDIR"
    else
      rm -rf -- "$RUNDIR"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------- helpers
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  local i
  for i in $(seq 1 $(($2 * 10))); do
    port_open "$1" && return 0
    sleep 0.1
  done
  die "$3 did not listen on 127.0.0.1:$1 within $2 s"
}

wait_pidfile() { # file seconds name
  local i
  for i in $(seq 1 $(($2 * 10))); do
    [[ -s $1 ]] && return 0
    sleep 0.1
  done
  die "$3 wrote no pid file $1 within $2 s"
}

as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"
  else return 1
  fi
}

PIN_WRK=()
PIN_SRV=()
if [[ ${TASKSET:-0} == 1 ]]; then
  command -v taskset >/dev/null || die "TASKSET=1 but taskset is not installed (util-linux)"
  PIN_WRK=(taskset -c "${WRK_CPUS:-0}")
  PIN_SRV=(taskset -c "${SRV_CPUS:-1}")
fi

# ---------------------------------------------------------------- tools
ensure_tools() {
  local missing=() pkgs=() t tools=(wrk nginx haproxy curl)
  # The pingora peer's build needs cmake (libz-ng-sys).
  [[ ${PINGORA:-1} == 0 ]] || tools+=(cmake)
  for t in "${tools[@]}"; do
    if command -v "$t" >/dev/null; then log "found $t: $(command -v "$t")"
    else missing+=("$t")
    fi
  done
  [[ ${#missing[@]} == 0 ]] && return 0
  log "missing tools: ${missing[*]}"
  [[ ${NO_INSTALL:-0} == 1 ]] && die "NO_INSTALL=1; install them first: apt-get install -y wrk nginx-light haproxy curl"
  command -v apt-get >/dev/null || die "no apt-get here; install ${missing[*]} by hand"
  as_root true || die "need root (or passwordless sudo) to apt-get install ${missing[*]}"
  # Keep the packages' own init scripts from starting system-wide nginx/haproxy services.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    log "creating a temporary /usr/sbin/policy-rc.d (exit 101) so apt does not start the packaged services"
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    POLICY_RC_CREATED=1
  fi
  log "running: apt-get update"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
  for t in "${missing[@]}"; do
    case $t in
      nginx)
        # nginx-light is smaller (Debian 12); later releases only ship nginx.
        if apt-cache show nginx-light >/dev/null 2>&1; then pkgs+=(nginx-light); else pkgs+=(nginx); fi ;;
      *) pkgs+=("$t") ;;
    esac
  done
  log "running: apt-get install -y --no-install-recommends ${pkgs[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2 \
    || die "apt-get install ${pkgs[*]} failed"
  if [[ $POLICY_RC_CREATED == 1 ]]; then
    as_root rm -f /usr/sbin/policy-rc.d && POLICY_RC_CREATED=0
  fi
  for t in "${missing[@]}"; do
    command -v "$t" >/dev/null || die "$t still not found after apt-get install"
  done
}

ensure_tools

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

V_WRK=$(wrk -v 2>&1 | sed -n 1p | awk '{print $1" "$2}' || true)
V_NGINX=$(nginx -v 2>&1 | sed 's/^nginx version: //' | sed -n 1p)
V_HAPROXY=$(haproxy -v 2>&1 | sed -n 1p | awk '{print $1" "$3}')
V_CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | sed -n 1p)
V_NPROC=$(nproc)
V_KERNEL=$(uname -r)

# ---------------------------------------------------------------- gateway binary
GATEWAY=1
if [[ ${WAB_SKIP_GATEWAY:-0} == 1 ]]; then
  log "WAB_SKIP_GATEWAY=1: benchmarking the peers only"
  GATEWAY=0
else
  if [[ ${WAB_NO_BUILD:-0} != 1 ]]; then
    log "running: cargo build --release --bin wa-breaker --example fixed_rate --example delay_relay (set WAB_NO_BUILD=1 to skip)"
    (cd "$ROOT" && cargo build --release --bin wa-breaker --example fixed_rate --example delay_relay >&2) \
      || die "cargo build --release failed (WAB_SKIP_GATEWAY=1 benchmarks the peers only)"
  fi
  if [[ ! -x $WAB_BIN ]]; then
    log "no gateway binary at $WAB_BIN: skipping the wa-breaker rows"
    GATEWAY=0
  fi
fi
BEFORE=0
if [[ -n $WAB_BIN_BEFORE ]]; then
  if [[ $GATEWAY == 1 ]]; then
    [[ -x $WAB_BIN_BEFORE ]] || die "WAB_BIN_BEFORE=$WAB_BIN_BEFORE is not an executable file"
    BEFORE=1
  else
    log "WAB_BIN_BEFORE is set but the current gateway is not run: skipping the before rows too"
  fi
fi


# ---------------------------------------------------------------- pingora peer
# A pingora reverse proxy to the stand-in upstream, set up the way pingora's authors run
# it (docs/user_guide/conf.md and internals.md, pingora/examples/server.rs):
#   - jemalloc as the global allocator (pingora's own examples use it; glibc malloc is
#     slower for its allocation pattern);
#   - threads: 2, one per CPU, like nginx's and HAProxy's two workers and the gateway's;
#   - work_stealing: false: pingora's "N isolated single-threaded runtimes" mode, the
#     same model as nginx workers and the gateway's per-core workers, so each thread can be
#     pinned to its own CPU like theirs (run.sh pins thread i to CPU i with taskset after
#     start; pingora has no affinity setting of its own);
#   - upstream_keepalive_pool_size: 128, the same pool as nginx's `keepalive 128`;
#   - no logging phase, no access log (nginx and HAProxy run with access logs off).
# Built once into PINGORA_DIR (outside the repository) and reused while its sources
# are unchanged.
PINGORA_BIN=""
build_pingora() {
  local dir=${PINGORA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/wa-breaker-bench/pingora-peer}
  local ver=${PINGORA_VERSION:-0.9}
  mkdir -p "$dir/src"
  local tmp
  tmp=$(mktemp -d)
  cat >"$tmp/Cargo.toml" <<TOML
[package]
name = "wab-pingora-peer"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
pingora = { version = "$ver", default-features = false, features = ["proxy"] }
async-trait = "0.1"
tikv-jemallocator = "0.6"

[profile.release]
codegen-units = 1
lto = "thin"
TOML
  cat >"$tmp/main.rs" <<'RS'
//! The pingora peer of wa-breaker's load benchmark: proxies every request to the
//! stand-in upstream 127.0.0.1:9001 over pooled HTTP/1.1 connections.
use async_trait::async_trait;
use pingora::prelude::*;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Peer;

#[async_trait]
impl ProxyHttp for Peer {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(("127.0.0.1", 9001), false, String::new())))
    }
}

fn main() {
    let mut server = Server::new(Some(Opt::parse_args())).expect("pingora server");
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Peer);
    proxy.add_tcp("127.0.0.1:9011");
    server.add_service(proxy);
    server.run_forever();
}
RS
  if [[ -x $dir/target/release/wab-pingora-peer ]] && cmp -s "$tmp/Cargo.toml" "$dir/Cargo.toml" \
     && cmp -s "$tmp/main.rs" "$dir/src/main.rs"; then
    log "pingora peer: cached build in $dir"
  else
    cp "$tmp/Cargo.toml" "$dir/Cargo.toml"
    cp "$tmp/main.rs" "$dir/src/main.rs"
    log "pingora peer: building pingora $ver from crates.io in $dir (nice -n 19; once, then cached)"
    (cd "$dir" && nice -n 19 cargo build --release >&2) || { rm -rf "$tmp"; return 1; }
  fi
  rm -rf "$tmp"
  PINGORA_BIN=$dir/target/release/wab-pingora-peer
  V_PINGORA="pingora $(awk '/^name = "pingora"$/ { getline; gsub(/[^0-9.]/, "", $0); print; exit }' "$dir/Cargo.lock" 2>/dev/null)"
}
PINGORA_ON=0
V_PINGORA=""
if [[ ${PINGORA:-1} != 0 ]]; then
  if build_pingora; then PINGORA_ON=1
  else log "pingora peer: build failed; its rows are skipped (PINGORA=0 leaves them out)"
  fi
fi

# ---------------------------------------------------------------- machine quiet?
# CPU used by other processes over 1 s, from /proc/stat (all CPUs).
cpu_busy_pct() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[1] - x[1]
    printf "%.0f", (t > 0) ? 100 * (t - (y[2] - x[2])) / t : 0 }'
}
BUSY_START=$(cpu_busy_pct)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if ((BUSY_START > 15)); then
  log "WARNING: the machine is busy before the benchmark starts (${BUSY_START}% CPU in use, load $LOAD_START);"
  log "WARNING: with wrk and the servers sharing the cores, every figure will be lower and noisier"
fi

# ---------------------------------------------------------------- start servers
for p in "${PORTS[@]}"; do
  port_open "$p" && die "127.0.0.1:$p is already in use; stop whatever listens there first"
done

RUNDIR=$(mktemp -d "${TMPDIR:-/tmp}/wab-bench.XXXXXX")
log "temp dir $RUNDIR"
# The peers pin their workers like wa-breaker (worker_cpu_affinity / cpu-map), except
# with TASKSET=1: every server is then confined to SRV_CPUS, and those lines would make
# nginx and HAProxy re-bind their workers to CPUs 0 and 1, outside that set.
if [[ ${TASKSET:-0} == 1 ]]; then
  PEER_UNPIN=(-e '/^[[:space:]]*worker_cpu_affinity[[:space:]]/d' -e '/^[[:space:]]*cpu-map[[:space:]]/d')
  log "TASKSET=1: nginx proxy and HAProxy configs generated without worker_cpu_affinity / cpu-map"
else
  PEER_UNPIN=()
fi
for f in nginx-up.conf nginx-proxy.conf haproxy.cfg; do
  sed -e "s#@RUNDIR@#$RUNDIR#g" "${PEER_UNPIN[@]}" "$HERE/$f" >"$RUNDIR/$f"
done

log "starting nginx upstream :9001"
"${PIN_SRV[@]}" nginx -p "$RUNDIR" -e "$RUNDIR/nginx-up.err" -c "$RUNDIR/nginx-up.conf" \
  || die "nginx (upstream) failed to start: $(tail -5 "$RUNDIR/nginx-up.err" 2>/dev/null)"
wait_pidfile "$RUNDIR/nginx-up.pid" 10 "nginx upstream"
wait_port 9001 10 "nginx upstream"

log "starting nginx proxy :9012 and nginx local 403 :9014"
"${PIN_SRV[@]}" nginx -p "$RUNDIR" -e "$RUNDIR/nginx-proxy.err" -c "$RUNDIR/nginx-proxy.conf" \
  || die "nginx (proxy) failed to start: $(tail -5 "$RUNDIR/nginx-proxy.err" 2>/dev/null)"
wait_pidfile "$RUNDIR/nginx-proxy.pid" 10 "nginx proxy"
wait_port 9012 10 "nginx proxy"
wait_port 9014 10 "nginx local 403"

log "starting HAProxy :9013"
"${PIN_SRV[@]}" haproxy -f "$RUNDIR/haproxy.cfg" -D -p "$RUNDIR/haproxy.pid" >"$RUNDIR/haproxy.log" 2>&1 \
  || die "haproxy failed to start: $(tail -5 "$RUNDIR/haproxy.log")"
wait_pidfile "$RUNDIR/haproxy.pid" 10 haproxy
wait_port 9013 10 haproxy
mapfile -t -O "${#SERVER_PIDS[@]}" SERVER_PIDS < <(cat "$RUNDIR/nginx-up.pid" "$RUNDIR/nginx-proxy.pid" "$RUNDIR/haproxy.pid")
# the process (with its children) whose CPU time is charged to each target
declare -A SRV_OF=(
  [direct]=$(cat "$RUNDIR/nginx-up.pid")
  [nginx]=$(cat "$RUNDIR/nginx-proxy.pid")
  [nginx_403]=$(cat "$RUNDIR/nginx-proxy.pid")
  [haproxy]=$(cat "$RUNDIR/haproxy.pid")
)

# CPUs each worker process (nginx: the master's children) or thread (HAProxy) may run
# on, as the kernel sees it: "0 1" = two workers, one on CPU 0, one on CPU 1.
cpus_of_children() { # parent pid
  local c
  for c in $(pgrep -P "$1"); do
    awk '/^Cpus_allowed_list:/ {print $2}' "/proc/$c/status" 2>/dev/null
  done | sort | paste -sd' ' -
}
cpus_of_threads() { # pid
  awk '/^Cpus_allowed_list:/ {print $2}' /proc/"$1"/task/*/status 2>/dev/null | sort | paste -sd' ' -
}

if [[ $PINGORA_ON == 1 ]]; then
  log "starting pingora :9011"
  cat >"$RUNDIR/pingora.yaml" <<YAML
---
version: 1
threads: 2
work_stealing: false
upstream_keepalive_pool_size: 128
pid_file: $RUNDIR/pingora.pid
error_log: $RUNDIR/pingora.err
upgrade_sock: $RUNDIR/pingora-upgrade.sock
YAML
  "${PIN_SRV[@]}" "$PINGORA_BIN" -c "$RUNDIR/pingora.yaml" >"$RUNDIR/pingora.log" 2>&1 &
  PINGORA_PID=$!
  SERVER_PIDS+=("$PINGORA_PID")
  wait_port 9011 30 pingora
  SRV_OF[pingora]=$PINGORA_PID
  # Pin its two service threads (named after the service) like nginx's workers.
  if [[ ${TASKSET:-0} != 1 ]]; then
    i=0
    for task in /proc/"$PINGORA_PID"/task/*; do
      comm=$(cat "$task/comm" 2>/dev/null || true)
      [[ $comm == "Pingora HTTP"* ]] || continue
      taskset -p -c $((i % V_NPROC)) "${task##*/}" >/dev/null 2>&1 && i=$((i + 1))
    done
    log "pingora: pinned $i service threads (thread i on CPU i)"
  fi
  AFF_PINGORA=$(cpus_of_threads "$PINGORA_PID")
fi
AFF_NGINX=$(cpus_of_children "${SRV_OF[nginx]}")
AFF_HAPROXY=$(cpus_of_threads "${SRV_OF[haproxy]}")
AFF_UP=$(cpus_of_children "${SRV_OF[direct]}")
log "CPUs allowed: nginx proxy workers [$AFF_NGINX], HAProxy threads [$AFF_HAPROXY], upstream worker [$AFF_UP]"

rss_kb() { # pid field(VmRSS|VmHWM)
  awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null || true
}
kb_mb() { [[ -n $1 ]] && awk -v k="$1" 'BEGIN{printf "%.1f MB", k/1024}' || echo "n/a"; }

AFF_WAB=""
# memory per gateway: VmRSS/VmHWM 1 s after /readyz, and after the whole run
declare -A RSS_IDLE=() HWM_IDLE=() RSS_END=() HWM_END=()

# Starts gateway $1 from binary $2 with config $3 and waits for its /readyz (30 s at most).
start_gateway() { # gateway binary config
  local g=$1 bin=$2 cfg=$3 i code="" pid
  log "starting ${GW_NAME[$g]} :${GW_PORT[$g]} (admin ${GW_ADMIN[$g]#http://}): $bin --config $cfg"
  "${PIN_SRV[@]}" "$bin" --config "$cfg" >"$RUNDIR/${GW_LOG[$g]}" 2>&1 &
  pid=$!
  GW_PID[$g]=$pid
  SERVER_PIDS+=("$pid")
  for i in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || die "${GW_NAME[$g]} exited during startup: $(tail -20 "$RUNDIR/${GW_LOG[$g]}")"
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${GW_ADMIN[$g]}/readyz" || true)
    if [[ $code == 200 ]]; then
      log "${GW_NAME[$g]} ready after ~$((i / 10)).$((i % 10)) s"
      return 0
    fi
    sleep 0.1
  done
  die "${GW_NAME[$g]} /readyz not 200 within 30 s (last: ${code:-none}): $(tail -20 "$RUNDIR/${GW_LOG[$g]}")"
}

# Idle memory of gateway $1, 1 s after it turned ready (before any traffic).
sample_idle_memory() { # gateway
  local g=$1
  sleep 1
  RSS_IDLE[$g]=$(rss_kb "${GW_PID[$g]}" VmRSS)
  HWM_IDLE[$g]=$(rss_kb "${GW_PID[$g]}" VmHWM)
  log "${GW_NAME[$g]} idle RSS with $WAB_ACCOUNTS WABAs: $(kb_mb "${RSS_IDLE[$g]}") (peak so far $(kb_mb "${HWM_IDLE[$g]}"))"
}

# Same config as $1 on gateway $2's ports with its own state_dir $3 -> stdout.
derive_config() { # base_config gateway state_dir
  local admin=${GW_ADMIN[$2]#http://}
  sed -e "s/127.0.0.1:9015/127.0.0.1:${GW_PORT[$2]}/; s/127.0.0.1:9016/$admin/" \
    -e "s#^state_dir = .*#state_dir = \"$3\"#" "$1"
}

if [[ $GATEWAY == 1 ]]; then
  mkdir -p "$RUNDIR/state"
  cfg=$RUNDIR/wa-breaker.toml
  {
    printf 'listen = "127.0.0.1:%s"\n' "${GW_PORT[main]}"
    printf 'admin_listen = "%s"\n' "${GW_ADMIN[main]#http://}"
    printf 'upstream = "http://127.0.0.1:9001"\n'
    printf 'state_dir = "%s/state"\n' "$RUNDIR"
    printf 'admin_token = "%s"\n' "$ADMIN_TOKEN"
    printf 'log_level = "warn"\n\n'
    printf '[[accounts]]\nwaba_id = "%s"\nphone_number_ids = ["%s"]\n\n' "$WABA_ID" "$PHONE_ID"
    # %.0f, not %d: mawk's %d overflows at 2^31.
    awk -v n=$((WAB_ACCOUNTS - 1)) 'BEGIN {
      for (i = 1; i <= n; i++)
        printf "[[accounts]]\nwaba_id = \"%.0f\"\nphone_number_ids = [\"%.0f\"]\n\n", 100000000000000 + i, 200000000000000 + i
    }'
  } >"$cfg"
  log "generated $cfg with $(grep -c '^\[\[accounts\]\]' "$cfg") accounts (incl. $PHONE_ID -> $WABA_ID)"

  start_gateway main "$WAB_BIN" "$cfg"
  SRV_OF[wab_pass]=${GW_PID[main]}
  SRV_OF[wab_local]=${GW_PID[main]}
  sample_idle_memory main
  AFF_WAB=$(cpus_of_threads "${GW_PID[main]}")
  log "CPUs allowed: wa-breaker threads [$AFF_WAB]"

  if [[ ${WAB_HYPER_ROW:-1} != 0 ]]; then
    # Same config, own ports and state, relay off: every request through the hyper stack.
    mkdir -p "$RUNDIR/state-hyper"
    derive_config "$cfg" hyper "$RUNDIR/state-hyper" \
      | sed -e 's/^log_level = "warn"$/log_level = "warn"\nfast_path = false/' >"$RUNDIR/wa-breaker-hyper.toml"
    start_gateway hyper "$WAB_BIN" "$RUNDIR/wa-breaker-hyper.toml"
    SRV_OF[wab_hyper]=${GW_PID[hyper]}
  fi

  if [[ $BEFORE == 1 ]]; then
    # The older binary: same config (same accounts, fast_path default), own ports and state.
    mkdir -p "$RUNDIR/state-before"
    derive_config "$cfg" before "$RUNDIR/state-before" >"$RUNDIR/wa-breaker-before.toml"
    start_gateway before "$WAB_BIN_BEFORE" "$RUNDIR/wa-breaker-before.toml"
    SRV_OF[wab_before_pass]=${GW_PID[before]}
    SRV_OF[wab_before_local]=${GW_PID[before]}
    sample_idle_memory before
  fi
fi

# ---------------------------------------------------------------- sample requests
BODY=$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$HERE/post.lua")
AUTH=$(sed -n 's/^wrk.headers\["Authorization"\] = "\(.*\)"$/\1/p' "$HERE/post.lua")
[[ -n $BODY && -n $AUTH ]] || die "could not read the body/token from post.lua"

sample() { # port out_prefix -> prints status; body in PREFIX.body, headers in PREFIX.hdr
  curl -s -o "$2.body" -D "$2.hdr" -w '%{http_code}' --max-time 5 -X POST \
    -H 'Content-Type: application/json' -H "Authorization: $AUTH" \
    --data-binary "$BODY" "http://127.0.0.1:$1$URL_PATH" || true
}

admin_post() { # gateway path -> prints status; body in $RUNDIR/admin.out
  curl -s -o "$RUNDIR/admin.out" -w '%{http_code}' --max-time 5 -X POST \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
    -d '{"reason":"bench"}' "${GW_ADMIN[$1]}$2" || true
}

code=$(sample 9001 "$RUNDIR/direct")
[[ $code == 200 ]] || die "direct upstream sample answered $code, want 200"
PEER_PORTS=(9012 9013)
[[ $PINGORA_ON == 1 ]] && PEER_PORTS+=(9011)
for p in "${PEER_PORTS[@]}"; do
  code=$(sample $p "$RUNDIR/peer$p")
  [[ $code == 200 ]] || die "peer :$p sample answered $code, want 200"
done
code=$(sample 9014 "$RUNDIR/peer9014")
[[ $code == 403 ]] || die "nginx local 403 sample answered $code, want 403"

# ---------------------------------------------------------------- measuring
RESULTS=$RUNDIR/results.tsv
: >"$RESULTS"
declare -A SKIP=()
declare -A CIRCUIT=([main]=closed [hyper]=closed [before]=closed)
rm -rf "$OUT_DIR/raw" "$OUT_DIR/failed-run" "$OUT_DIR/wa-breaker.log" "$OUT_DIR/wa-breaker-before.log"
mkdir -p "$OUT_DIR/raw"

# Per connection level, in this order; each before row right after its current counterpart.
TARGETS=(direct nginx haproxy)
if [[ $PINGORA_ON == 1 ]]; then TARGETS+=(pingora); fi
TARGETS+=(wab_pass)
if [[ -n $WAB_BIN_BEFORE ]]; then TARGETS+=(wab_before_pass); fi
if [[ ${WAB_HYPER_ROW:-1} != 0 ]]; then TARGETS+=(wab_hyper); fi
TARGETS+=(nginx_403 wab_local)
if [[ -n $WAB_BIN_BEFORE ]]; then TARGETS+=(wab_before_local); fi
declare -A PORT=([direct]=9001 [nginx]=9012 [haproxy]=9013 [nginx_403]=9014 [pingora]=9011
  [wab_pass]=${GW_PORT[main]} [wab_local]=${GW_PORT[main]} [wab_hyper]=${GW_PORT[hyper]}
  [wab_before_pass]=${GW_PORT[before]} [wab_before_local]=${GW_PORT[before]})
declare -A LABEL=(
  [direct]="direct upstream (nginx :9001)"
  [nginx]="nginx proxy :9012"
  [haproxy]="HAProxy :9013"
  [pingora]="pingora :9011"
  [wab_pass]="wa-breaker pass-through :${GW_PORT[main]}"
  [wab_before_pass]="wa-breaker (before) pass-through :${GW_PORT[before]}"
  [wab_hyper]="wa-breaker pass-through, fast_path = false :${GW_PORT[hyper]}"
  [nginx_403]="nginx local 403 :9014"
  [wab_local]="wa-breaker local 403 (open) :${GW_PORT[main]}"
  [wab_before_local]="wa-breaker (before) local 403 (open) :${GW_PORT[before]}"
)

run_wrk() { # port conns duration outfile
  local rc=0
  "${PIN_WRK[@]}" wrk -t"$THREADS" -c"$2" -d"$3" --latency -s "$HERE/post.lua" \
    "http://127.0.0.1:$1$URL_PATH" >"$4" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || rc=$?
  WRK_PID=""
  return $rc
}

# -> "rps p50_ms p99_ms p999_ms non2xx sock_errors requests"
parse_wrk() {
  awk '
    function ms(s) {
      if (s ~ /us$/) return substr(s, 1, length(s) - 2) / 1000
      if (s ~ /ms$/) return substr(s, 1, length(s) - 2) + 0
      if (s ~ /m$/)  return substr(s, 1, length(s) - 1) * 60000
      if (s ~ /s$/)  return substr(s, 1, length(s) - 1) * 1000
      return s + 0
    }
    /^Requests\/sec:/ { rps = $2 }
    /^ +50% / { p50 = ms($2) }
    /^ +99% / { p99 = ms($2) }
    /^WAB_LAT_US / || /^WAB_SUMMARY / {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    }
    END {
      if (rps == "" || !("p999" in v)) exit 1
      if (p50 == "") p50 = v["p50"] / 1000
      if (p99 == "") p99 = v["p99"] / 1000
      printf "%.0f %.3f %.3f %.3f %d %d %d\n", rps, p50, p99, v["p999"] / 1000,
        v["status"], v["connect"] + v["read"] + v["write"] + v["timeout"], v["requests"]
    }' "$1"
}

# CPU ticks of this script (incl. reaped children such as wrk) and of every
# server it started (SERVER_PIDS, and their children, e.g. nginx workers).
our_ticks() { ticks_of "$$ ${SERVER_PIDS[*]}" $$; }
# CPU ticks (utime+stime) of the processes in $1 and their children; with $2,
# also that process's reaped children (cutime+cstime).
ticks_of() {
  # A process may exit between the glob and the read: cat then fails, which is fine.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$1" -v self="${2:-}" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) root[r[i]] = 1 }
    { pid = $1; rest = substr($0, match($0, /\) [A-Za-z] /) + 2); split(rest, f, " ")
      # f[1] state, f[2] ppid, f[12] utime, f[13] stime, f[14] cutime, f[15] cstime
      if ((pid in root) || (f[2] in root)) sum += f[12] + f[13]
      if (pid == self) sum += f[14] + f[15] }
    END { printf "%.0f\n", sum }'
}
# "busy total steal" CPU ticks from /proc/stat: busy = user + nice + system + irq +
# softirq (softirq must count: loopback traffic's softirq time is charged to our
# processes' stime); steal (time the hypervisor gave to other guests) is kept apart.
cpu_ticks() { awk '/^cpu / { printf "%.0f %.0f %.0f\n", $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $9 }' /proc/stat; }
# -> "other steal": % of all CPU used by processes this script did not start, and % stolen
# by the hypervisor, between two samples.
foreign_pct() { # "busy0 total0 steal0" ours0 "busy1 total1 steal1" ours1
  awk -v a="$1" -v o0="$2" -v b="$3" -v o1="$4" 'BEGIN { split(a, x, " "); split(b, y, " ")
    t = y[2] - x[2]; f = (y[1] - x[1]) - (o1 - o0); if (f < 0) f = 0
    printf "%.0f %.1f\n", (t > 0) ? 100 * f / t : 0, (t > 0) ? 100 * (y[3] - x[3]) / t : 0 }'
}

# One measured run of target $1 into raw file $2: `$3` (a warm-up, or "-") then `$4` (the
# measured command, which writes $2), with the CPU ticks around the measured part. A run
# during which other processes used more than OTHER_MAX % of the CPU is measured again, up
# to RERUN_MAX times; the rejected run's output is kept beside. Sets s0 s1 (the server's
# ticks), bg st (other % and steal %) and attempt.
measure_run() { # target raw warmup_fn measure_fn
  local t=$1 raw=$2 c0 c1 o0 o1
  attempt=0
  while :; do
    attempt=$((attempt + 1))
    [[ $3 == - ]] || "$3"
    c0=$(cpu_ticks); o0=$(our_ticks); s0=$(ticks_of "${SRV_OF[$t]}")
    "$4"
    c1=$(cpu_ticks); o1=$(our_ticks); s1=$(ticks_of "${SRV_OF[$t]}")
    read -r bg st <<<"$(foreign_pct "$c0" "$o0" "$c1" "$o1")"
    if ((bg > OTHER_MAX && attempt <= RERUN_MAX)); then
      mv "$raw" "${raw%.txt}-rejected$attempt.txt"
      log "  other processes used ${bg}% of the CPU (steal ${st}%): measuring again"
      RERUNS=$((RERUNS + 1))
      continue
    fi
    return 0
  done
}

# Prepares the gateway of wa-breaker target $1 (GW_OF); returns non-zero (and sets
# SKIP[$1]) when it cannot. Pass-through targets (*_pass, wab_hyper): circuit closed
# (closed via the admin API if this script opened it), and a sample answers 200 with a
# body identical to the upstream's. Local targets (*_local): circuit opened via the
# admin API, and a sample answers 403 with x-wa-breaker: open.
prepare() {
  local t=$1 g=${GW_OF[$1]} code port name
  port=${GW_PORT[$g]}
  name=${GW_NAME[$g]}
  case $t in
    *_pass | wab_hyper)
      if [[ ${CIRCUIT[$g]} == open ]]; then
        code=$(admin_post "$g" "/admin/circuits/$WABA_ID/close")
        [[ $code == 200 ]] || {
          SKIP[$t]="admin close answered ${code:-no answer}"
          log "$name: POST /admin/circuits/$WABA_ID/close: HTTP ${code:-none} $(head -c 200 "$RUNDIR/admin.out" 2>/dev/null)"
          return 1
        }
        CIRCUIT[$g]=closed
      fi
      code=$(sample "$port" "$RUNDIR/sample-$t")
      [[ $code == 200 ]] || { SKIP[$t]="sample through $name answered $code"; log "$name pass-through sample: HTTP $code"; return 1; }
      cmp -s "$RUNDIR/sample-$t.body" "$RUNDIR/direct.body" \
        || { SKIP[$t]="sample body differs from direct"; log "$name pass-through body differs from direct"; return 1; }
      log "$name pass-through sample: 200, body identical to direct"
      ;;
    *_local)
      if [[ ${CIRCUIT[$g]} != open ]]; then
        code=$(admin_post "$g" "/admin/circuits/$WABA_ID/open")
        [[ $code == 200 ]] || {
          SKIP[$t]="admin open answered ${code:-no answer}"
          log "$name: POST /admin/circuits/$WABA_ID/open: HTTP ${code:-none} $(head -c 200 "$RUNDIR/admin.out" 2>/dev/null)"
          return 1
        }
        CIRCUIT[$g]=open
      fi
      code=$(sample "$port" "$RUNDIR/sample-$t")
      if [[ $code != 403 ]] || ! grep -qi '^x-wa-breaker: *open' "$RUNDIR/sample-$t.hdr"; then
        SKIP[$t]="open-circuit sample answered $code without x-wa-breaker: open"
        log "$name local sample: HTTP $code; headers: $(tr '\r\n' '  ' <"$RUNDIR/sample-$t.hdr")"
        return 1
      fi
      log "$name local-answer sample: 403 with x-wa-breaker: open"
      ;;
  esac
  return 0
}

for round in $(seq 1 "$ROUNDS"); do
  for c in $CONNS; do
    for t in "${TARGETS[@]}"; do
      if [[ $t == wab_* ]]; then
        [[ $GATEWAY == 1 ]] || { SKIP[$t]="gateway not run"; continue; }
        [[ -n ${SKIP[$t]:-} ]] && continue
        g=${GW_OF[$t]}
        kill -0 "${GW_PID[$g]}" 2>/dev/null || die "${GW_NAME[$g]} died: $(tail -20 "$RUNDIR/${GW_LOG[$g]}")"
        prepare "$t" || continue
      fi
      port=${PORT[$t]}
      raw=$OUT_DIR/raw/$t-c$c-r$round.txt
      wrk_warmup() {
        log "round $round/$ROUNDS  $t  -c$c  warm-up $WARMUP$( ((attempt > 1)) && echo " (attempt $attempt)")"
        run_wrk "$port" "$c" "$WARMUP" "$RUNDIR/warmup.out" || die "wrk warm-up failed: $(tail -5 "$RUNDIR/warmup.out")"
        log "round $round/$ROUNDS  $t  -c$c  measuring $DURATION"
      }
      wrk_measure() { run_wrk "$port" "$c" "$DURATION" "$raw" || die "wrk failed: $(tail -5 "$raw")"; }
      measure_run "$t" "$raw" wrk_warmup wrk_measure
      vals=$(parse_wrk "$raw") || die "could not parse wrk output $raw"
      read -r rps p50 p99 p999 n2 err reqs <<<"$vals"
      # CPU of the server under test (not wrk, not the upstream) per request, in µs.
      us=$(awk -v d=$((s1 - s0)) -v n="$reqs" -v hz="$HZ" 'BEGIN { printf "%.1f", (n > 0) ? d * 1e6 / hz / n : 0 }')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$c" "$round" \
        "$rps" "$p50" "$p99" "$p999" "$n2" "$err" "$bg" "$us" "$st" "$attempt" >>"$RESULTS"
      log "  -> server-cpu $us us/req  rps $rps  p50 $p50  p99 $p99  p99.9 $p999 ms  non-2xx $n2  errors $err  other-cpu $bg%  steal $st%"
      ((bg > OTHER_MAX)) && log "  WARNING: other processes used ${bg}% of the CPU during this run (after $RERUN_MAX re-runs)"
    done
  done
done


# ---------------------------------------------------------------- fixed rate
# Open loop: FR_CONNS connections share a fixed rate (examples/fixed_rate.rs); latency
# runs from when a send was due whenever it waited behind a slow answer (coordinated
# omission corrected). "Added" = the target's percentile minus going direct's, same rate.
FIXED_RATES=${FIXED_RATES-"1000 5000 20000"}
FR_CONNS=${FR_CONNS:-64}
FR_DURATION=${FR_DURATION:-10s}
FR_WARMUP=${FR_WARMUP:-2s}
FR_ROUNDS=${FR_ROUNDS:-3}
FR_BIN=${FR_BIN:-$ROOT/target/release/examples/fixed_rate}
FR_RESULTS=$RUNDIR/fixed-rate.tsv
FR_SUMMARY=$RUNDIR/fixed-summary.tsv
: >"$FR_RESULTS"
: >"$FR_SUMMARY"
FR_TARGETS=(direct nginx haproxy)
if [[ $PINGORA_ON == 1 ]]; then FR_TARGETS+=(pingora); fi
if [[ $GATEWAY == 1 ]]; then
  FR_TARGETS+=(wab_pass)
  if [[ ${WAB_HYPER_ROW:-1} != 0 ]]; then FR_TARGETS+=(wab_hyper); fi
fi
if [[ -n $FIXED_RATES && ! -x $FR_BIN ]]; then
  log "no fixed-rate generator at $FR_BIN (cargo build --release --example fixed_rate): fixed-rate table skipped"
  FIXED_RATES=""
fi
for round in $(seq 1 "$FR_ROUNDS"); do
  for rate in $FIXED_RATES; do
    for t in "${FR_TARGETS[@]}"; do
      if [[ $t == wab_* ]]; then
        [[ -n ${SKIP[$t]:-} ]] && continue
        prepare "$t" || continue
      fi
      raw=$OUT_DIR/raw/fixed-$t-$rate-r$round.txt
      fr_measure() {
        log "fixed rate: round $round/$FR_ROUNDS  $t  $rate/s  ($FR_CONNS conns, warm-up $FR_WARMUP, $FR_DURATION)"
        "${PIN_WRK[@]}" "$FR_BIN" --url "http://127.0.0.1:${PORT[$t]}$URL_PATH" --rate "$rate" \
          --conns "$FR_CONNS" --duration "$FR_DURATION" --warmup "$FR_WARMUP" >"$raw" 2>&1 \
          || die "fixed_rate failed: $(tail -5 "$raw")"
      }
      measure_run "$t" "$raw" - fr_measure
      # The CPU window includes the warm-up: charge the server's CPU to every send made.
      line=$(grep '^FIXED_RATE ' "$raw") || die "no FIXED_RATE line in $raw"
      fr=$(awk -v d=$((s1 - s0)) -v hz="$HZ" -v w="$FR_WARMUP" -v m="$FR_DURATION" '{
          for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
          ws = w + 0; ms = m + 0; n = v["rate"] * (ws + ms)
          printf "%.3f %.3f %.3f %.3f %.3f %d %d %d %d %.3f %.1f", v["p50_us"] / 1000, v["p90_us"] / 1000,
            v["p99_us"] / 1000, v["p999_us"] / 1000, v["max_us"] / 1000, v["achieved"], v["errors"], v["non2xx"],
            v["sent"], v["late_p99_us"] / 1000, (n > 0) ? d * 1e6 / hz / n : 0 }' <<<"$line")
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$rate" "$round" "$(tr ' ' '\t' <<<"$fr")" "$bg" "$st" >>"$FR_RESULTS"
      log "  -> $line other-cpu $bg% steal $st%"
    done
  done
done

if [[ $GATEWAY == 1 ]]; then
  for g in main before; do
    [[ -n ${GW_PID[$g]:-} ]] || continue
    kill -0 "${GW_PID[$g]}" 2>/dev/null || die "${GW_NAME[$g]} died during the run: $(tail -20 "$RUNDIR/${GW_LOG[$g]}")"
    RSS_END[$g]=$(rss_kb "${GW_PID[$g]}" VmRSS)
    HWM_END[$g]=$(rss_kb "${GW_PID[$g]}" VmHWM)
  done
  V_WAB=$("$WAB_BIN" --version 2>/dev/null | sed -n 1p || true)
  if [[ $BEFORE == 1 ]]; then
    V_WAB_BEFORE=$("$WAB_BIN_BEFORE" --version 2>/dev/null | sed -n 1p || true)
  fi
fi

ELAPSED=$(($(date +%s) - T0))

# ---------------------------------------------------------------- report
# medians per (target, conns) and column -> AGG lines:
#   target conns rps p50 p99 p999 non2xx err other-cpu%(max over rounds) server-cpu-us/req
#   steal%(max over rounds) attempts(sum over rounds)
AGG=$(awk -F'\t' '
  function med(key, col,   n, i, j, a, x) {
    n = cnt[key]
    for (i = 1; i <= n; i++) a[i] = val[key, i, col] + 0
    for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { key = $1 SUBSEP $2; if (!(key in cnt)) order[++k] = key
    cnt[key]++; for (c = 4; c <= 11; c++) val[key, cnt[key], c] = $c
    if ($10 + 0 > max[key] + 0) max[key] = $10 + 0
    if ($12 + 0 > stl[key] + 0) stl[key] = $12 + 0
    att[key] += $13 }
  END { for (i = 1; i <= k; i++) { split(order[i], p, SUBSEP)
          printf "%s %s %.0f %.2f %.2f %.2f %.0f %.0f %.0f %.1f %.1f %d\n", p[1], p[2],
            med(order[i], 4), med(order[i], 5), med(order[i], 6), med(order[i], 7), med(order[i], 8), med(order[i], 9),
            max[order[i]], med(order[i], 11), stl[order[i]], att[order[i]] } }' "$RESULTS")

get() { # target conns field(3 rps, 4 p50, 5 p99, 6 p999, 7 non2xx, 8 err, 9 other%, 10 cpu-us/req)
  awk -v t="$1" -v c="$2" -v f="$3" '$1 == t && $2 == c { print $f }' <<<"$AGG"
}

REPORT=$RUNDIR/report.md
{
  echo "## Load benchmark — $(date -u '+%Y-%m-%d %H:%M UTC') (real run)"
  echo
  if [[ ${TASKSET:-0} == 1 ]]; then
    pinning="TASKSET=1: wrk on CPU ${WRK_CPUS:-0}, every server on CPU ${SRV_CPUS:-1} (taskset); nginx and HAProxy configs without their pin lines, wa-breaker runs one unpinned worker on its one allowed CPU"
  else
    pinning="nginx proxy (worker_cpu_affinity auto) and HAProxy (cpu-map auto:1/1-2 0-1) pinned like wa-breaker's workers (pin_workers = auto: worker i on CPU i); wrk and the upstream (nginx :9001) not pinned, sharing the cores"
  fi
  pinning+="; CPUs allowed per worker as seen at start: nginx proxy [$AFF_NGINX], HAProxy threads [$AFF_HAPROXY], upstream [$AFF_UP]"
  if [[ -n ${AFF_WAB:-} ]]; then pinning+=", wa-breaker threads [$AFF_WAB]"; fi
  echo "- machine: $V_NPROC cores, ${V_CPU:-unknown CPU}, kernel $V_KERNEL; $pinning"
  echo "- background load before the run: ${BUSY_START}% CPU in use, loadavg $LOAD_START$( ((BUSY_START > 15)) && echo " (**busy machine: figures skewed**)")"
  echo "- tools: $V_WRK, $V_NGINX, $V_HAPROXY$([[ $PINGORA_ON == 1 ]] && echo ", $V_PINGORA (jemalloc, threads 2, work_stealing false, upstream_keepalive_pool_size 128, threads pinned [${AFF_PINGORA:-}])")$([[ $GATEWAY == 1 ]] && echo ", ${V_WAB:-wa-breaker (no --version)}")$([[ $BEFORE == 1 ]] && echo "; before: ${V_WAB_BEFORE:-wa-breaker (no --version)} ($WAB_BIN_BEFORE)")"
  echo "- wrk -t$THREADS -d$DURATION --latency (warm-up $WARMUP before each run), POST $URL_PATH, ~330-byte body; rounds: $ROUNDS$([[ $ROUNDS -gt 1 ]] && echo " (each column is the median over rounds)")"
  echo
  echo "| target | conns | server CPU µs/req | rps | p50 ms | p99 ms | p99.9 ms | non-2xx | socket errors | other CPU % | steal % | runs |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for c in $CONNS; do
    for t in "${TARGETS[@]}"; do
      line=$(awk -v t="$t" -v c="$c" '$1 == t && $2 == c' <<<"$AGG")
      if [[ -n $line ]]; then
        read -r _ _ rps p50 p99 p999 n2 err bg us st att <<<"$line"
        printf '| %s | %s | %s | %s | %.2f | %.2f | %.2f | %s | %s | %s | %s | %s |\n' "${LABEL[$t]}" "$c" "$us" "$rps" "$p50" "$p99" "$p999" "$n2" "$err" "$bg" "$st" "$att"
      else
        printf '| %s | %s | skipped: %s | | | | | | | | | |\n' "${LABEL[$t]}" "$c" "${SKIP[$t]:-not run}"
      fi
    done
  done
  echo
  echo "\`server CPU µs/req\` is the CPU time (user+system) of the server under test alone (not wrk, not the upstream) divided by the requests it served; it comes first because it moves far less than rps from run to run."
  echo "\`other CPU %\` is the share of all CPU time used, during the measured run, by processes this script did not start (max over rounds); a run above ${OTHER_MAX}% was measured again, up to ${RERUN_MAX} times (\`runs\`: measured runs over all rounds, rejected ones included; ${RERUNS} re-runs in all). \`steal %\`: CPU time the hypervisor gave to other guests (max over rounds). Every round's figures: results.tsv; wrk's output: raw/."
  bgmax=$(awk 'BEGIN { m = 0 } $9 + 0 > m { m = $9 + 0 } END { print m }' <<<"$AGG")
  if ((bgmax > OTHER_MAX)); then
    echo "**Warning: other processes used up to ${bgmax}% of the CPU during some runs; those rows (and ratios built on them) are skewed. Re-run on a quiet machine.**"
  fi
  echo
  echo "Ratios (targets: pass-through rps >= 1.05x nginx and HAProxy with p99 no worse; local answers >= 1.0x nginx local 403; server CPU per request shown first, no target):"
  echo
  # PASS when rps ratio >= min_ratio and p99 <= the denominator's; min_ratio "-": no target.
  ratio() { # num_target den_target min_ratio label
    local t1=$1 t2=$2 min=$3 label=$4 c r1 r2 p1 p2 u1 u2
    for c in $CONNS; do
      r1=$(get "$t1" "$c" 3); r2=$(get "$t2" "$c" 3)
      p1=$(get "$t1" "$c" 5); p2=$(get "$t2" "$c" 5)
      u1=$(get "$t1" "$c" 10); u2=$(get "$t2" "$c" 10)
      if [[ -z $r1 || -z $r2 ]]; then
        echo "- $label @ $c conns: n/a (${SKIP[$t1]:-${SKIP[$t2]:-not run}})"
        continue
      fi
      awk -v l="$label" -v c="$c" -v r1="$r1" -v r2="$r2" -v p1="$p1" -v p2="$p2" -v u1="$u1" -v u2="$u2" -v m="$min" 'BEGIN {
        cpu = (u2 > 0) ? sprintf("%.2fx", u1 / u2) : "n/a"
        q = r2 > 0 ? r1 / r2 : 0
        if (m == "-") { tgt = ""; ok = "" }
        else { tgt = sprintf(", target >= %.2fx", m); ok = (q >= m && p1 <= p2) ? " -> PASS" : " -> FAIL" }
        printf "- %s @ %s conns: CPU/req %s (%.1f vs %.1f µs); rps %.2fx (%d vs %d%s); p99 %.2f ms vs %.2f ms (%.2fx)%s\n",
          l, c, cpu, u1, u2, q, r1, r2, tgt, p1, p2, (p2 > 0 ? p1 / p2 : 0), ok }'
    done
  }
  ratio wab_pass nginx 1.05 "wa-breaker pass-through / nginx proxy"
  ratio wab_pass haproxy 1.05 "wa-breaker pass-through / HAProxy"
  if [[ $PINGORA_ON == 1 ]]; then ratio wab_pass pingora 1.05 "wa-breaker pass-through / pingora"; fi
  ratio wab_local nginx_403 1.00 "wa-breaker local 403 / nginx local 403"
  if [[ ${WAB_HYPER_ROW:-1} != 0 ]]; then
    echo
    echo "Before/after (no target): the relay against the hyper stack alone (fast_path = false):"
    echo
    ratio wab_pass wab_hyper 1.00 "wa-breaker pass-through / same with fast_path = false"
  fi
  if [[ -n $WAB_BIN_BEFORE ]]; then
    echo
    echo "Before/after comparison (no target): current binary ($WAB_BIN) / before binary ($WAB_BIN_BEFORE), same config, same run:"
    echo
    ratio wab_pass wab_before_pass - "current / before, pass-through"
    ratio wab_local wab_before_local - "current / before, local 403"
  fi
  echo
  if [[ $GATEWAY == 1 ]]; then
    echo "wa-breaker memory ($WAB_ACCOUNTS WABAs configured; target: idle RSS <= 20 MB):"
    echo
    echo "- idle after startup: VmRSS $(kb_mb "${RSS_IDLE[main]:-}")"
    echo "- after the whole run: VmRSS $(kb_mb "${RSS_END[main]:-}"), peak VmHWM $(kb_mb "${HWM_END[main]:-}")"
    echo "- its log (log_level warn): $(wc -l <"$RUNDIR/${GW_LOG[main]}") lines, copied to $OUT_DIR/${GW_LOG[main]}"
    if [[ $BEFORE == 1 ]]; then
      echo
      echo "wa-breaker (before) memory ($WAB_BIN_BEFORE, same config, no target):"
      echo
      echo "- idle after startup: VmRSS $(kb_mb "${RSS_IDLE[before]:-}")"
      echo "- after the whole run: VmRSS $(kb_mb "${RSS_END[before]:-}"), peak VmHWM $(kb_mb "${HWM_END[before]:-}")"
      echo "- its log (log_level warn): $(wc -l <"$RUNDIR/${GW_LOG[before]}") lines, copied to $OUT_DIR/${GW_LOG[before]}"
    fi
  else
    echo "wa-breaker: not run (${SKIP[wab_pass]:-gateway skipped})."
  fi
  if [[ -s ${FR_RESULTS:-} ]]; then
    echo
    echo "### Fixed rate (open loop, latency corrected for coordinated omission)"
    echo
    echo "examples/fixed_rate.rs: $FR_CONNS keep-alive connections sharing each rate, warm-up $FR_WARMUP, measured $FR_DURATION, rounds $FR_ROUNDS (medians). Added = the target's percentile minus going direct's at the same rate (negative: within noise). Server CPU per send counts the warm-up's sends too. \`generator late p99\`: how late the generator's timer sent on a free connection (not charged to the server)."
    echo
    echo "| target | rate/s | server CPU µs/send | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms | achieved/s | errors | non-2xx | generator late p99 ms | other CPU % | steal % |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${!LABEL[@]}"; do printf '%s\t%s\n' "$t" "${LABEL[$t]}"; done >"$RUNDIR/labels.tsv"
    # FR_SUMMARY, one line per target and rate: target rate CPU µs/send p99 added-p99 (ms;
    # "" for direct), the table's medians, read by the targets below.
    awk -F'\t' -v sum="$FR_SUMMARY" '
      function med(key, col,   n, i, j, a, x) {
        n = cnt[key]
        for (i = 1; i <= n; i++) a[i] = val[key, i, col] + 0
        for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
      }
      FNR == NR { label[$1] = $2; next }
      { key = $1 SUBSEP $2; if (!(key in cnt)) order[++k] = key
        cnt[key]++; for (c = 4; c <= 16; c++) val[key, cnt[key], c] = $c
        if ($15 + 0 > oth[key] + 0) oth[key] = $15 + 0
        if ($16 + 0 > stl[key] + 0) stl[key] = $16 + 0 }
      END {
        for (i = 1; i <= k; i++) { split(order[i], p, SUBSEP)
          if (p[1] == "direct") { d50[p[2]] = med(order[i], 4); d99[p[2]] = med(order[i], 6); d999[p[2]] = med(order[i], 7); dd[p[2]] = 1 } }
        for (i = 1; i <= k; i++) { split(order[i], p, SUBSEP); key = order[i]
          if (p[1] == "direct" || !(p[2] in dd)) { a50 = "—"; a99 = "—"; a999 = "—" }
          else { a50 = sprintf("%+.2f", med(key, 4) - d50[p[2]]); a99 = sprintf("%+.2f", med(key, 6) - d99[p[2]]); a999 = sprintf("%+.2f", med(key, 7) - d999[p[2]]) }
          printf "| %s | %s | %.1f | %.2f | %.2f | %.2f | %s | %s | %s | %d | %d | %d | %.2f | %d | %.1f |\n",
            label[p[1]], p[2], med(key, 14), med(key, 4), med(key, 6), med(key, 7), a50, a99, a999,
            med(key, 9), med(key, 10), med(key, 11), med(key, 13), oth[key], stl[key]
          printf "%s\t%s\t%.1f\t%.3f\t%s\n", p[1], p[2], med(key, 14), med(key, 6),
            (a99 == "—") ? "" : sprintf("%.3f", med(key, 6) - d99[p[2]]) > sum } }
    ' "$RUNDIR/labels.tsv" "$FR_RESULTS"
  fi
  echo
  echo "The closed-loop and fixed-rate tables took ${ELAPSED} s (the WAN table and the profile follow)."
} >"$REPORT"

# The TLS + WAN table: its own script (a network namespace of its own), after the rest,
# with every server above still up but idle.
if [[ ${WAN:-1} != 0 && $GATEWAY == 1 ]]; then
  if [[ $(id -u) != 0 ]]; then
    printf '\n### TLS upstream over an emulated WAN\n\nskipped: needs root (ip netns); run benches/load/wan.sh as root\n' >>"$REPORT"
  elif rm -f "$OUT_DIR/wan-summary.tsv" \
    && WAB_BIN=$WAB_BIN FR_BIN=$FR_BIN OUT_DIR=$OUT_DIR bash "$HERE/wan.sh" >"$RUNDIR/wan.out" 2>"$RUNDIR/wan.err"; then
    { echo; sed 's/^## /### /' "$OUT_DIR/wan.md"; } >>"$REPORT"
  else
    printf '\n### TLS upstream over an emulated WAN\n\nfailed: %s\n' "$(tail -3 "$RUNDIR/wan.err" | tr '\n' ' ')" >>"$REPORT"
  fi
fi

# Where a send's CPU goes (its own ports; every server above still up but idle).
if [[ ${PROFILE:-1} != 0 && $GATEWAY == 1 ]]; then
  if WAB_BIN=$WAB_BIN OUT_DIR=$OUT_DIR bash "$HERE/profile.sh" >"$RUNDIR/profile.out" 2>"$RUNDIR/profile.err"; then
    { echo; sed 's/^## /### /' "$OUT_DIR/profile.md"; } >>"$REPORT"
  else
    printf '\n### Per-request profile\n\nfailed: %s\n' "$(tail -3 "$RUNDIR/profile.err" | tr '\n' ' ')" >>"$REPORT"
  fi
fi

# ---------------------------------------------------------------- targets
# Every target of BENCHMARKS.md's table, judged on this run's medians: targets.tsv (key,
# target, figure, met: yes / no / n/a), which runs.sh reads to say in how many whole runs
# each target held. A ratio is judged as printed (two decimals), so the table never shows
# "0.80 ×" beside "no".
TARGETS_TSV=$RUNDIR/targets.tsv
: >"$TARGETS_TSV"
target() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$TARGETS_TSV"; }
# -> "figure<TAB>met": CPU per request a against b, met when a / b <= bound.
cpu_vs() { # a_us b_us bound
  awk -v a="$1" -v b="$2" -v m="$3" 'BEGIN { if (a == "" || b == "" || b <= 0) { print "n/a\tn/a"; exit }
    r = sprintf("%.2f", a / b); printf "%s × (%.1f vs %.1f µs)\t%s\n", r, a, b, (r + 0 <= m) ? "yes" : "no" }'
}
# -> "figure<TAB>met": rps of target t against each peer, met when every ratio >= bound
# and t's p99 is no worse than that peer's (the load table's PASS rule).
rps_vs() { # t conns bound peer...
  local t=$1 c=$2 m=$3 p args=()
  shift 3
  for p in "$@"; do args+=("${LABEL[$p]%% *}" "$(get "$p" "$c" 3)" "$(get "$p" "$c" 5)"); done
  awk -v r="$(get "$t" "$c" 3)" -v q="$(get "$t" "$c" 5)" -v m="$m" 'BEGIN {
    ok = (r != ""); fig = ""; p99 = ""
    for (i = 1; i < ARGC; i += 3) { n = ARGV[i]; pr = ARGV[i + 1]; pq = ARGV[i + 2]
      if (r == "" || pr == "" || pr <= 0) { print "n/a\tn/a"; exit }
      x = sprintf("%.2f", r / pr); if (x + 0 < m || q + 0 > pq + 0) ok = 0
      fig = fig (fig == "" ? "" : ", ") x " × " n; p99 = p99 (p99 == "" ? "" : " / ") sprintf("%.2f", pq) }
    printf "%s (p99 %.2f vs %s ms)\t%s\n", fig, q, p99, ok ? "yes" : "no"; exit }' "${args[@]}"
}
if [[ $GATEWAY == 1 ]]; then
  for c in $CONNS; do
    IFS=$'\t' read -r f m <<<"$(cpu_vs "$(get wab_pass "$c" 10)" "$(get nginx "$c" 10)" 0.8)"
    target "pass_cpu_nginx_$c" "pass-through CPU per request ≤ 0.8 × nginx's, $c conns" "$f" "$m"
    IFS=$'\t' read -r f m <<<"$(cpu_vs "$(get wab_pass "$c" 10)" "$(get haproxy "$c" 10)" 0.8)"
    target "pass_cpu_haproxy_$c" "pass-through CPU per request ≤ 0.8 × HAProxy's, $c conns" "$f" "$m"
    IFS=$'\t' read -r f m <<<"$(cpu_vs "$(get wab_pass "$c" 10)" "$(get pingora "$c" 10)" 1.0)"
    target "pass_cpu_pingora_$c" "pass-through CPU per request ≤ pingora's, $c conns" "$f" "$m"
    IFS=$'\t' read -r f m <<<"$(rps_vs wab_pass "$c" 1.05 nginx haproxy)"
    target "pass_rps_$c" "pass-through rps ≥ 1.05 × nginx and HAProxy, p99 no worse, $c conns" "$f" "$m"
    IFS=$'\t' read -r f m <<<"$(cpu_vs "$(get wab_local "$c" 10)" "$(get nginx_403 "$c" 10)" 1.0)"
    target "local_cpu_$c" "local answer CPU ≤ 1.0 × nginx's \`return 403\`, $c conns" "$f" "$m"
    IFS=$'\t' read -r f m <<<"$(rps_vs wab_local "$c" 1.0 nginx_403)"
    target "local_rps_$c" "local answer rps ≥ 1.0 × nginx's \`return 403\`, p99 no worse, $c conns" "$f" "$m"
  done
  # Fixed 5 000/s: added p99 over direct <= 0.5 ms and <= every peer's.
  fr=$(awk -F'\t' '$2 == 5000 { a[$1] = $5 } END {
      if (a["wab_pass"] == "") { print "n/a\tn/a"; exit }
      w = sprintf("%.2f", a["wab_pass"]); best = ""; bn = ""
      split("nginx haproxy pingora", ps, " ")
      for (i = 1; i <= 3; i++) if (ps[i] in a && a[ps[i]] != "" && (best == "" || a[ps[i]] + 0 < best + 0)) { best = sprintf("%.2f", a[ps[i]]); bn = ps[i] }
      if (best == "") { print "n/a\tn/a"; exit }
      printf "%+.2f ms (best peer: %s %+.2f)\t%s\n", w, bn, best, (w + 0 <= 0.5 && w + 0 <= best + 0) ? "yes" : "no" }' "${FR_SUMMARY:-/dev/null}")
  IFS=$'\t' read -r f m <<<"$fr"
  target fixed_5000_p99 "fixed 5 000 sends/s: added p99 ≤ 0.5 ms and ≤ the best peer's" "$f" "$m"
  # TLS over the emulated WAN, both engines against nginx.
  WAN_SUM=$OUT_DIR/wan-summary.tsv
  [[ ${WAN:-1} != 0 && -s $WAN_SUM ]] || WAN_SUM=/dev/null
  wan() { awk -F'\t' -v r="$1" -v f="$2" '$1 == r { print $f }' "$WAN_SUM"; }
  for e in relay hyper; do
    name=$([[ $e == relay ]] && echo "relay" || echo "hyper engine")
    a=$(wan "$e" 5)
    if [[ -n $a ]]; then
      f=$(awk -v a="$a" 'BEGIN { printf "%+.2f ms", a }')
      m=$(awk -v a="$a" 'BEGIN { print (sprintf("%.2f", a) + 0 <= 1.0) ? "yes" : "no" }')
    else f=n/a m=n/a; fi
    target "wan_p99_$e" "TLS, 50 ms RTT, 2 000/s: added p99 ≤ 1 ms ($name)" "$f" "$m"
    a=$(wan "$e" 7) b=$(wan nginx 7)
    if [[ -n $a && -n $b ]]; then
      f="$a vs nginx's $b ($(wan "$e" 8) vs $(wan nginx 8) handshakes)"
      m=$( ((a * 10 <= b)) && echo yes || echo no)
    else f=n/a m=n/a; fi
    target "wan_conns_$e" "… upstream connections ≤ 1/10 of nginx's ($name)" "$f" "$m"
    IFS=$'\t' read -r f m <<<"$(cpu_vs "$(wan "$e" 6)" "$(wan nginx 6)" 0.8)"
    target "wan_cpu_$e" "… CPU per send ≤ 0.8 × nginx's ($name)" "$f" "$m"
  done
  if [[ -n ${RSS_IDLE[main]:-} ]]; then
    f=$(kb_mb "${RSS_IDLE[main]}")
    m=$( ((RSS_IDLE[main] <= 20480)) && echo yes || echo no)
  else f=n/a m=n/a; fi
  target idle_rss "idle RSS ≤ 20 MB with $WAB_ACCOUNTS WABAs" "$f" "$m"
  # The conditions the figures were taken in, for runs.sh's table.
  cond=$(awk -F'\t' 'FNR == NR { if ($10 + 0 > o) o = $10 + 0; if ($12 + 0 > s) s = $12 + 0; next }
      { if ($15 + 0 > o) o = $15 + 0; if ($16 + 0 > s) s = $16 + 0 }
      END { printf "other processes ≤ %d %% of the CPU, steal ≤ %.1f %%", o, s }' "$RESULTS" "${FR_RESULTS:-/dev/null}")
  target _conditions "conditions (load and fixed-rate tables)" "$cond, $RERUNS re-runs" ""
  {
    echo
    echo "### Targets"
    echo
    echo "Every target of BENCHMARKS.md, judged on this run's medians (ratios as printed, two decimals); \`bash benches/load/runs.sh\` says in how many whole runs each held."
    echo
    echo "| target | this run | met? |"
    echo "|---|---|---|"
    awk -F'\t' '{ printf "| %s | %s | %s |\n", $2, $3, ($4 == "yes") ? "**yes**" : $4 }' "$TARGETS_TSV"
  } >>"$REPORT"
fi

cp "$REPORT" "$OUT_DIR/latest.md"
if [[ $GATEWAY == 1 ]]; then cp "$RUNDIR/${GW_LOG[main]}" "$OUT_DIR/${GW_LOG[main]}"; fi
if [[ $BEFORE == 1 ]]; then cp "$RUNDIR/${GW_LOG[before]}" "$OUT_DIR/${GW_LOG[before]}"; fi
cp "$RESULTS" "$OUT_DIR/results.tsv"
if [[ -s ${FR_RESULTS:-} ]]; then cp "$FR_RESULTS" "$OUT_DIR/fixed-rate.tsv"; fi
if [[ -s ${TARGETS_TSV:-} ]]; then cp "$TARGETS_TSV" "$OUT_DIR/targets.tsv"; fi
echo
cat "$REPORT"
echo
log "written $OUT_DIR/latest.md (raw wrk output in $OUT_DIR/raw/)"
