#!/usr/bin/env bash
# GPU smoke test (about two minutes on one GPU): every reference mode x (full, LoRA) x (fp32, bf16) trains a tiny
# model for a few steps on the GPU, a resumed run rebuilds its reference there, and with two or more GPUs a
# 2-process DDP run does too. Prints one line per case and exits non-zero if any case failed.
#
#   bash scripts/gpu_smoke.sh            # uses `dpolab` on PATH (or DPOLAB=".venv/bin/dpolab")
#   OUT_DIR=/tmp/smoke bash scripts/gpu_smoke.sh
set -uo pipefail
DPOLAB=${DPOLAB:-dpolab}
PY=${PYTHON:-python}
OUT=${OUT_DIR:-$(mktemp -d -t dpolab-gpu-smoke-XXXX)}
mkdir -p "$OUT"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [ "${GPUS:-0}" -lt 1 ]; then
  if [ "${GPU_SMOKE_ON_CPU:-0}" != 1 ]; then
    echo "gpu_smoke: no CUDA device visible to torch; nothing to test (GPU_SMOKE_ON_CPU=1 runs the cases on the CPU)"; exit 2
  fi
  echo "gpu_smoke: no GPU; running the cases on the CPU (GPU_SMOKE_ON_CPU=1), logs in $OUT"
else
  echo "gpu_smoke: $GPUS GPU(s): $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__)'); logs in $OUT"
fi

COMMON=(model.name_or_path=tiny-gpt2 "model.tiny={n_layer: 2, n_embd: 64, n_head: 2}" data.task=arithmetic
        "data.task_args={n_train: 48, n_eval: 16}" train.batch_size=8 train.max_steps=6 train.lr=1e-3
        eval.every=3 output.save_every=3 output.progress=false "loss=[{name: dpo}, {name: beta-dpo, weight: 0.5}]")
FAILED=0

report() {  # name, rc, seconds
  local name=$1 rc=$2 secs=$3
  if [ "$rc" -eq 0 ] && [ -f "$OUT/$name/summary.json" ]; then
    "$PY" - "$OUT/$name/summary.json" "$name" "$secs" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); e = s.get("final_eval") or {}
print(f"ok    {sys.argv[2]:<28} ref={str(s.get('reference_mode')):<11} steps={s['steps']} "
      f"eval_loss={e.get('eval/loss', float('nan')):.4f} acc={e.get('eval/reward_accuracy', float('nan')):.2f} "
      f"peak={s['peak_memory_mb']:.0f}MB {sys.argv[3]}s")
PY
  else
    FAILED=1
    echo "FAIL  $name rc=$rc ${secs}s: $(grep -v '^\s*$' "$OUT/$name.log" | tail -1 | cut -c1-200)"
  fi
}

run_case() {  # name, extra overrides...
  local name=$1; shift
  local t0=$SECONDS
  "$DPOLAB" train "${COMMON[@]}" "output.dir=$OUT/$name" "$@" >"$OUT/$name.log" 2>&1
  report "$name" $? $((SECONDS - t0))
}

for prec in fp32 bf16; do
  bf=$([ "$prec" = bf16 ] && echo true || echo false)
  for ref in copy precomputed separate; do
    extra=("reference.mode=$ref")
    [ "$ref" = separate ] && extra=("reference.mode=copy" "reference.name_or_path=tiny-gpt2")
    run_case "full-$ref-$prec" "train.bf16=$bf" "${extra[@]}"
  done
  for ref in adapter precomputed copy; do
    run_case "lora-$ref-$prec" "train.bf16=$bf" lora.enabled=true lora.r=4 "reference.mode=$ref"
  done
done

# resume: the reference is rebuilt (copy: the starting weights; precomputed: the recorded table) on the GPU
for ref in copy precomputed; do
  name="resume-full-$ref-fp32"
  rm -f "$OUT/full-$ref-fp32/DONE" "$OUT/full-$ref-fp32/summary.json"
  t0=$SECONDS
  "$DPOLAB" train "${COMMON[@]}" "output.dir=$OUT/full-$ref-fp32" "reference.mode=$ref" train.bf16=false --resume \
    >"$OUT/$name.log" 2>&1
  rc=$?
  mkdir -p "$OUT/$name" && cp "$OUT/full-$ref-fp32/summary.json" "$OUT/$name/" 2>/dev/null
  report "$name" $rc $((SECONDS - t0))
done

if [ "$GPUS" -ge 2 ]; then
  for ref in copy precomputed; do
    name="ddp2-full-$ref-fp32"; t0=$SECONDS
    "$PY" -m accelerate.commands.launch --multi_gpu --num_processes 2 -m dpolab.cli train "${COMMON[@]}" \
      "output.dir=$OUT/$name" "reference.mode=$ref" >"$OUT/$name.log" 2>&1
    report "$name" $? $((SECONDS - t0))
  done
else
  echo "skip  ddp2 (one GPU visible)"
fi
[ "$FAILED" -eq 0 ] && echo "gpu_smoke: all cases passed" || echo "gpu_smoke: some cases FAILED"
exit $FAILED
