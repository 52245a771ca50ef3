"""LoRA: the adapter tree, merge/unmerge, adapter-only training under every runner, PEFT export
and import against transformers + peft, and a real fine-tune through the CLI (resume, export)."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_llama

from codex_jax.compute.optim import OptimizerSpec, make_optimizer
from codex_jax.compute.parallel import JitRunner, PmapRunner, make_mesh
from codex_jax.compute.state import create_train_state
from codex_jax.config.schema import default_config
from codex_jax.errors import UserError
from codex_jax.evaluate import evaluate
from codex_jax.interop import peft
from codex_jax.models import lora
from codex_jax.models.transformer import Transformer, init_params

LLAMA = tiny_llama(lora_alpha=8.0)
GPT2 = tiny_llama(family="gpt2", num_kv_heads=4, tie_embeddings=True, lora_alpha=8.0)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 12)), jnp.int32)


def _trained_like(tree, seed=1):
    """``tree`` with random (non-zero) ``lora_b``, as after some training."""
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(tree))))
    return jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape) * 0.05, tree)


def _logits(cfg, params, adapters=None):
    variables = {"params": params} if adapters is None else {"params": params, "lora": adapters}
    return np.asarray(_apply(cfg)(variables, TOKENS))


@functools.cache
def _apply(cfg):
    return jax.jit(Transformer(cfg).apply)


# ------------------------------------------------------------------------------------ the tree


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_fresh_adapter_is_exact_and_counted(cfg):
    params = init_params(cfg, jax.random.key(0))
    adapters = lora.init_lora(params, 4, lora.DEFAULT_TARGETS, jax.random.key(1))
    kernels = {p: params_at(params, p)["kernel"].shape for p in lora.kernel_paths(params)}
    assert set(lora.modules_of(adapters)) == set(kernels)  # every projection, nothing else
    assert lora.count(adapters) == sum(4 * (i + o) for i, o in kernels.values())
    # B = 0: the function is the base's (up to XLA compiling two different programs)
    np.testing.assert_allclose(_logits(cfg, params, adapters), _logits(cfg, params), atol=1e-6)


def params_at(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def test_targets_regex_and_errors():
    params = init_params(LLAMA, jax.random.key(0))
    chosen = lora.target_paths(params, r"layers_0/attn/(q|v)_proj")
    assert chosen == ["layers_0/attn/q_proj", "layers_0/attn/v_proj"]
    with pytest.raises(UserError, match="matches none of the kernels"):
        lora.target_paths(params, "q_proj")  # a full match is required
    with pytest.raises(UserError, match="not a regex"):
        lora.target_paths(params, "(")


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_merge_matches_unmerged_and_unmerge_reverses(cfg):
    params = init_params(cfg, jax.random.key(0))
    adapters = _trained_like(lora.init_lora(params, 4, lora.DEFAULT_TARGETS, jax.random.key(1)))
    merged = lora.merge(params, adapters, cfg.lora_alpha)
    np.testing.assert_allclose(_logits(cfg, merged), _logits(cfg, params, adapters), atol=1e-5)
    assert np.abs(_logits(cfg, merged) - _logits(cfg, params)).max() > 1e-3  # adapters matter
    back = lora.unmerge(merged, adapters, cfg.lora_alpha)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), back, params)


# ------------------------------------------------------------------------------- training step


def _train_cfg(accum=1):
    c = default_config().train
    c.steps, c.warmup_steps, c.learning_rate, c.grad_accum_steps = 10, 2, 3e-2, accum
    return OptimizerSpec.from_mapping(c)


def _batches(n, batch, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, LLAMA.vocab_size, (batch, 17), dtype=np.int32) for _ in range(n)]


def _run_lora(runner, tx, batches, base, dtype=None):
    frozen = base if dtype is None else jax.tree.map(lambda x: x.astype(dtype), base)
    runner.set_frozen(frozen)
    init = lora.init_lora(base, 4, lora.DEFAULT_TARGETS, jax.random.key(1))
    state = runner.init_state(lambda: create_train_state(init, tx, 0))
    losses = []
    for b in batches:
        state, m = runner.train_step(state, runner.put_batch(b))
        losses.append(float(m["loss"]))
    losses.append(evaluate(runner, runner.params(state), batches[:1])["loss"])  # with the base
    return losses, jax.device_get(runner.state_for_save(state))


def test_only_adapters_train_and_hold_optimizer_state():
    model, tx = Transformer(LLAMA), make_optimizer(_train_cfg())
    base = init_params(LLAMA, jax.random.key(0))
    before = jax.tree.map(np.array, base)
    runner = JitRunner(model, tx, make_mesh(num_devices=1))
    losses, state = _run_lora(runner, tx, _batches(2, 8) * 3, base)
    assert losses[-1] < losses[0]
    # the frozen base is bit-identical after training (and was not donated)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(runner.frozen), before)
    # optimizer moments exist for the adapters only: no leaf has a frozen weight's shape
    adapter_shapes = sorted(x.shape for x in jax.tree.leaves(state.params))
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert sorted(x.shape for x in moments) == sorted(adapter_shapes * 2)  # mu and nu
    assert sum(x.size for x in moments) == 2 * lora.count(state.params)
    assert not np.any(np.asarray(state.params["layers_1"]["mlp"]["down_proj"]["lora_b"]) == 0)


@pytest.fixture(scope="module")
def reference():
    """(losses, final state) of 4 LoRA steps on one device."""
    model, tx = Transformer(LLAMA), make_optimizer(_train_cfg())
    base = init_params(LLAMA, jax.random.key(0))
    return _run_lora(JitRunner(model, tx, make_mesh(num_devices=1)), tx, _batches(2, 8) * 2, base)


@pytest.mark.parametrize("kind", ["jit8", "fsdp1x8", "pmap8"])
def test_lora_modes_match_single_device(kind, reference):
    model, tx = Transformer(LLAMA), make_optimizer(_train_cfg())
    base = init_params(LLAMA, jax.random.key(0))
    batches = _batches(2, 8) * 2
    ref_losses, ref = reference
    runner = {
        "jit8": lambda: JitRunner(model, tx, make_mesh()),
        "fsdp1x8": lambda: JitRunner(model, tx, make_mesh(1, 8), fsdp_min_size=256),
        "pmap8": lambda: PmapRunner(model, tx, 8),
    }[kind]()
    losses, state = _run_lora(runner, tx, batches, base)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
        state.params,
        ref.params,
    )
    if kind == "fsdp1x8":  # the frozen base is FSDP-sharded like params would be
        spec = runner.frozen["layers_0"]["mlp"]["up_proj"]["kernel"].sharding.spec
        assert "fsdp" in tuple(spec)
    merged = runner.model_params(state if kind != "pmap8" else runner.put_state(state))
    np.testing.assert_allclose(
        _logits(LLAMA, jax.device_get(merged)), _logits(LLAMA, base, ref.params), atol=1e-4
    )


def test_lora_accumulation_matches_big_batch():
    model = Transformer(LLAMA)
    base = init_params(LLAMA, jax.random.key(0))
    big = _batches(3, 8)
    micro = [b[i : i + 4] for b in big for i in (0, 4)]
    tx1, tx2 = make_optimizer(_train_cfg(1)), make_optimizer(_train_cfg(2))
    _, s1 = _run_lora(JitRunner(model, tx1, make_mesh(num_devices=1)), tx1, big, base)
    _, s2 = _run_lora(JitRunner(model, tx2, make_mesh(num_devices=1)), tx2, micro, base)
    assert int(s1.step) == int(s2.step) == 3
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s1.params, s2.params)


def test_bfloat16_base_trains_float32_adapters(reference):
    model, tx = Transformer(LLAMA), make_optimizer(_train_cfg())
    base = init_params(LLAMA, jax.random.key(0))
    batches = _batches(2, 8) * 2
    runner = JitRunner(model, tx, make_mesh(num_devices=1))
    losses16, state = _run_lora(runner, tx, batches, base, dtype=jnp.bfloat16)
    losses32, _ = reference
    assert {x.dtype for x in jax.tree.leaves(runner.frozen)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(losses16, losses32, rtol=2e-2)


# ----------------------------------------------------------------------------- PEFT (torch CPU)


def _hf_base(kind, folder):
    """A tiny random transformers model saved as safetensors (norms and biases perturbed)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if kind == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=97)
    else:
        config = transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
            vocab_size=97,
            tie_word_embeddings=False,
        )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _peft_logits(base_dir, adapter_dir):
    import torch
    import transformers
    from peft import PeftModel

    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return model(torch.tensor(np.asarray(TOKENS, np.int64))).logits.numpy()


