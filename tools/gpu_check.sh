#!/usr/bin/env bash
# One GPU benchmark session (issue 4): our train step against same-run peers, most important first.
#
# Prepare once on the dev machine (.gpu/ is git-ignored and must be carried):
#   mkdir -p .gpu && cp /work/shared/bench/peers.py .gpu/ && bash /work/shared/bench/wheels.sh .gpu/whl
# Run on the GPU machine from the repo root (device tool):
#   command: bash tools/gpu_check.sh     carry: [".gpu"]     timeout_s: 480
#
# Writes under $OUT: results.ndjson (one JSON line per measurement, "label" first), env.txt,
# summary.txt and one log per part (gpt2.log, peers.log, llama.log, variants.log); prints the table.
# BUDGET (seconds, default 420) bounds the whole script: each part's timeout is clamped to what is
# left, and a part that would get less than its minimum is skipped (recorded as skipped).
# Expected: setup ~15 s, A ~90 s, C ~120 s, D ~140 s; B and E run on what is left.
set -u
OUT=${OUT:-/tmp/gpu_check_out}
BUDGET=${BUDGET:-420}
mkdir -p "$OUT"
RES=$OUT/results.ndjson
: >"$RES"
: >"$OUT/env.txt"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# Persistent compilation cache: later runs reuse executables and XLA's per-fusion autotuning results
# (jax_persistent_cache_enable_xla_caches defaults to the autotune cache). Cold compile: part A.
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl \
  || echo "wheel install failed" >>"$OUT/env.txt"
export PYTHONPATH=/tmp/site:$PWD

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
    --format=csv 2>&1
  timeout 60 python3 -c 'import jax, flax, optax, torch, grain, ml_collections
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "torch", torch.__version__, "grain", grain.__version__)
print(jax.devices(), jax.devices()[0].device_kind)' 2>&1 | grep -v '^WARNING'
} >>"$OUT/env.txt"

