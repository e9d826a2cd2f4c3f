#!/usr/bin/env bash
# Repeat a tiny two-process DDP launch (gloo) and count the launches that do not exit in time.
# A launch still running after the limit is dumped with py-spy (native frames, every process of
# it) into OUT/dump-N.txt, then killed. docs/training.md, "A launch that did not exit".
#
#   bash benchmarks/launch_exit_check.sh [LAUNCHES=20] [OUT=/tmp/launch-exit] [LIMIT_S=60]
#
# Run it beside a busy loop (`python3 -c "while True: pass" &`) to put the suite's load on a
# 2-core machine. Needs py-spy for the dumps (pip install py-spy).
set -u
n=${1:-20}; out=${2:-/tmp/launch-exit}; limit=${3:-60}
root=$(cd "$(dirname "$0")/.." && pwd); py="$root/.venv/bin/python"
mkdir -p "$out"; ok=0; hung=0; failed=0
for i in $(seq 1 "$n"); do
  run="$out/run-$i"; rm -rf "$run"
  OMP_NUM_THREADS=1 setsid "$py" -m accelerate.commands.launch \
    --config_file "$root/configs/accelerate/cpu-ddp.yaml" --num_processes 2 \
    --main_process_port $((30000 + RANDOM % 20000)) -m polyvis train "$root/configs/nano-tiny.yaml" \
    --out "$run" --no-progress --set train.max_steps=4 \
    "data.synthetic={families: [scene, ocr], n: 16, seed: 0, size: 64, dir: $out/synth}" \
    > "$out/launch-$i.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 $((limit * 2))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    hung=$((hung + 1)); echo "launch $i: no exit within $limit s"
    for p in $(pgrep -f -- "--out $run"); do
      echo "== pid $p"; "$root/.venv/bin/py-spy" dump --native --pid "$p" 2>&1 | head -60
    done > "$out/dump-$i.txt"
    pkill -9 -f -- "--out $run"; wait "$pid" 2>/dev/null
  elif wait "$pid"; then ok=$((ok + 1))
  else failed=$((failed + 1)); echo "launch $i: failed (see $out/launch-$i.log)"
  fi
done
echo "launches: $n; exited: $ok; did not exit within $limit s: $hung; failed: $failed"
