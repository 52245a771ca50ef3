#!/usr/bin/env bash
# One GPU benchmark session: our train step (tools/bench.py) first, then the peers (tools/peers/), each
# printing one JSON line, then a table. Run from the repository root:
#
#   BUDGET=420 bash tools/gpu_check.sh
#
# Environment (all optional):
#   BUDGET  seconds for the whole script (default 420): each part's timeout is clamped to what is left,
#           and a part that would get less than its minimum is skipped (and recorded as skipped).
#   OUT     folder for results.ndjson (one JSON line per part, "label" first), env.txt, summary.txt
#           (the table) and one log per group (ours.log, peers.log, extras.log); default runs/gpu_check.
#   ACCUM   micro-batches per optimizer step in the two accumulation runs of ours (default 4).
#   WHEELS  a folder of wheels installed first when it exists (default .gpu/whl), for a machine whose
#           Python lacks some of the project's dependencies (e.g. grain, clu, ml-collections,
#           tensorboardX: fetch them elsewhere with `pip download --no-deps -d .gpu/whl ...`).
#   JAX_COMPILATION_CACHE_DIR  persistent compile cache (default .gpu/jax_cache): a rerun on the same
#           machine reuses executables and autotuning, so its compile_s is smaller.
#
# Order (most important first): ours GPT-2 124M (configs/gpt2_small.py: seq 1024, micro-batch 32, bf16,
# cuDNN attention) with ACCUM-step accumulation as optax.MultiSteps and as lax.scan; ours Llama 1.1B
# (configs/llama_1b.py) with LoRA r16 on bf16 frozen weights; the peers at the same shapes (nanoGPT +
# torch.compile, bare Flax + cuDNN, transformers GPT-2, transformers + PEFT LoRA r16 Llama); then, if
# time is left, ours GPT-2 without accumulation and both Llama full fine-tunes.
set -u
OUT=${OUT:-runs/gpu_check}
BUDGET=${BUDGET:-420}
ACCUM=${ACCUM:-4}
WHEELS=${WHEELS:-.gpu/whl}
mkdir -p "$OUT"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
RES=$OUT/results.ndjson
: >"$RES"
: >"$OUT/env.txt"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.85}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-.gpu/jax_cache}

if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SCRATCH/site" "$WHEELS"/*.whl \
    || echo "wheel install from $WHEELS failed" >>"$OUT/env.txt"
  export PYTHONPATH=$SCRATCH/site:$PWD
else
  export PYTHONPATH=$PWD
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
    --format=csv 2>&1
  timeout 60 python3 -c 'import jax, flax, optax, torch, transformers, peft
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "torch", torch.__version__,
      "transformers", transformers.__version__, "peft", peft.__version__)
print(jax.devices(), jax.devices()[0].device_kind)' 2>&1 | grep -v '^WARNING'
  echo "compile cache: $JAX_COMPILATION_CACHE_DIR; budget ${BUDGET}s; accum $ACCUM"
} >>"$OUT/env.txt"

# step LABEL LOG MAX_S MIN_S CMD...: runs CMD under a timeout clamped to the budget left; the JSON
# lines it prints go to results.ndjson (and stdout) tagged with LABEL, rc and wall_s; stderr goes to
# $OUT/LOG. A command that prints no JSON line is recorded with its exit code and stderr's tail.
step() {
  local label=$1 log=$2 max=$3 min=$4
  shift 4
  local left=$((BUDGET - SECONDS))
  local t=$((left < max ? left : max))
  if ((t < min)); then
    echo "{\"label\": \"$label\", \"skipped\": \"budget: ${left}s left\"}" | tee -a "$RES"
    return
  fi
  echo "=== $label at ${SECONDS}s, timeout ${t}s: $*" >>"$OUT/$log"
  local t0=$SECONDS rc=0
  timeout -k 5 "$t" "$@" >"$SCRATCH/step.out" 2>"$SCRATCH/step.err" || rc=$?
  cat "$SCRATCH/step.err" >>"$OUT/$log"
  python3 - "$label" "$rc" "$((SECONDS - t0))" "$SCRATCH/step.out" "$SCRATCH/step.err" <<'EOF' | tee -a "$RES"
import json, sys
label, rc, wall, out, err = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:]
rows = []
for line in open(out, errors="replace"):
    if line.startswith("{"):
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
for r in rows:
    r.pop("label", None)
    print(json.dumps({"label": label, **r, "rc": rc, "wall_s": wall}))
