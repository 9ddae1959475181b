#!/usr/bin/env bash
# GPU smoke test (about two minutes on one GPU): every reference mode x (full, LoRA) x (fp32, bf16) trains a tiny
# model for a few steps on the GPU, a resumed run rebuilds its reference there, `dpolab eval` (policy + reference),
# `generate` and `chat` run a trained model there (eval's numbers must match the CPU's), and with two or more GPUs a
# 2-process DDP run trains too. The on-policy objective does not exist yet: its place is marked below. Prints one
# line per case and exits non-zero if any case failed.
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

# dpolab eval / generate / chat on the GPU (--device cuda; the CPU when GPU_SMOKE_ON_CPU=1): eval scores a policy
# against a reference (a LoRA run's adapter, merged into its base) on the device and on the CPU, which must agree
# (bf16 autocast on the GPU: accuracy within 1 pair in 8, mean log-ratio margin within 0.05 nats + 5 %)
DEV=$([ "${GPUS:-0}" -ge 1 ] && echo cuda || echo cpu)
POLICY="$OUT/full-copy-fp32/final"; REF="$OUT/lora-adapter-fp32/final"; PAIRS="$OUT/pairs.jsonl"
"$PY" - "$PAIRS" <<'PY'
import json, sys
rows = [{"prompt": f"Q: {a}+{b}\nA: ", "chosen": f"{a}+{b}={a + b}", "rejected": f"{a}+{b}={a + b + 1 + a % 2}"}
        for a in range(1, 9) for b in range(1, 5)]
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
for dev in "$DEV" cpu; do
  t0=$SECONDS
  "$DPOLAB" eval --model "$POLICY" --reference "$REF" --data "$PAIRS" --device "$dev" --out "$OUT/eval-$dev.json" \
    >/dev/null 2>"$OUT/eval-$dev.log"
  echo $? $((SECONDS - t0)) >"$OUT/eval-$dev.rc"
  [ "$dev" = cpu ] && break
done
"$PY" - "$OUT" "$DEV" <<'PY' || FAILED=1
import json, sys
from pathlib import Path
out, dev = Path(sys.argv[1]), sys.argv[2]
rc, secs = (out / f"eval-{dev}.rc").read_text().split()
log = (out / f"eval-{dev}.log").read_text()
if rc != "0" or not (out / f"eval-{dev}.json").exists():
    sys.exit(print(f"FAIL  eval-{dev} rc={rc} {secs}s: {log.strip().splitlines()[-1][:200] if log.strip() else ''}"))
if f"device: {dev}" not in log:
    sys.exit(print(f"FAIL  eval-{dev}: the log does not say it ran on {dev}"))
g, c = (json.loads((out / f"eval-{d}.json").read_text()) for d in (dev, "cpu"))
gm, cm = g["logratio_margin"], c["logratio_margin"]
ok = abs(g["reward_accuracy"] - c["reward_accuracy"]) <= 1 / 8 and abs(gm - cm) <= 0.05 + 0.05 * abs(cm)
print(f"{'ok  ' if ok else 'FAIL'}  eval-{dev:<23} pairs={g['pairs']} acc={g['reward_accuracy']:.3f} (cpu "
      f"{c['reward_accuracy']:.3f}) margin={gm:.4f} (cpu {cm:.4f}) {secs}s")
sys.exit(0 if ok else 1)
PY
t0=$SECONDS
"$DPOLAB" generate --model "$POLICY" --device "$DEV" --temperature 0 --max-new-tokens 12 --no-chat-template \
  "Q: 3+4
A: " >"$OUT/generate-$DEV.txt" 2>"$OUT/generate-$DEV.log"
rc=$?
[ $rc -eq 0 ] && echo "ok    generate-$DEV$(printf '%*s' $((19 - ${#DEV})) '') reply=$(head -c 40 "$OUT/generate-$DEV.txt" | tr '\n' ' ') $((SECONDS - t0))s" \
  || { FAILED=1; echo "FAIL  generate-$DEV rc=$rc: $(tail -1 "$OUT/generate-$DEV.log" | cut -c1-200)"; }
t0=$SECONDS
printf '1+1=\n2+2=\n' | "$DPOLAB" chat --model "$POLICY" --device "$DEV" --temperature 0 --max-new-tokens 8 \
  --no-chat-template >"$OUT/chat-$DEV.txt" 2>"$OUT/chat-$DEV.log"
rc=$?
[ $rc -eq 0 ] && [ "$(wc -l <"$OUT/chat-$DEV.txt")" -ge 2 ] && echo "ok    chat-$DEV$(printf '%*s' $((23 - ${#DEV})) '') 2 turns $((SECONDS - t0))s" \
  || { FAILED=1; echo "FAIL  chat-$DEV rc=$rc: $(tail -1 "$OUT/chat-$DEV.log" | cut -c1-200)"; }

# ---- ON-POLICY OBJECTIVE: NOT COVERED YET ---------------------------------------------------------------------------
# The on-policy objective (issue 32: sampling from the policy inside training) does not exist yet. When it lands, its
# case goes here: a few steps that generate and train on the GPU, fp32 and bf16, full and LoRA, e.g.
#   run_case "onpolicy-full-bf16" train.mode=<its mode> train.bf16=true
echo "skip  on-policy objective (not implemented yet; its case goes here in scripts/gpu_smoke.sh)"

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
