#!/usr/bin/env bash
# bench-scale-report.sh OUT EVENTS: the table of a scale run from the files
# scripts/bench-scale.sh left in OUT (it calls this at its end; run it again
# on a kept OUT to reprint): samples.txt, bench.txt, evaluate.json,
# evaluate.rc, load.txt, fsck.time, disk.txt.
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

cat <<TABLE

| $EVENTS events ($(date -u -r "$OUT/samples.txt" +'%d %b %Y %H:%M UTC'), $(nproc) cores) | measured |
|---|---|
| append rate, ack p99 (load $(load append)) | $RATE, $P99 |
| peak RssAnon / RssFile appending | $(peak append 3) / $(peak append 4) |
| evaluate --json, all rules (load $(load evaluate)) | $EVAL_S s, $FINDINGS |
| peak RssAnon / RssFile evaluating | $(peak evaluate 3) / $(peak evaluate 4) |
| RssFile evaluating, median / 95th percentile of the samples | $(pct evaluate 4) |
| fsck --data (load $(load fsck)) | ${FSCK_WALL:--} wall, peak RSS ${FSCK_RSS:--} |
| disk | $DISK bytes, $((DISK / (EVENTS > 0 ? EVENTS : 1))) bytes per event |

samples (s phase anon_kib file_kib): $OUT/samples.txt
heap profiles: go tool pprof -top -sample_index=inuse_space $OUT/heap-append.pb.gz ($OUT/heap-evaluate*.pb.gz)
TABLE
