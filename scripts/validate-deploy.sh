#!/usr/bin/env bash
# Validate the deployment artefacts without a cluster, a Prometheus, a Grafana
# or a Docker engine:
#
#   * every Kubernetes manifest under deploy/kubernetes against the Kubernetes
#     OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), for
#     each version in WA_BREAKER_K8S_VERSIONS; the kustomizations (resources
#     exist, examples stay out) and, when kubectl/kustomize is installed, their
#     rendered output too; the wa-breaker config.toml in each ConfigMap and
#     the contract the Deployments must keep (probes, secrets from Secrets,
#     security context, ...);
#   * deploy/prometheus: `promtool check rules`, `promtool test rules` and
#     `promtool check config` (promtool from PATH, the cache, or extracted from
#     Debian's prometheus package); a Python structure check if promtool can't
#     be had (WA_BREAKER_REQUIRE_PROMTOOL=1 turns that into a failure);
#   * deploy/grafana: JSON, ${datasource} variable, and every PromQL expr uses
#     only wa-breaker metric names (and parses, via promtool);
#   * Dockerfile (parsed with the official BuildKit parser) and .dockerignore;
#   * deploy/systemd/wa-breaker.service: `systemd-analyze verify` and its offline
#     `security` exposure score when systemd-analyze is installed (a note when it
#     is not), and always the hardening the README promises (a Python check).
#
# Usage: scripts/validate-deploy.sh          (from anywhere; idempotent)
# Network: only PyPI (first run, into a cached venv) and Debian's apt
# repository (first run, when promtool is missing). Cache:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/wa-breaker/{venv,bin/promtool}
# Environment:
#   WA_BREAKER_K8S_VERSIONS       Kubernetes versions to validate against
#                                 (default "1.30.0 1.37.0"; 1.30 is the
#                                 minimum: preStop sleep, native sidecars)
#   WA_BREAKER_REQUIRE_PROMTOOL=1 fail instead of falling back without promtool
#   PROMTOOL=/path/to/promtool    use this promtool (PROMTOOL=none: don't, and
#                                 use the fallback check)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/wa-breaker"
VENV="$CACHE_DIR/venv"
K8S_VERSIONS=${WA_BREAKER_K8S_VERSIONS:-"1.30.0 1.37.0"}
REQUIRE_PROMTOOL=${WA_BREAKER_REQUIRE_PROMTOOL:-0}
# PyYAML and jsonschema come with kubernetes-validate.
PY_REQS=(
  "kubernetes-validate==1.37.0"
  "dockerfile==3.4.0"
  "tomli>=2; python_version < '3.11'"
)

T0=$(date +%s%N)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/validate-deploy.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

FAILED=()
NOTES=()

log() { printf '%s\n' "$*"; }
elapsed() { # ms since $1 (ns) as seconds with one decimal
  local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
  printf '%d.%ds' $((ms / 1000)) $(((ms % 1000) / 100))
}
die() { log "validate-deploy: ERROR: $*" >&2; exit 2; }

# step NAME FUNCTION: run a check, time it, record failure, keep going.
step() {
  local name=$1 fn=$2 t
  t=$(date +%s%N)
  log "==> $name"
  if "$fn"; then
    log "    ok ($(elapsed "$t"))"
  else
    log "    FAILED: $name ($(elapsed "$t"))"
    FAILED+=("$name")
  fi
}

# ------------------------------------------------------------------ tools ---
setup_venv() {
  local want have=""
  want=$(printf '%s\n' "${PY_REQS[@]}")
  [[ -f "$VENV/.requirements" ]] && have=$(cat "$VENV/.requirements")
  if [[ -x "$VENV/bin/python" && "$have" == "$want" ]]; then
    return 0
  fi
  command -v python3 >/dev/null || die "python3 not found (needed for the validators)"
  log "==> setting up Python venv $VENV (pip: ${PY_REQS[*]})"
  mkdir -p "$CACHE_DIR"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQS[@]}" \
    || die "pip install ${PY_REQS[*]} failed"
  printf '%s\n' "$want" > "$VENV/.requirements"
}