@pytest.mark.parametrize(
    "kind,targets",
    [
        ("llama", lora.DEFAULT_TARGETS),
        ("gpt2", lora.DEFAULT_TARGETS),
        ("gpt2", r".*(q_proj|v_proj|fc_out)"),  # a partial fused c_attn: q and v only
    ],
)
def test_peft_export_matches_peft_and_imports_back(kind, targets, tmp_path):
    pytest.importorskip("peft")
    from codex_jax.interop import hf_weights as hf

    model, params = hf.import_checkpoint(_hf_base(kind, tmp_path / "base"))
    cfg = model.cfg.replace(lora_alpha=8.0)
    adapters = _trained_like(lora.init_lora(params, 4, targets, jax.random.key(1)))
    ours = _logits(cfg, params, adapters)
    peft.export_peft(cfg, adapters, 8.0, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / peft.PEFT_CONFIG).read_text())
    assert config["r"] == 4 and config["fan_in_fan_out"] == (kind == "gpt2")
    np.testing.assert_allclose(_peft_logits(tmp_path / "base", tmp_path / "adapter"), ours, atol=1e-4)
    # back, with another alpha: the imported tree computes the same function
    back = peft.import_peft(tmp_path / "adapter", cfg, alpha=2.0)
    np.testing.assert_allclose(_logits(cfg.replace(lora_alpha=2.0), params, back), ours, atol=1e-5)
    if kind == "llama":
        assert lora.count(back) == lora.count(adapters)


