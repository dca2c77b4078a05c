#!/bin/bash
# The README's "Comparing and evaluating over a dataset" figures (issue 14 part 4), rerunnable on
# a quiet machine:  tools/bench/compare_dataset.sh DIR OUT   (DIR: the augmented images, made
# here; OUT: a folder for the runs' outputs). Needs the ray extra for the Ray run.
set -u
cd "$(dirname "$0")/../.."
DIR=${1:?usage: compare_dataset.sh DIR OUT}
OUT=${2:?usage: compare_dataset.sh DIR OUT}
BBX=".venv/bin/bbx"
A=models/efficientnet_lite0.onnx
B=models/efficientnet_lite0_int8.onnx
GATE="--max-drift-rate 0.05 --max-flip-rate 0.1 --no-progress"
mkdir -p "$OUT"
.venv/bin/python tools/make_augmented_images.py "$DIR" --count 300
figures() { grep -v -e "^aug_" -e "^bbx: model" -e "^bbx: batch" -e "preprocessing of" "$1"; }

rm -rf "$OUT/killed"  # killed after 45 s, then resumed
timeout -s KILL 45 $BBX compare $A "$DIR" --against $B --out "$OUT/killed" --method gradcam $GATE \
    > "$OUT/killed1.log" 2>&1
echo "rows after the kill: $(($(wc -l < "$OUT/killed/compare.csv") - 1))"
/usr/bin/time -f "resumed: %e s" $BBX compare $A "$DIR" --against $B --out "$OUT/killed" \
    --method gradcam $GATE > "$OUT/killed2.log" 2>&1
figures "$OUT/killed2.log"

rm -rf "$OUT/full"
/usr/bin/time -f "uninterrupted: %e s" $BBX compare $A "$DIR" --against $B --out "$OUT/full" \
    --method gradcam $GATE > "$OUT/full.log" 2>&1
figures "$OUT/full.log"

rm -rf "$OUT/ray"
/usr/bin/time -f "ray, 2 workers: %e s" $BBX compare $A "$DIR" --against $B --out "$OUT/ray" \
    --method gradcam $GATE --executor ray --ray-workers 2 > "$OUT/ray.log" 2>&1
figures "$OUT/ray.log" | grep -e "compared now" -e "s$"

.venv/bin/python - "$OUT" <<'PY'
import csv, json, sys
out = sys.argv[1]
def rows(d):
    with open(f"{out}/{d}/compare.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
def summary(d):
    return json.load(open(f"{out}/{d}/summary.json"))["summary"]
for d in ("killed", "ray"):
    print(f"{d} == uninterrupted: rows {rows(d) == rows('full')}, summary {summary(d) == summary('full')}")
PY

ls "$DIR"/*.jpg | head -60 > "$OUT/first60.txt"
for m in "gradcam" "occlusion -o window=56 -o stride=28"; do
    name=${m%% *}
    rm -rf "$OUT/$name-60"
    /usr/bin/time -f "$name, 60 images: %e s" $BBX compare $A --images-from "$OUT/first60.txt" \
        --against $B --out "$OUT/$name-60" --method $m $GATE > "$OUT/$name-60.log" 2>&1
    figures "$OUT/$name-60.log"
done