install_promtool() {
  # Debian's "prometheus" package ships promtool; download the .deb only
  # (nothing is installed, no service starts) and extract that one binary.
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || return 1
  local dl="$TMP/prometheus-deb" user
  user=$(id -un)
  mkdir -p "$dl"
  log "    promtool not found: apt-get download prometheus (Debian package), extracting usr/bin/promtool to $CACHE_DIR/bin/"
  if ! (cd "$dl" && apt-get download -qq -o APT::Sandbox::User="$user" prometheus >/dev/null 2>&1); then
    if [[ $(id -u) -eq 0 ]]; then
      log "    apt-get download failed; running apt-get update and retrying"
      apt-get update -qq >/dev/null 2>&1 || return 1
      (cd "$dl" && apt-get download -qq -o APT::Sandbox::User="$user" prometheus >/dev/null 2>&1) || return 1
    else
      return 1
    fi
  fi
  dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb | tar -x -C "$dl" ./usr/bin/promtool || return 1
  install -D -m 0755 "$dl/usr/bin/promtool" "$CACHE_DIR/bin/promtool"
}

find_promtool() {
  if [[ "${PROMTOOL:-}" == none ]]; then
    PROMTOOL=""
  elif [[ -n "${PROMTOOL:-}" ]]; then
    [[ -x "$PROMTOOL" ]] || die "PROMTOOL=$PROMTOOL is not executable"
  elif command -v promtool >/dev/null; then
    PROMTOOL=$(command -v promtool)
  elif [[ -x "$CACHE_DIR/bin/promtool" ]]; then
    PROMTOOL="$CACHE_DIR/bin/promtool"
  elif install_promtool; then
    PROMTOOL="$CACHE_DIR/bin/promtool"
  else
    PROMTOOL=""
  fi
  if [[ -n "$PROMTOOL" ]]; then
    PROMTOOL_VERSION=$("$PROMTOOL" --version 2>&1 | head -n1 | awk '{print $3}')
    log "    promtool: $PROMTOOL ($PROMTOOL_VERSION)"
  else
    PROMTOOL_VERSION="none"
    if [[ "$REQUIRE_PROMTOOL" == 1 ]]; then
      die "promtool is required (WA_BREAKER_REQUIRE_PROMTOOL=1) but could not be found or installed"
    fi
    log "    WARNING: promtool unavailable: falling back to a Python structure check of the rules (no PromQL parsing, no rule unit tests)"
    NOTES+=("promtool unavailable: Python fallback for alert rules")
  fi
}

find_kustomize() {
  KUSTOMIZE=()
  if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    KUSTOMIZE=(kubectl kustomize)
  elif command -v kustomize >/dev/null; then
    KUSTOMIZE=(kustomize build)
  fi
}

# ------------------------------------------------------- python helpers ---
write_helpers() {
cat > "$TMP/checks.py" <<'PYEOF'
"""Checks for scripts/validate-deploy.sh (written out at run time)."""
import json
import os
import re
import sys

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

# --- the contract ---------------------------------------------------------
HIST = "wa_breaker_upstream_duration_seconds"
# Every metric the gateway exports, read from src/metrics.rs (one list, the source's).
_src = open("src/metrics.rs").read()
METRICS = set(re.findall(r'"(wa_breaker_[a-z0-9_]+)"', _src)) - {HIST}
METRICS |= {HIST + "_bucket", HIST + "_sum", HIST + "_count"}
CONFIG_KEYS = {
    "listen", "listen_shared", "admin_listen", "upstream", "state_dir", "admin_token", "redis_url",
    "redis_prefix", "mode", "trip_codes", "graph_version", "log_format", "log_level",
    "connect_timeout", "request_timeout", "drain_timeout", "upstream_concurrency",
    "client_header_timeout", "client_body_timeout", "client_idle_timeout", "max_connections",
    "workers", "classify_body_limit", "history_limit", "redis_closed_ttl", "redis_retry_max",
    "max_clock_skew", "max_circuits", "redis_ca_file", "redis_client_cert", "redis_client_key",
    "webhook", "health", "discovery", "accounts", "notify",
}
TABLE_KEYS = {
    "webhook": {"path", "app_secret", "verify_token", "forward_url", "forward_timeout",
                "max_body", "violation_opens"},
    "health": {"access_token", "interval", "jitter", "timeout", "max_backoff",
               "max_concurrent", "lease", "hourly_budget"},
    "discovery": {"health_reads", "use_caller_token", "max_concurrent", "retry_after",
                  "max_learned"},
}
ACCOUNT_KEYS = {"waba_id", "phone_number_ids"}
NOTIFY_KEYS = {"kind", "url", "secret", "name", "transitions", "waba_ids", "timeout",
               "retry_max", "retry_for", "queue"}
SECRET_KEYS = {("admin_token",), ("redis_url",), ("webhook", "app_secret"),
               ("webhook", "verify_token"), ("health", "access_token")}
SECRET_ENV = {"WA_BREAKER_" + "__".join(k).upper() for k in SECRET_KEYS}

PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "bool", "offset", "atan2",
                   "inf", "nan", "start", "end"}