# step LABEL LOG MAX_S MIN_S CMD...: runs CMD under a timeout clamped to the budget left; the JSON
# lines it prints go to results.ndjson tagged with LABEL, rc and wall_s; stderr goes to $OUT/LOG.
step() {
  local label=$1 log=$2 max=$3 min=$4
  shift 4
  local left=$((BUDGET - SECONDS))
  local t=$((left < max ? left : max))
  if ((t < min)); then
    echo "{\"label\": \"$label\", \"skipped\": \"budget: ${left}s left\"}" >>"$RES"
    return
  fi
  echo "=== $label at ${SECONDS}s, timeout ${t}s: $*" >>"$OUT/$log"
  local t0=$SECONDS rc=0
  timeout -k 5 "$t" "$@" >/tmp/step.out 2>/tmp/step.err || rc=$?
  cat /tmp/step.err >>"$OUT/$log"
  python3 - "$label" "$rc" "$((SECONDS - t0))" /tmp/step.out /tmp/step.err >>"$RES" <<'EOF'
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
PEERS="python3 .gpu/peers.py"
LLAMA_SHAPE="--layers 22 --d 2048 --heads 32 --kv-heads 4 --ffn 5632 --vocab 32000 --seq 2048 --batch 4"

# A. Ours, GPT-2 124M, seq 1024, batch 32, bf16, cuDNN attention; also the bare jitted step (overhead).
step gpt2_b32 gpt2.log 200 60 $BENCH --config=configs/gpt2_small.py --steps 20 --warmup 3 \
  --compare_bare=true --label=gpt2_b32

# C. Same-run references for A (notes: nanoGPT+compile 415k tok/s, plain Flax + cuDNN 466k).
step nanogpt_b32 peers.log 180 60 $PEERS nanogpt --batch 32 --steps 20 --warmup 5
step jax_ref_cudnn_b32 peers.log 120 45 $PEERS jax_ref_cudnn --batch 32 --steps 20 --warmup 5

# D. Llama 1.1B (TinyLlama shape), seq 2048, batch 4: ours full fine-tune (notes: transformers full
#    fine-tune 45.4k tok/s, 35.9 GB), then the transformers + PEFT LoRA r16 reference (43.9k, 21.7 GB).
step llama_b4 llama.log 180 60 $BENCH --config=configs/llama_1b.py --steps 10 --warmup 2 \
  --label=llama_b4
if ! ok llama_b4; then  # cuDNN with grouped-query heads failed? measure with XLA attention instead
  step llama_b4_xla llama.log 150 60 $BENCH --config=configs/llama_1b.py --steps 10 --warmup 2 \
    --config.model.attention_impl=xla --label=llama_b4_xla
fi
step hf_llama_lora peers.log 150 45 $PEERS hf_llama_lora $LLAMA_SHAPE --steps 10 --warmup 3
# Ours with LoRA r16 on all projections, bf16 frozen weights (issue 6: enable once lora.* exists):
# step llama_lora_r16 llama.log 180 60 $BENCH --config=configs/llama_1b.py --steps 10 --warmup 2 \
#   --config.lora.rank=16 --config.model.param_dtype=bfloat16 --label=llama_lora_r16

# B. Variants of A worth trying for speed (compile cache warm from A).
step gpt2_b64 variants.log 120 45 $BENCH --config=configs/gpt2_small.py --steps 10 --warmup 2 \
  --config.data.batch_size=64 --label=gpt2_b64
step gpt2_b32_remat_dots variants.log 120 45 $BENCH --config=configs/gpt2_small.py --steps 10 \
  --warmup 2 --config.model.remat=dots_saveable --label=gpt2_b32_remat_dots
# cuBLAS for every matmul instead of XLA's Triton GEMM fusions (an unknown flag just fails this step).
XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" step gpt2_b32_no_triton_gemm variants.log 120 45 \
  $BENCH --config=configs/gpt2_small.py --steps 10 --warmup 2 --label=gpt2_b32_no_triton_gemm
step gpt2_b32_xla_attn variants.log 120 45 $BENCH --config=configs/gpt2_small.py --steps 10 \
  --warmup 2 --config.model.attention_impl=xla --label=gpt2_b32_xla_attn

# E. Cheap extras: the bf16 matmul ceiling, the data pipeline (16 cores), the transformers full FT.
step matmul peers.log 45 20 $PEERS matmul
step data_tiny_seq1024 variants.log 60 20 $BENCH --config=configs/tiny.py --what=data --steps 200 \
  --config.data.seq_len=1024 --config.data.batch_size=32 --config.data.max_files=200 \
  --label=data_tiny_seq1024
step hf_llama_full peers.log 150 60 $PEERS hf_llama_full $LLAMA_SHAPE --steps 10 --warmup 3

python3 - "$RES" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
PEAK = 989e12  # H200 SXM dense bf16 (codex_jax.metrics.perf); peers' MFU uses the same
rows = [json.loads(line) for line in open(sys.argv[1])]
head = f"{'label':24} {'tok/s':>9} {'step_ms':>8} {'TFLOP/s':>7} {'MFU':>6} {'mem_GB':>6} " \
       f"{'comp_s':>6} {'ovh':>5} {'wall':>4}  note"
print(head)
for r in rows:
    tps = r.get("tokens_per_second", r.get("tokens_per_s"))
    tfl = r.get("model_tflops_per_second", r.get("model_tflops"))
    mfu = r.get("mfu") or (tfl * 1e12 / PEAK if tfl else None)
    mem = r.get("peak_memory_gb", r.get("peak_mem_gb"))
    comp = r.get("compile_s", r.get("warmup_s"))
    note = r.get("error") or r.get("skipped") or r.get("bare_note") or ""
    if "tflops_median" in r:
        note = f"bf16 matmul {r['tflops_median']} TFLOP/s"
    if r.get("bare_step_ms"):
        note = f"bare step {r['bare_step_ms']:.1f} ms"
    def f(x, spec):
        width = int(spec.split(".")[0].rstrip("df"))
        return format(x, spec) if isinstance(x, (int, float)) else "-".rjust(width)
    print(f"{r['label']:24} {f(tps, '9.0f')} {f(r.get('step_ms'), '8.1f')} {f(tfl, '7.1f')} "
          f"{f(mfu, '6.3f')} {f(mem, '6.1f')} {f(comp, '6.1f')} {f(r.get('overhead_ratio'), '5.3f')} "
          f"{f(r.get('wall_s'), '4d')}  {note}")
EOF
echo "total ${SECONDS}s of budget ${BUDGET}s; details in \$OUT/results.ndjson and \$OUT/*.log"
