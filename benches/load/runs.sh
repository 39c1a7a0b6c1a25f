#!/usr/bin/env bash
# Whole runs of run.sh, and in how many of them each target held.
#
#   RUNS=2 bash benches/load/runs.sh           RUNS whole runs, one after another, then the table
#   bash benches/load/runs.sh DIR DIR ...       the table of runs already made (run.sh's OUT_DIRs)
#
# One run's medians move between runs an hour apart by more than some targets' margins
# (BENCHMARKS.md, "Figures that hold"), so a target counts as met when it held in every
# run. Each run is `bash benches/load/run.sh` with this environment (ROUNDS, WAB_NO_BUILD,
# WAB_BIN_BEFORE, ... pass through) and OUT_DIR=$RUNS_DIR/run-N; the first run builds
# unless WAB_NO_BUILD=1, the others never do. Each run's report stays in its OUT_DIR
# (latest.md, results.tsv, targets.tsv, raw/); the table is printed and written to
# $RUNS_DIR/runs.md.
#
# Environment: RUNS=2, RUNS_DIR (default target/bench-runs; run-N inside it is emptied
#   before run N starts).
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-2}
RUNS_DIR=${RUNS_DIR:-$ROOT/target/bench-runs}

log() { printf '[runs %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

DIRS=("$@")
if ((${#DIRS[@]} == 0)); then
  [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive whole number (got '$RUNS')"
  mkdir -p "$RUNS_DIR"
  for i in $(seq 1 "$RUNS"); do
    out=$RUNS_DIR/run-$i
    rm -rf -- "$out"
    log "run $i/$RUNS: bash benches/load/run.sh, OUT_DIR=$out"
    if ((i == 1)); then
      OUT_DIR=$out bash "$HERE/run.sh" >"$RUNS_DIR/run-$i.out"
    else
      OUT_DIR=$out WAB_NO_BUILD=1 bash "$HERE/run.sh" >"$RUNS_DIR/run-$i.out"
    fi || die "run $i failed (its output: $RUNS_DIR/run-$i.out)"
    DIRS+=("$out")
  done
fi
for d in "${DIRS[@]}"; do
  [[ -s $d/targets.tsv && -s $d/latest.md ]] || die "$d: no targets.tsv or latest.md (not a finished run.sh OUT_DIR, or one from before targets.tsv)"
done

REPORT=$(mktemp "${TMPDIR:-/tmp}/wab-runs.XXXXXX")
trap 'rm -f -- "$REPORT"' EXIT
{
  echo "## Targets over ${#DIRS[@]} whole runs — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  i=0
  for d in "${DIRS[@]}"; do
    i=$((i + 1))
    # "## Load benchmark — 2026-12-08 03:14 UTC (real run)" -> the run's time
    when=$(sed -n '1s/^## Load benchmark — \(.*\) (real run)$/\1/p' "$d/latest.md")
    echo "- run $i: ${when:-time unknown}, $d"
  done
  echo
  printf '| target |'
  for i in $(seq 1 "${#DIRS[@]}"); do printf ' run %d |' "$i"; done
  printf ' held in |\n|---|'
  for _ in "${DIRS[@]}"; do printf -- '---|'; done
  printf -- '---|\n'
  # One row per target key, in the first run's order; "yes" cells in bold.
  for d in "${DIRS[@]}"; do printf '%s\n' "$d/targets.tsv"; done | awk -F'\t' -v n="${#DIRS[@]}" '
    { while ((getline line < $0) > 0) { split(line, f, "\t")
        if (!(f[1] in name)) { order[++k] = f[1]; name[f[1]] = f[2] }
        cell[f[1], NR] = (f[4] == "yes") ? "**" f[3] "**" : f[3]; met[f[1], NR] = f[4] }
      close($0) }
    END {
      for (i = 1; i <= k; i++) { key = order[i]; y = 0; judged = 0
        printf "| %s |", name[key]
        for (r = 1; r <= n; r++) { printf " %s |", ((key, r) in cell) ? cell[key, r] : "not run"
          if (met[key, r] == "yes") y++; if (met[key, r] == "yes" || met[key, r] == "no") judged++ }
        if (key ~ /^_/) printf " |\n"
        else if (judged < n) printf " %d of %d (judged in %d) |\n", y, n, judged
        else printf " %s |\n", (y == n) ? "**all " n "**" : y " of " n }
    }'
  echo
  echo "A cell in bold met its target in that run; \`held in\` counts the runs where it did. Each run's report, with every round's figures: its \`latest.md\` and \`results.tsv\`."
} >"$REPORT"
if (($# == 0)); then cp "$REPORT" "$RUNS_DIR/runs.md"; fi
cat "$REPORT"