errors = []


def err(where, msg):
    errors.append(f"{where}: {msg}")


def finish(ok_msg):
    for e in errors:
        print(f"    ERROR {e}")
    if errors:
        sys.exit(1)
    print(f"    {ok_msg}")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def metric_names(expr):
    """Metric names a PromQL expression selects (crude but conservative)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", "", s)          # Grafana variables
    s = re.sub(r"\{[^}]*\}", "", s)                  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)                 # ranges, subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", s):
        if s[m.end():].lstrip().startswith("("):
            continue                                  # function / aggregation
        if m.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group(0))
    return names


# --- kubernetes -------------------------------------------------------------
def check_config_toml(where, text, k8s):
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        err(where, f"config.toml does not parse: {e}")
        return
    for k in cfg:
        if k not in CONFIG_KEYS:
            err(where, f"unknown config key {k!r}")
    for table, keys in TABLE_KEYS.items():
        for k in cfg.get(table, {}) or {}:
            if k not in keys:
                err(where, f"unknown config key {table}.{k}")
    for i, acct in enumerate(cfg.get("accounts", []) or []):
        for k in acct:
            if k not in ACCOUNT_KEYS:
                err(where, f"unknown key accounts[{i}].{k}")
    for i, sink in enumerate(cfg.get("notify", []) or []):
        for k in sink:
            if k not in NOTIFY_KEYS:
                err(where, f"unknown key notify[{i}].{k}")
        for k in ("url", "secret"):
            if k in sink:
                err(where, f"secret notify[{i}].{k} must come from a Secret (WA_BREAKER_NOTIFY), not the config file")
    for path in SECRET_KEYS:
        node = cfg
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if node is not None:
            err(where, f"secret {'.'.join(path)} must come from a Secret (env var), not the config file")
    if cfg.get("mode", "enforce") not in ("enforce", "observe"):
        err(where, "mode must be enforce or observe")
    if k8s:
        if not str(cfg.get("admin_listen", "")).startswith("0.0.0.0:9090"):
            err(where, "admin_listen must be 0.0.0.0:9090 in Kubernetes (probes, metrics)")
        if cfg.get("state_dir") != "/var/lib/wa-breaker":
            err(where, "state_dir must be /var/lib/wa-breaker (the mounted volume)")


def container_checks(where, pod, c):
    psc = pod.get("securityContext", {}) or {}
    csc = c.get("securityContext", {}) or {}
    w = f"{where} container {c.get('name')}"
    if not (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        err(w, "runAsNonRoot must be true")
    if csc.get("readOnlyRootFilesystem") is not True:
        err(w, "readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        err(w, "allowPrivilegeEscalation must be false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        err(w, "capabilities must drop ALL")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        err(w, "seccompProfile must be RuntimeDefault")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    if ports.get("admin") != 9090:
        err(w, "needs a port named admin = 9090")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or get.get("port") not in ("admin", 9090):
            err(w, f"{probe} must be httpGet {path} on port admin")
    res = c.get("resources") or {}
    if not res.get("requests") or not res.get("limits"):
        err(w, "needs resources.requests and resources.limits")
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts", [])}
    if "/etc/wa-breaker" not in mounts:
        err(w, "config must be mounted at /etc/wa-breaker")
    if "/var/lib/wa-breaker" not in mounts:
        err(w, "state_dir /var/lib/wa-breaker needs a writable volume")
    for e in c.get("env", []):
        name = e.get("name", "")
        if name.startswith("WA_BREAKER_"):
            parts = name[len("WA_BREAKER_"):].lower().split("__")
            top = parts[0]
            if top not in CONFIG_KEYS or (len(parts) == 2 and parts[1] not in TABLE_KEYS.get(top, ())) or len(parts) > 2:
                err(w, f"env {name} maps to no config key")
        if name in SECRET_ENV and "secretKeyRef" not in (e.get("valueFrom") or {}):
            err(w, f"env {name} is a secret: use valueFrom.secretKeyRef")
    args = c.get("args") or c.get("command") or []
    if "--config" in args and "/etc/wa-breaker/config.toml" not in args:
        err(w, "--config should point at /etc/wa-breaker/config.toml")


def cmd_kube(kroot):
    manifests, kustomizations = [], []
    for d, _, files in os.walk(kroot):
        for f in sorted(files):
            p = os.path.join(d, f)
            if f in ("kustomization.yaml", "kustomization.yml"):
                kustomizations.append(p)
            elif f.endswith((".yaml", ".yml")):
                manifests.append(p)
            else:
                err(p, "unexpected file under deploy/kubernetes")
    referenced = set()
    for k in kustomizations:
        try:
            docs = load_docs(k)
        except yaml.YAMLError as e:
            err(k, f"invalid YAML: {e}")
            continue
        if len(docs) != 1 or docs[0].get("kind") != "Kustomization":
            err(k, "must hold exactly one kind: Kustomization")
            continue
        base = os.path.dirname(k)
        if not docs[0].get("resources"):
            err(k, "no resources")
        for r in docs[0].get("resources", []):
            p = os.path.normpath(os.path.join(base, r))
            if os.path.isdir(p):
                if not any(os.path.isfile(os.path.join(p, n)) for n in ("kustomization.yaml", "kustomization.yml")):
                    err(k, f"resource {r}: directory without kustomization.yaml")
            elif not os.path.isfile(p):
                err(k, f"resource {r} does not exist")
            if r.endswith((".example.yaml", ".example.yml")):
                err(k, f"resource {r}: examples must not be applied")
            referenced.add(p)
    for m in manifests:
        if m not in referenced and ".example." not in os.path.basename(m):
            err(m, "not listed in any kustomization.yaml (name it *.example.yaml if it is an example)")

    kinds = {}
    for m in manifests:
        try:
            docs = load_docs(m)
        except yaml.YAMLError as e:
            err(m, f"invalid YAML: {e}")
            continue
        for doc in docs:
            kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
            kinds.setdefault(kind, 0)
            kinds[kind] += 1
            where = f"{m} {kind}/{name}"
            if kind == "ConfigMap" and "config.toml" in (doc.get("data") or {}):
                check_config_toml(where, doc["data"]["config.toml"], k8s=True)
            elif kind == "Secret":
                values = {**(doc.get("stringData") or {}), **(doc.get("data") or {})}
                if ".example." not in os.path.basename(m):
                    err(where, "real Secrets do not belong in the repository")
                for key, v in values.items():
                    if "change-me" not in str(v):
                        err(where, f"example value for {key} must be a 'change-me' placeholder")
            elif kind == "ServiceAccount":
                if doc.get("automountServiceAccountToken") is not False:
                    err(where, "automountServiceAccountToken must be false")
            elif kind == "Deployment":
                pod = doc["spec"]["template"]["spec"]
                if pod.get("automountServiceAccountToken") is not False:
                    err(where, "pod automountServiceAccountToken must be false")
                if pod.get("enableServiceLinks") is not False:
                    err(where, "enableServiceLinks must be false (Service env vars collide with WA_BREAKER_*)")
                if pod.get("terminationGracePeriodSeconds", 30) < 30:
                    err(where, "terminationGracePeriodSeconds must be >= 30 (drain_timeout 15s)")
                gateways = [c for c in pod.get("containers", []) + pod.get("initContainers", [])
                            if c.get("name") == "wa-breaker"]
                if not gateways:
                    err(where, "no container named wa-breaker")
                for c in gateways:
                    container_checks(where, pod, c)
    finish(f"{len(manifests)} manifests ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
           f"{len(kustomizations)} kustomizations")


def cmd_kustomize_roots(kroot):
    """Kustomization dirs that no other kustomization includes."""
    dirs, included = [], set()
    for d, _, files in os.walk(kroot):
        if "kustomization.yaml" in files:
            dirs.append(os.path.normpath(d))
            for r in load_docs(os.path.join(d, "kustomization.yaml"))[0].get("resources", []):
                included.add(os.path.normpath(os.path.join(d, r)))
    for d in sorted(dirs):
        if d not in included:
            print(d)


def cmd_docker_config(path):
    with open(path) as f:
        check_config_toml(path, f.read(), k8s=True)
    finish("container default config ok")


# --- prometheus -------------------------------------------------------------
def cmd_alert_metrics(path):
    doc = yaml.safe_load(open(path))
    n = 0
    for g in doc.get("groups", []):
        for r in g.get("rules", []):
            n += 1
            name = r.get("alert") or r.get("record")
            for m in metric_names(str(r.get("expr", ""))) - METRICS - {"up"}:
                err(f"{path} {name}", f"unknown metric {m!r}")
    finish(f"{n} rules use only wa-breaker metrics")


def cmd_alert_fallback(path):
    """Structure check used when promtool is unavailable."""
    doc = yaml.safe_load(open(path))
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        err(path, "top level must be a mapping with a groups: list")
        return finish("")
    names = set()
    for g in doc["groups"]:
        if not g.get("name") or g["name"] in names:
            err(path, f"group needs a unique name: {g.get('name')!r}")
        names.add(g.get("name"))
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            w = f"{path} {name}"
            if not name or ("alert" in r) == ("record" in r):
                err(w, "a rule has exactly one of alert/record")
            extra = set(r) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if extra:
                err(w, f"unknown rule fields {sorted(extra)}")
            expr = str(r.get("expr", ""))
            if not expr.strip():
                err(w, "empty expr")
            depth = 0
            for ch in re.sub(r'"(?:[^"\\]|\\.)*"', "", expr):
                depth += {"(": 1, ")": -1, "{": 1, "}": -1, "[": 1, "]": -1}.get(ch, 0)
                if depth < 0:
                    break
            if depth != 0:
                err(w, "unbalanced brackets in expr")
            if "for" in r and not re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", str(r["for"])):
                err(w, f"bad duration for: {r['for']!r}")
            if "alert" in r:
                for a in ("summary", "description"):
                    if not (r.get("annotations") or {}).get(a):
                        err(w, f"missing annotation {a}")
                if not (r.get("labels") or {}).get("severity"):
                    err(w, "missing severity label")
    finish("rules structure ok (fallback, no PromQL parsing)")


def cmd_prom_config(src, dst):
    """Copy of prometheus.example.yml that Debian's promtool can check:
    its build has no Kubernetes service discovery, so kubernetes_sd_configs
    becomes a static target; everything else (relabelling, rule files) stays."""
    cfg = yaml.safe_load(open(src))
    for sc in cfg.get("scrape_configs", []):
        if sc.pop("kubernetes_sd_configs", None) is not None:
            sc["static_configs"] = [{"targets": ["127.0.0.1:9090"]}]
    base = os.path.dirname(os.path.abspath(src))
    cfg["rule_files"] = [os.path.join(base, f) for f in cfg.get("rule_files", [])]
    with open(dst, "w") as f:
        yaml.safe_dump(cfg, f)


# --- grafana ----------------------------------------------------------------
def cmd_grafana(path, rules_out):
    try:
        dash = json.load(open(path))
    except (OSError, json.JSONDecodeError) as e:
        err(path, f"invalid JSON: {e}")
        return finish("")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        err(path, "schemaVersion must be an integer >= 36")
    for k in ("title", "uid", "panels", "templating"):
        if k not in dash:
            err(path, f"missing {k}")
    tvars = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = tvars.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        err(path, "needs a templating variable 'datasource' of type datasource, query prometheus")
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))           # panels inside collapsed rows
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        err(path, "panel ids must be unique")
    exprs = []
    for p in panels:
        w = f"{path} panel {p.get('id')} {p.get('title')!r}"
        if "gridPos" not in p:
            err(w, "missing gridPos")
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            err(w, "datasource must be ${datasource}")
        if not p.get("targets"):
            err(w, "no targets")
        for t in p.get("targets", []):
            if (t.get("datasource") or {}).get("uid") not in (None, "${datasource}"):
                err(w, "target datasource must be ${datasource}")
            expr = t.get("expr", "")
            if not expr.strip():
                err(w, f"target {t.get('refId')} has no expr")
                continue
            for m in sorted(metric_names(expr) - METRICS):
                err(w, f"unknown metric {m!r} in {expr!r}")
            exprs.append((p.get("id"), t.get("refId"), expr))
    for v in tvars.values():
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else str(q or "")
        m = re.match(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)", q)
        if m and m.group(1) not in METRICS:
            err(f"{path} variable {v.get('name')}", f"unknown metric {m.group(1)!r}")
    # Recording rules so promtool parses every expr (Grafana macros replaced).
    rules = []
    for pid, ref, expr in exprs:
        e = (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
                 .replace("$__range", "1h"))
        e = re.sub(r"\$\{?\w+(:\w+)?\}?", ".*", e)
        rules.append({"record": f"grafana:panel_{pid}_{ref}", "expr": e})
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "grafana-exprs", "rules": rules}]}, f)
    finish(f"{len(panels)} panels, {len(exprs)} queries use only wa-breaker metrics")


# --- docker -------------------------------------------------------------------
def cmd_docker(dockerfile_path, dockerignore_path):
    import dockerfile
    if not os.path.isfile(dockerignore_path):
        err(dockerignore_path, "missing")
        ignore = []
    else:
        ignore = [l.strip() for l in open(dockerignore_path)
                  if l.strip() and not l.startswith("#") and not l.startswith("!")]
        for must in ("target", ".git"):
            if not any(p.strip("/").lstrip("*/") == must for p in ignore):
                err(dockerignore_path, f"should exclude {must}/")
    try:
        cmds = dockerfile.parse_file(dockerfile_path)
    except dockerfile.GoParseError as e:
        err(dockerfile_path, f"does not parse: {e}")
        return finish("")
    args = {}
    for c in cmds:
        if c.cmd == "ARG" and "=" in c.value[0]:
            k, v = c.value[0].split("=", 1)
            args.setdefault(k, v)
    stages, cur = [], None
    for c in cmds:
        if c.cmd == "FROM":
            cur = {"from": c.value[0], "cmds": []}
            stages.append(cur)
        elif cur is not None:
            cur["cmds"].append(c)
    if len(stages) < 2:
        err(dockerfile_path, "expected a multi-stage build (builder + runtime)")
        return finish("")
    expand = lambda s: re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), s)
    builder, final = stages[0], stages[-1]
    if "rust:" not in expand(builder["from"]):
        err(dockerfile_path, f"builder should be a rust image, got {expand(builder['from'])}")
    if not any(c.cmd == "RUN" and "cargo build --release --locked" in c.value[0] for c in builder["cmds"]):
        err(dockerfile_path, "builder must run cargo build --release --locked")
    image = expand(final["from"])
    if "distroless" not in image:
        err(dockerfile_path, f"runtime image should be distroless (no shell), got {image}")
    if any(c.cmd == "RUN" for c in final["cmds"]):
        err(dockerfile_path, "runtime stage must not RUN anything (no shell at runtime)")
    users = [c.value[0] for c in final["cmds"] if c.cmd == "USER"]
    if not users:
        err(dockerfile_path, "runtime stage needs a USER line")
    elif users[-1].split(":")[0] in ("root", "0", ""):
        err(dockerfile_path, f"runtime USER must be non-root, got {users[-1]}")
    elif not users[-1].split(":")[0].isdigit():
        err(dockerfile_path, "use a numeric USER so Kubernetes runAsNonRoot can verify it")
    ep = [c for c in final["cmds"] if c.cmd == "ENTRYPOINT"]
    if not ep or not ep[-1].json or list(ep[-1].value) != ["/wa-breaker"]:
        err(dockerfile_path, 'ENTRYPOINT must be ["/wa-breaker"] (exec form)')
    cmd = [c for c in final["cmds"] if c.cmd == "CMD"]
    if not cmd or not cmd[-1].json or list(cmd[-1].value) != ["--config", "/etc/wa-breaker/config.toml"]:
        err(dockerfile_path, 'CMD must be ["--config","/etc/wa-breaker/config.toml"]')
    exposed = {p.split("/")[0] for c in final["cmds"] if c.cmd == "EXPOSE" for p in c.value}
    if not {"8080", "9090"} <= exposed:
        err(dockerfile_path, "EXPOSE 8080 9090")
    # COPY from the build context: sources exist and are not .dockerignored.
    for c in cmds:
        if c.cmd in ("COPY", "ADD") and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                if src == ".":
                    continue
                if not os.path.exists(src):
                    err(dockerfile_path, f"line {c.start_line}: COPY source {src} does not exist")
                for pat in ignore:
                    p = pat.rstrip("/")
                    if src == p or src.startswith(p + "/"):
                        err(dockerfile_path, f"line {c.start_line}: COPY source {src} is excluded by .dockerignore ({pat})")
    finish(f"{len(stages)} stages, runtime {image} as USER {users[-1] if users else '?'}")


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
PYEOF
}

# ------------------------------------------------------------------ steps ---
check_kube_schemas() {
  local files=() f out rc=0 v
  while IFS= read -r f; do files+=("$f"); done < <(
    find deploy/kubernetes -type f \( -name '*.yaml' -o -name '*.yml' \) \
      ! -name kustomization.yaml ! -name kustomization.yml | sort)
  [[ ${#files[@]} -gt 0 ]] || { log "    no manifests found"; return 1; }
  for v in $K8S_VERSIONS; do
    # --strict rejects unknown fields; an unknown kind is only a WARN, which
    # fails here too.
    if ! out=$("$VENV/bin/kubernetes-validate" -k "$v" --strict --quiet "${files[@]}" 2>&1) \
       || grep -qE '^(WARN|ERROR)' <<<"$out"; then
      printf '%s\n' "$out" | sed 's/^/    /'
      rc=1
    else
      log "    ${#files[@]} files valid against Kubernetes $v (strict)"
    fi
  done
  return $rc
}

check_kube_contract() {
  "$VENV/bin/python" "$TMP/checks.py" kube deploy/kubernetes
}

check_kustomize_render() {
  if [[ ${#KUSTOMIZE[@]} -eq 0 ]]; then
    log "    SKIPPED: neither kubectl nor kustomize installed (static resource checks above still ran)"
    NOTES+=("kustomize render skipped")
    return 0
  fi
  local root out rc=0 v name
  while IFS= read -r root; do
    name=${root//\//_}
    if ! "${KUSTOMIZE[@]}" "$root" > "$TMP/$name.rendered.yaml" 2> "$TMP/$name.err"; then
      sed 's/^/    /' "$TMP/$name.err"
      log "    ${KUSTOMIZE[*]} $root failed"
      rc=1
      continue
    fi
    for v in $K8S_VERSIONS; do
      if ! out=$("$VENV/bin/kubernetes-validate" -k "$v" --strict --quiet "$TMP/$name.rendered.yaml" 2>&1) \
         || grep -qE '^(WARN|ERROR)' <<<"$out"; then
        printf '%s\n' "$out" | sed 's/^/    /'
        rc=1
      fi
    done
    [[ $rc -eq 0 ]] && log "    ${KUSTOMIZE[*]} $root: $(grep -c '^kind:' "$TMP/$name.rendered.yaml") objects, valid"
  done < <("$VENV/bin/python" "$TMP/checks.py" kustomize-roots deploy/kubernetes)
  return $rc
}

check_prometheus() {
  local rc=0
  if [[ -n "$PROMTOOL" ]]; then
    "$PROMTOOL" check rules deploy/prometheus/alerts.yaml 2>&1 | sed 's/^/    /' || rc=1
    (cd deploy/prometheus && "$PROMTOOL" test rules alerts.test.yaml) 2>&1 | sed 's/^/    /' || rc=1
    "$VENV/bin/python" "$TMP/checks.py" prom-config deploy/prometheus/prometheus.example.yml "$TMP/prometheus.yml" || rc=1
    log "    prometheus.example.yml (kubernetes_sd_configs swapped for a static target: Debian's promtool lacks Kubernetes SD):"
    "$PROMTOOL" check config "$TMP/prometheus.yml" 2>&1 | sed 's/^/    /' || rc=1
  else
    "$VENV/bin/python" "$TMP/checks.py" alert-fallback deploy/prometheus/alerts.yaml || rc=1
    "$VENV/bin/python" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1])); yaml.safe_load(open(sys.argv[2]))' \
      deploy/prometheus/alerts.test.yaml deploy/prometheus/prometheus.example.yml || rc=1
  fi
  "$VENV/bin/python" "$TMP/checks.py" alert-metrics deploy/prometheus/alerts.yaml || rc=1
  return $rc
}

check_grafana() {
  local rc=0
  "$VENV/bin/python" "$TMP/checks.py" grafana deploy/grafana/wa-breaker-dashboard.json "$TMP/grafana-rules.yaml" || return 1
  if [[ -n "$PROMTOOL" ]]; then
    if "$PROMTOOL" check rules "$TMP/grafana-rules.yaml" > "$TMP/grafana-promtool.out" 2>&1; then
      log "    every dashboard query parses as PromQL (promtool)"
    else
      sed 's/^/    /' "$TMP/grafana-promtool.out"
      rc=1
    fi
  fi
  return $rc
}

check_docker() {
  "$VENV/bin/python" "$TMP/checks.py" docker Dockerfile .dockerignore || return 1
  "$VENV/bin/python" "$TMP/checks.py" docker-config deploy/docker/config.toml
}

check_systemd() {
  local unit=deploy/systemd/wa-breaker.service rc=0
  # The hardening and layout the README documents, whether or not systemd is here.
  python3 - "$unit" <<'PYEOF' || rc=1
import sys
path = sys.argv[1]
section, keys = None, {}
for n, raw in enumerate(open(path), 1):
    line = raw.strip()
    if not line or line.startswith(("#", ";")):
        continue
    if line.startswith("["):
        section = line.strip("[]")
        continue
    k, sep, v = line.partition("=")
    if not sep:
        sys.exit(f"{path}:{n}: not KEY=value: {line}")
    keys.setdefault((section, k), []).append(v)
want = {
    ("Service", "NoNewPrivileges"): "yes", ("Service", "ProtectSystem"): "strict",
    ("Service", "DynamicUser"): "yes", ("Service", "StateDirectory"): "wa-breaker",
    ("Service", "CapabilityBoundingSet"): "", ("Service", "MemoryDenyWriteExecute"): "yes",
    ("Service", "RestrictAddressFamilies"): "AF_INET AF_INET6 AF_UNIX",
    ("Service", "SystemCallFilter"): "@system-service", ("Service", "PrivateTmp"): "yes",
    ("Service", "ProtectHome"): "yes", ("Service", "KillSignal"): "SIGTERM",
    ("Install", "WantedBy"): "multi-user.target",
}
errors = [f"{s}.{k} = {v!r} (have {keys.get((s, k))})" for (s, k), v in want.items()
          if v not in keys.get((s, k), [])]
exec_start = keys.get(("Service", "ExecStart"), [""])[0]
if "--config" not in exec_start:
    errors.append(f"ExecStart must pass --config: {exec_start!r}")
if "WA_BREAKER_STATE_DIR=/var/lib/wa-breaker" not in keys.get(("Service", "Environment"), []):
    errors.append("Environment=WA_BREAKER_STATE_DIR=/var/lib/wa-breaker (the StateDirectory)")
if errors:
    sys.exit("systemd unit: " + "; ".join(errors))
print("    hardening and layout as documented")
PYEOF
  if command -v systemd-analyze >/dev/null; then
    # verify wants ExecStart to exist; the binary is not installed here.
    mkdir -p "$TMP/systemd"
    sed "s#^ExecStart=/usr/local/bin/wa-breaker#ExecStart=$(command -v true)#" "$unit" \
      > "$TMP/systemd/wa-breaker.service"
    if systemd-analyze verify --man=no "$TMP/systemd/wa-breaker.service" > "$TMP/systemd/verify.out" 2>&1 \
        && ! grep -q . "$TMP/systemd/verify.out"; then
      log "    systemd-analyze verify: clean ($(systemd-analyze --version | head -n1))"
    else
      sed 's/^/    /' "$TMP/systemd/verify.out"
      rc=1
    fi
    local score
    score=$(systemd-analyze security --offline=yes "$TMP/systemd/wa-breaker.service" 2>/dev/null \
      | grep -o 'Overall exposure level for wa-breaker.service: [0-9.]* [A-Z]*' || true)
    [[ -n "$score" ]] && log "    $score"
  else
    log "    systemd-analyze not found: the unit was checked for its documented hardening only"
    NOTES+=("systemd-analyze unavailable: unit not verified by systemd")
  fi
  return $rc
}

# ------------------------------------------------------------------- main ---
setup_venv
write_helpers
KV_VERSION=$("$VENV/bin/kubernetes-validate" --version 2>&1 | awk '{print $NF}')
log "==> tools"
log "    kubernetes-validate $KV_VERSION (bundled schemas; validating against: $K8S_VERSIONS)"
find_promtool
find_kustomize
[[ ${#KUSTOMIZE[@]} -gt 0 ]] && log "    kustomize: ${KUSTOMIZE[*]} ($("${KUSTOMIZE[0]}" version --client 2>/dev/null | grep -i kustomize | head -n1 || true))"

step "kubernetes: schema validation" check_kube_schemas
step "kubernetes: kustomizations, configs, deployment contract" check_kube_contract
step "kubernetes: rendered kustomizations" check_kustomize_render
step "prometheus: alert rules" check_prometheus
step "grafana: dashboard" check_grafana
step "docker: Dockerfile and .dockerignore" check_docker
step "systemd: deploy/systemd/wa-breaker.service" check_systemd

if [[ ${#FAILED[@]} -gt 0 ]]; then
  log ""
  failed=$(IFS=';'; echo "${FAILED[*]}")
  log "validate-deploy: FAILED ($(elapsed "$T0")): ${failed//;/; }" >&2
  exit 1
fi
note=""
[[ ${#NOTES[@]} -gt 0 ]] && note=" [$(IFS=';'; echo "${NOTES[*]}")]"
log "validate-deploy: OK in $(elapsed "$T0") - k8s manifests (kubernetes-validate $KV_VERSION, k8s ${K8S_VERSIONS// /+}), alerts (promtool ${PROMTOOL_VERSION}), grafana, Dockerfile, systemd unit$note"
