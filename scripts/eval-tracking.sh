#!/usr/bin/env bash
# Scores the current build's tracking against MOTChallenge-format ground truth:
#
#   scripts/eval-tracking.sh GT_FILE [VIDEO] [-- extra `lpmesh detect` arguments, e.g. --config FILE]
#
# GT_FILE: `frame,id,x,y,w,h,conf,...` rows, frames numbered from 1 = the video's first frame (rows with
# conf 0 are not scored). VIDEO defaults to the demo footage (vtest.avi, PETS2009 S2.L1 View 001), whose
# frames 1-400 are annotated in ../shared/eval/. The video is analysed up to the last annotated frame, with
# the node's default detector and tracker settings unless a --config says otherwise, and the table row of
# the model card is printed. Nothing derived from the ground truth is written into the project.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
    echo "usage: scripts/eval-tracking.sh GT_FILE [VIDEO] [-- lpmesh detect arguments]" >&2
    exit 2
fi
gt=$1
shift
cache=${LPMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lpmesh}
video=$cache/data/vtest.avi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
    video=$1
    shift
fi
[ "${1:-}" = "--" ] && shift

scripts/setup.sh >/dev/null
cargo build --release -p lpmesh-node --quiet
bin=${CARGO_TARGET_DIR:-target}/release/lpmesh

# Frames 1..last of the annotations; a file annotated from a later frame is scored from its first.
read -r first last < <(awk -F, '$1 ~ /^[0-9]+$/ { if (!m || $1 < m) m = $1; if ($1 > n) n = $1 } END { print m + 0, n + 0 }' "$gt")
if [ "$last" -lt 1 ]; then
    echo "$gt: no ground-truth rows" >&2
    exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" detect "$video" --format mot --max-frames "$last" -o "$work/tracks.txt" "$@" 2>"$work/detect.log" || {
    cat "$work/detect.log" >&2
    exit 1
}
"$bin" eval mot --gt "$gt" --tracks "$work/tracks.txt" --frames "$first-$last" --json >"$work/scores.json"
"$bin" eval mot --gt "$gt" --tracks "$work/tracks.txt" --frames "$first-$last"
echo
python3 - "$work/scores.json" "$first" "$last" "$(tail -n 1 "$work/detect.log")" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
pct = lambda v: f"{100 * v:.1f} %"
print("| frames | MOTA | IDF1 | id switches | identities for the people annotated |")
print("|---|---|---|---|---|")
print(f"| {sys.argv[2]}–{sys.argv[3]} | {pct(s['mota'])} | {pct(s['idf1'])} | {s['id_switches']} "
      f"| {s['hyp_ids']} ids for {s['gt_ids']} people |")
print(f"\nrecall {pct(s['recall'])}, precision {pct(s['precision'])}, false positives {s['false_positives']}, "
      f"misses {s['misses']}, fragmentations {s['fragmentations']}")
print(f"detect: {sys.argv[4]}")
EOF