if not rows:
    tail = " | ".join(open(err, errors="replace").read().strip().splitlines()[-3:])[-600:]
    print(json.dumps({"label": label, "error": f"rc={rc}" + (" (timeout)" if rc in (124, 137) else ""),
                      "stderr_tail": tail, "wall_s": wall}))
EOF
}
ok() { grep "\"label\": \"$1\"" "$RES" | grep -q tokens_per_second; }

BENCH="python3 tools/bench.py"
GPT2_SHAPE="--layers 12 --d-model 768 --heads 12 --seq 1024 --batch 32 --vocab 50304"
LLAMA_SHAPE="--layers 22 --d-model 2048 --heads 32 --kv-heads 4 --ffn 5632 --vocab 32000 --seq 2048 --batch 4"
LORA="--config.lora.rank=16 --config.lora.base_dtype=bfloat16"

# Ours. GPT-2 124M, bf16, cuDNN attention, ACCUM micro-batches of 32 x 1024 per optimizer step.
step gpt2_multisteps ours.log 200 60 $BENCH --config=configs/gpt2_small.py --steps 8 --warmup 2 \
  --config.train.grad_accum_steps="$ACCUM" --config.train.accum_impl=multisteps --label=gpt2_multisteps
step gpt2_scan ours.log 200 60 $BENCH --config=configs/gpt2_small.py --steps 8 --warmup 2 \
  --config.train.grad_accum_steps="$ACCUM" --config.train.accum_impl=scan --label=gpt2_scan
# Llama 1.1B (TinyLlama's shape), seq 2048, batch 4, LoRA r16 on every projection over bf16 weights.
step llama_lora_r16 ours.log 180 60 $BENCH --config=configs/llama_1b.py --steps 10 --warmup 2 $LORA \
  --label=llama_lora_r16
if ! ok llama_lora_r16; then # cuDNN with grouped-query heads failed? measure with XLA attention instead
  step llama_lora_r16_xla ours.log 150 60 $BENCH --config=configs/llama_1b.py --steps 10 --warmup 2 $LORA \
    --config.model.attention_impl=xla --label=llama_lora_r16_xla
fi

# Peers at the same shapes (one optimizer step = one batch: compare tokens/s, not step_ms, with ours).
step nanogpt peers.log 180 60 python3 -m tools.peers.nanogpt $GPT2_SHAPE --steps 20 --warmup 5
step flax_gpt2 peers.log 120 45 python3 -m tools.peers.flax_gpt2 $GPT2_SHAPE --steps 20 --warmup 5
step hf_gpt2 peers.log 90 30 python3 -m tools.peers.hf_gpt2 $GPT2_SHAPE --steps 20 --warmup 5
step hf_llama_lora_r16 peers.log 150 45 python3 -m tools.peers.hf_llama $LLAMA_SHAPE --lora-rank 16 \
  --steps 10 --warmup 3

# Extras, on what is left: ours without accumulation, and the Llama full fine-tunes (float32 weights).
step gpt2_accum1 extras.log 150 45 $BENCH --config=configs/gpt2_small.py --steps 20 --warmup 3 \
  --label=gpt2_accum1
step llama_full extras.log 180 60 $BENCH --config=configs/llama_1b.py --steps 10 --warmup 2 --label=llama_full
step hf_llama_full extras.log 150 60 python3 -m tools.peers.hf_llama $LLAMA_SHAPE --steps 10 --warmup 3

python3 - "$RES" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'label':20} {'tok/s':>9} {'tok/step':>8} {'step_ms':>8} {'TFLOP/s':>7} {'MFU':>6} {'mem_GB':>6} "
      f"{'comp_s':>6} {'wall':>4}  note")
def cell(x, spec):
    width = int(spec.split(".")[0].rstrip("df"))
    return format(x, spec) if isinstance(x, (int, float)) else "-".rjust(width)
for r in rows:
    note = r.get("error") or r.get("skipped") or r.get("bare_note") or r.get("memory_kind", "")
    print(f"{r['label']:20} {cell(r.get('tokens_per_second'), '9.0f')} {cell(r.get('tokens_per_step'), '8d')} "
          f"{cell(r.get('step_ms'), '8.1f')} {cell(r.get('model_tflops_per_second'), '7.1f')} "
          f"{cell(r.get('mfu'), '6.3f')} {cell(r.get('peak_memory_gb'), '6.1f')} "
          f"{cell(r.get('compile_s'), '6.1f')} {cell(r.get('wall_s'), '4d')}  {note}")
EOF
echo "total ${SECONDS}s of budget ${BUDGET}s; details in $OUT/results.ndjson and $OUT/*.log"
