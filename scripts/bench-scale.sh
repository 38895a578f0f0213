#!/usr/bin/env bash
# bench-scale.sh: the scale run of docs/BENCHMARKS.md, "Memory (issue 16)".
#
# Starts `grantline serve` with its defaults on a temporary data directory,
# appends EVENTS events with `grantline bench --server`, runs `evaluate --json`
# over all rules (and with EXPORT=1 `evidence export --all` through the
# server), stops the server and runs `grantline fsck` under /usr/bin/time -v
# with the same --max-mapped. A sampler reads RssAnon and RssFile of the
# server, then of fsck, from /proc every second; heap profiles are fetched
# from /debug/pprof with the admin token at the end of the appends and
# during evaluate. Prints a table, with the samples above --max-mapped.
#
# Usage: scripts/bench-scale.sh [EVENTS]        (make bench-scale EVENTS=N)
# Environment:
#   GRANTLINE   a grantline binary to measure (default: built from this tree)
#   OUT         where the samples, profiles and outputs go (default: a temporary directory, kept)
#   KEEP_DATA=1 keep the data directory (default: removed at the end; it is large)
#   DATA        use this data directory (kept) instead of a new one; with
#   SKIP_APPEND=1 measure evaluate and fsck of the ledger it holds (before and
#               after binaries on the same ledger: run twice with GRANTLINE set)
#   SERVE_FLAGS extra flags for serve (e.g. "--max-mapped 256MiB"; a
#               --max-mapped here is fsck's too, and the bound the table counts
#               samples above)
#   EXPORT=1    also run `evidence export --all` through the server after
#               evaluate (its package is written to OUT/export and removed)
#   SKIP_FSCK=1 do not run fsck after evaluate (re-runs of evaluate on a kept ledger)
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

# The bound on mapped files: serve's default unless SERVE_FLAGS names one;
# fsck gets the same, and the report counts the samples above it.
MAX_MAPPED=1GiB
if [[ "${SERVE_FLAGS:-}" =~ --max-mapped[=\ ]+([^ ]+) ]]; then MAX_MAPPED=${BASH_REMATCH[1]}; fi
bytes() { # bytes SIZE: KiB/MiB/GiB/TiB (or plain bytes) to bytes
	local v=$1 n u
	n=${v%%[!0-9]*} u=${v#"$n"}
	case $u in
	"") echo "$n" ;; KiB) echo $((n << 10)) ;; MiB) echo $((n << 20)) ;; GiB) echo $((n << 30)) ;; TiB) echo $((n << 40)) ;;
	KB) echo $((n * 1000)) ;; MB) echo $((n * 1000000)) ;; GB) echo $((n * 1000000000)) ;; TB) echo $((n * 1000000000000)) ;;
	*) echo "bench-scale: --max-mapped $v: cannot read the size" >&2; return 1 ;;
	esac
}
bytes "$MAX_MAPPED" >"$OUT/max-mapped"

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

# The sampler: one line a second, "seconds phase rss_anon_kib rss_file_kib",
# of process $1 while it lives; a sample of a process that just ended is left out.
T0=$(date +%s)
sample() {
	while kill -0 "$1" 2>/dev/null; do
		read -r anon file < <(awk '/^RssAnon:/{a=$2} /^RssFile:/{f=$2} END{print a, f}' "/proc/$1/status" 2>/dev/null || echo "0 0")
		[[ -n "$file" && "$file" != 0 ]] && echo "$(($(date +%s) - T0)) $(cat "$OUT/phase") $anon $file"
		sleep 1
	done
}
echo append >"$OUT/phase"
sample "$SERVER" >"$OUT/samples.txt" &
SAMPLER=$!

heap() { curl -fsS -H "Authorization: Bearer $TOKEN" "$URL/debug/pprof/heap" -o "$OUT/$1" || say "heap profile $1 failed"; }

# The server's CPU seconds (user+system) and page faults (minor, major)
# from /proc/PID/stat: CPU time moves less with the machine's load than
# wall time, and major faults count the pages read again from disk.
cpufaults() { awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.2f %d %d\n", ($12+$13)/hz, $8, $10}' "/proc/$1/stat"; }
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
c0=$(cpufaults "$SERVER")
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
c1=$(cpufaults "$SERVER")
# "cpu_seconds minor_faults major_faults" of the server while evaluating
paste -d' ' <(echo "$c0" | tr ' ' '\n') <(echo "$c1" | tr ' ' '\n') | awk '{printf "%s%s", (NR>1 ? " " : ""), $2-$1} END{print ""}' >"$OUT/evaluate.cpu"
kill "$PROFILER" 2>/dev/null || true
loadavg evaluate
echo "$EVAL_RC" >"$OUT/evaluate.rc"
printf '%.1f\n' "$(echo "$e1 - $e0" | bc)" >"$OUT/evaluate.seconds"

if [[ "${EXPORT:-0}" == 1 ]]; then
	echo export >"$OUT/phase"
	loadavg export
	x0=$(date +%s.%N)
	EXPORT_RC=0
	timeout "$EVAL_TIMEOUT" "$GRANTLINE" evidence export --server "$URL" --token "$TOKEN" --all --out "$OUT/export" >"$OUT/export.txt" 2>"$OUT/export.err" || EXPORT_RC=$?
	x1=$(date +%s.%N)
	loadavg export
	echo "$EXPORT_RC" >"$OUT/export.rc"
	printf '%.1f\n' "$(echo "$x1 - $x0" | bc)" >"$OUT/export.seconds"
	du -sb "$OUT/export" 2>/dev/null | cut -f1 >"$OUT/export.bytes" || true
	rm -rf -- "$OUT/export"
fi

echo stop >"$OUT/phase"
kill -INT "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=

du -sb "$DATA" >"$OUT/disk.txt"
loadavg fsck
echo fsck >"$OUT/phase"
if [[ "${SKIP_FSCK:-0}" == 1 ]]; then
	: >"$OUT/fsck.time"
	"$(dirname "$0")/bench-scale-report.sh" "$OUT" "$EVENTS"
	exit 0
fi
/usr/bin/time -v "$GRANTLINE" fsck --data "$DATA" --max-mapped "$MAX_MAPPED" --quiet >"$OUT/fsck.txt" 2>"$OUT/fsck.time" &
TIMER=$!
FSCK=
for _ in $(seq 50); do
	FSCK=$(pgrep -P "$TIMER" | head -1) && break
	sleep 0.1
done
[[ -n "$FSCK" ]] && { sample "$FSCK" >>"$OUT/samples.txt" & SAMPLER=$!; }
wait "$TIMER" || say "fsck failed: $(tail -5 "$OUT/fsck.time")"
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=
loadavg fsck

"$(dirname "$0")/bench-scale-report.sh" "$OUT" "$EVENTS"
