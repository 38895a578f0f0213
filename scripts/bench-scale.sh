#!/usr/bin/env bash
# bench-scale.sh: the scale run of docs/BENCHMARKS.md, "Memory (issue 16)".
#
# Starts `grantline serve` with its defaults on a temporary data directory,
# appends EVENTS events with `grantline bench --server`, runs `evaluate --json`
# over all rules, stops the server and runs `grantline fsck` under
# /usr/bin/time -v. A sampler reads the server's RssAnon and RssFile from
# /proc every second; heap profiles are fetched from /debug/pprof with the
# admin token at the end of the appends and during evaluate. Prints a table.
#
# Usage: scripts/bench-scale.sh [EVENTS]        (make bench-scale EVENTS=N)
# Environment:
#   GRANTLINE   a grantline binary to measure (default: built from this tree)
#   OUT         where the samples, profiles and outputs go (default: a temporary directory, kept)
#   KEEP_DATA=1 keep the data directory (default: removed at the end; it is large)
#   DATA        use this data directory (kept) instead of a new one; with
#   SKIP_APPEND=1 measure evaluate and fsck of the ledger it holds (before and
#               after binaries on the same ledger: run twice with GRANTLINE set)
#   SERVE_FLAGS extra flags for serve (e.g. "--max-mapped 256MiB")
#   EVAL_TIMEOUT  stop evaluate after this long (default 3600s)
#   PORT        the server's port (default 7871)
set -euo pipefail

EVENTS=${1:-${EVENTS:-1000000}}
PORT=${PORT:-7871}
EVAL_TIMEOUT=${EVAL_TIMEOUT:-3600}
OUT=${OUT:-$(mktemp -d -t grantline-scale.XXXXXX)}
mkdir -p "$OUT"
if [[ -n "${DATA:-}" ]]; then
	KEEP_DATA=1
else
	DATA=$(mktemp -d -t grantline-scale-data.XXXXXX)
fi
URL=http://127.0.0.1:$PORT

if [[ -z "${GRANTLINE:-}" ]]; then
	GRANTLINE=$OUT/grantline
	go build -o "$GRANTLINE" ./cmd/grantline
fi

say() { printf 'bench-scale: %s\n' "$*" >&2; }

SERVER=
SAMPLER=
cleanup() {
	[[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null || true
	[[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
	if [[ "${KEEP_DATA:-0}" != 1 ]]; then rm -rf -- "$DATA"; else say "data kept in $DATA"; fi
}
trap cleanup EXIT

say "$EVENTS events; binary $GRANTLINE; outputs in $OUT; data in $DATA; load: $(cut -d' ' -f1-3 /proc/loadavg)"
# shellcheck disable=SC2086
"$GRANTLINE" serve --data "$DATA" --listen "127.0.0.1:$PORT" ${SERVE_FLAGS:-} >"$OUT/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do
	[[ -s "$DATA/admin.token" ]] && curl -s -o /dev/null "$URL/" && break
	sleep 0.2
done
TOKEN=$(cat "$DATA/admin.token")

# The sampler: one line a second, "seconds phase rss_anon_kib rss_file_kib".
echo append >"$OUT/phase"
(
	t0=$(date +%s)
	while kill -0 "$SERVER" 2>/dev/null; do
		read -r anon file < <(awk '/^RssAnon:/{a=$2} /^RssFile:/{f=$2} END{print a, f}' "/proc/$SERVER/status" 2>/dev/null || echo "0 0")
		echo "$(($(date +%s) - t0)) $(cat "$OUT/phase") $anon $file"
		sleep 1
	done
) >"$OUT/samples.txt" &
SAMPLER=$!

heap() { curl -fsS -H "Authorization: Bearer $TOKEN" "$URL/debug/pprof/heap" -o "$OUT/$1" || say "heap profile $1 failed"; }

loadavg() { echo "$1 $(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/load.txt"; }
: >"$OUT/load.txt"
loadavg append
if [[ "${SKIP_APPEND:-0}" == 1 ]]; then
	echo "bench: skipped (SKIP_APPEND=1)" >"$OUT/bench.txt"
else
	"$GRANTLINE" bench --server "$URL" --token "$TOKEN" --events "$EVENTS" --streams 2 | tee "$OUT/bench.txt" >&2
	heap heap-append.pb.gz
fi
loadavg append

echo evaluate >"$OUT/phase"
loadavg evaluate
e0=$(date +%s.%N)
timeout "$EVAL_TIMEOUT" "$GRANTLINE" evaluate --server "$URL" --token "$TOKEN" --json >"$OUT/evaluate.json" 2>"$OUT/evaluate.err" &
EVAL=$!
# Heap profiles while evaluating: after 5 s, then every 30 s (the last one kept as heap-evaluate.pb.gz).
(
	sleep 5
	k=0
	while kill -0 "$EVAL" 2>/dev/null; do
		heap "heap-evaluate-$k.pb.gz" && cp "$OUT/heap-evaluate-$k.pb.gz" "$OUT/heap-evaluate.pb.gz"
		k=$((k + 1))
		sleep 30
	done
) &
PROFILER=$!
EVAL_RC=0
wait "$EVAL" || EVAL_RC=$?
e1=$(date +%s.%N)
kill "$PROFILER" 2>/dev/null || true
loadavg evaluate
echo "$EVAL_RC" >"$OUT/evaluate.rc"
printf '%.1f\n' "$(echo "$e1 - $e0" | bc)" >"$OUT/evaluate.seconds"

echo stop >"$OUT/phase"
kill -INT "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=

du -sb "$DATA" >"$OUT/disk.txt"
loadavg fsck
/usr/bin/time -v "$GRANTLINE" fsck --data "$DATA" --quiet >"$OUT/fsck.txt" 2>"$OUT/fsck.time" || say "fsck failed: $(tail -5 "$OUT/fsck.time")"
loadavg fsck

"$(dirname "$0")/bench-scale-report.sh" "$OUT" "$EVENTS"
