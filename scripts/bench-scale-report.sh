#!/usr/bin/env bash
# bench-scale-report.sh OUT EVENTS: the table of a scale run from the files
# scripts/bench-scale.sh left in OUT (it calls this at its end; run it again
# on a kept OUT to reprint): samples.txt, bench.txt, evaluate.json,
# evaluate.rc, evaluate.cpu, load.txt, fsck.time, disk.txt, max-mapped (and export.* with
# EXPORT=1).
set -euo pipefail
OUT=$1
EVENTS=$2

peak() { # peak <phase> <column: 3 anon, 4 file>, in MiB
	awk -v p="$1" -v c="$2" '$2==p && $c+0>m {m=$c+0} END{printf "%.0f MiB", m/1024}' "$OUT/samples.txt"
}
pct() { # pct <phase> <column>: median and 95th percentile, in MiB
	awk -v p="$1" -v c="$2" '$2==p {print $c+0}' "$OUT/samples.txt" | sort -n |
		awk '{v[NR]=$1} END{if (NR==0) {print "-"; exit} k=int(NR*0.95+0.5); if (k<1) k=1; printf "%.0f / %.0f MiB", v[int((NR+1)/2)]/1024, v[k]/1024}'
}
above() { # above <phase>: samples of RssFile above the bound on mapped files, "N of M"
	local b
	b=$(cat "$OUT/max-mapped" 2>/dev/null || echo 1073741824)
	awk -v p="$1" -v b="$b" '$2==p {n++; if ($4*1024 > b) a++} END{printf "%d of %d", a, n}' "$OUT/samples.txt"
}
span() { # span <phase>: seconds from its first sample to its last
	awk -v p="$1" '$2==p {if (f=="") f=$1; l=$1} END{print (f=="" ? 0 : l-f)}' "$OUT/samples.txt"
}
load() { awk -v k="$1" '$1==k {print $2}' "$OUT/load.txt" 2>/dev/null | paste -sd- -; }

RATE=$(grep -o '[0-9]* events/s' "$OUT/bench.txt" | head -1 || echo "-")
P99=$(grep -o 'p99 [^ ;]*' "$OUT/bench.txt" | head -1 || echo "-")
EVAL_S=$(cat "$OUT/evaluate.seconds" 2>/dev/null || echo "~$(span evaluate)")
RC=$(cat "$OUT/evaluate.rc" 2>/dev/null || echo 0)
if [[ "$RC" == 0 ]]; then
	# Each finding opens a line "    {" (docs/design.md: the shape of evaluate --json).
	FINDINGS="$(grep -c '^    {' "$OUT/evaluate.json" || true) findings"
else
	FINDINGS="failed (exit $RC: $(tail -c 200 "$OUT/evaluate.err" | tr '\n' ' '))"
fi
FSCK_WALL=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$OUT/fsck.time" 2>/dev/null)
FSCK_RSS=$(awk -F': ' '/Maximum resident set size/{printf "%.0f MiB", $2/1024}' "$OUT/fsck.time" 2>/dev/null)
DISK=$(cut -f1 "$OUT/disk.txt" 2>/dev/null || echo 0)
BOUND=$(awk '{printf "%.0f MiB", $1/1048576}' "$OUT/max-mapped" 2>/dev/null || echo "1024 MiB")
EXPORT_ROWS=
if [[ -f "$OUT/export.rc" ]]; then
	XRC=$(cat "$OUT/export.rc")
	XWHAT="$(cat "$OUT/export.seconds") s, $(awk '{printf "%.0f MB", $1/1e6}' "$OUT/export.bytes" 2>/dev/null) package"
	[[ "$XRC" == 0 ]] || XWHAT="failed (exit $XRC: $(tail -c 200 "$OUT/export.err" | tr '\n' ' '))"
	EXPORT_ROWS="| evidence export --all (load $(load export)) | $XWHAT |
| RssFile exporting: peak, median / 95th percentile; samples above $BOUND | $(peak export 4), $(pct export 4); $(above export) |
"
fi

cat <<TABLE

| $EVENTS events ($(date -u -r "$OUT/samples.txt" +'%d %b %Y %H:%M UTC'), $(nproc) cores) | measured |
|---|---|
| append rate, ack p99 (load $(load append)) | $RATE, $P99 |
| peak RssAnon / RssFile appending | $(peak append 3) / $(peak append 4) |
| evaluate --json, all rules (load $(load evaluate)) | $EVAL_S s, $FINDINGS |
| peak RssAnon / RssFile evaluating | $(peak evaluate 3) / $(peak evaluate 4) |
| RssFile evaluating, median / 95th percentile of the samples | $(pct evaluate 4) |
| RssFile evaluating, samples above --max-mapped $BOUND | $(above evaluate) |
| server CPU evaluating (user+system), page faults minor / major | $(awk '{printf "%s s, %d / %d", $1, $2, $3}' "$OUT/evaluate.cpu" 2>/dev/null || echo -) |
${EXPORT_ROWS}| fsck --data --max-mapped $BOUND (load $(load fsck)) | ${FSCK_WALL:--} wall, peak RSS ${FSCK_RSS:--} |
| RssFile of fsck: peak, median / 95th percentile; samples above $BOUND | $(peak fsck 4), $(pct fsck 4); $(above fsck) |
| disk | $DISK bytes, $((DISK / (EVENTS > 0 ? EVENTS : 1))) bytes per event |

samples (s phase anon_kib file_kib): $OUT/samples.txt
heap profiles: go tool pprof -top -sample_index=inuse_space $OUT/heap-append.pb.gz ($OUT/heap-evaluate*.pb.gz)
TABLE