def test_peft_names_follow_peft_layout(tmp_path):
    from safetensors.numpy import load_file

    params = init_params(LLAMA, jax.random.key(0))
    adapters = lora.init_lora(params, 4, r".*q_proj", jax.random.key(1))
    peft.export_peft(LLAMA, adapters, 8.0, tmp_path)
    tensors = load_file(str(tmp_path / peft.PEFT_WEIGHTS))
    name = "base_model.model.model.layers.0.self_attn.q_proj"
    assert tensors[f"{name}.lora_A.weight"].shape == (4, 32)
    assert tensors[f"{name}.lora_B.weight"].shape == (32, 4)
    assert len(tensors) == 4


# ------------------------------------------------------------------------------ the CLI, for real


LORA = [
    "--config.lora.rank=4",
    "--config.lora.dropout=0.1",
    "--config.train.learning_rate=0.01",
    "--config.train.steps=12",
    "--config.checkpoint.every_steps=6",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
    "--config.generate.max_new_tokens=0",
    "--config.train.grad_accum_steps=2",
    "--config.lora.base_dtype=bfloat16",
]


def test_workdir_init_from_and_peft_init_from(base_run, tmp_path):
    """In process: 'workdir:' starts a full fine-tune from the base run's params and tokenizer;
    'lora.init_from=peft:' starts the adapters from a PEFT folder."""
    import orbax.checkpoint as ocp

    from codex_jax.setup import adapters
    from codex_jax.train.loop import build_trainer, init_or_restore

    cfg = _tiny_cfg(f"workdir:{base_run}")
    t = build_trainer(cfg, tmp_path / "full")
    state = init_or_restore(t, None)
    saved = ocp.StandardCheckpointer().restore((base_run / "checkpoints/20/params").absolute())
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), saved)
    assert (
        t.data.tokenizer.checksum
        == json.loads((base_run / "data_manifest.json").read_text())["tokenizer"]["sha256"]
    )
    t.checkpointer.close()

    adapter = lora.init_lora(saved, 2, r".*(q|v)_proj", jax.random.key(3))
    peft.export_peft(t.model.cfg, _trained_like(adapter), 16.0, tmp_path / "adapter")
    cfg.lora.rank, cfg.lora.init_from = 4, f"peft:{tmp_path / 'adapter'}"
    started = adapters.init_adapters(cfg, t.model.cfg)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), started, _trained_like(adapter))


def _tiny_cfg(init_from):
    from codex_jax.configs import tiny

    cfg = tiny.get_config()
    cfg.model.init_from, cfg.logging.writers = init_from, "ndjson"
    return cfg
