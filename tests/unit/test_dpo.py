"""DPO's loss and gradients equal TRL's formulas on the same tiny model and pairs.

TRL 1.16 installs here but its ``DPOTrainer`` computes the loss inside ``_compute_loss`` of a full trainer
(accelerate, a tokenizer, a dataset); the reference below is TRL's formulas (``trl/trainer/dpo_trainer.py``,
the ``sigmoid``, ``hinge`` and ``ipo`` branches) written out in PyTorch on the same Hugging Face model that
our model imports, so the comparison covers the model's log-probabilities as well as the loss. For
``label_smoothing > 0`` the reference is conservative DPO as TRL's earlier releases wrote it (1.16's
``sigmoid`` ignores the setting)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_helpers import random_hf_model

from codex_jax.compute.preference import DPO, completion_logps, dpo_objective, reference_logps
from codex_jax.interop import hf_weights as hf
from codex_jax.models import lora

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
F = torch.nn.functional

VOCAB, B, L = 64, 3, 10  # rows of L + 1 tokens: a 4-token prompt, then the completion (then padding)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_llama")
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch_model = random_hf_model(config, folder)
    model, params = hf.import_checkpoint(folder)
    return torch_model, model, params


def _pairs():
    rng = np.random.default_rng(0)
    batch = {}
    for name, lengths in (("chosen", (3, 6, 5)), ("rejected", (5, 2, 6))):
        tokens = rng.integers(3, VOCAB, (B, L + 1)).astype(np.int32)
        weights = np.zeros((B, L), np.float32)
        for row, n in enumerate(lengths):
            tokens[row, 4 + n :] = 0  # padding after the completion
            weights[row, 3 : 3 + n] = 1.0  # targets 4 .. 4+n-1 are the completion's tokens
        batch[name], batch[f"{name}_weights"] = tokens, weights
    batch["rejected"][:, :4] = batch["chosen"][:, :4]  # the same prompt
    batch["ref_chosen"] = rng.normal(-40.0, 3.0, B).astype(np.float32)
    batch["ref_rejected"] = rng.normal(-40.0, 3.0, B).astype(np.float32)
    return batch


def _trl_reference(torch_model, batch, dpo: DPO):
    """TRL's DPO loss of the batch, and its gradients by parameter name."""
    torch_model.zero_grad()
    logps, counts = {}, {}
    for name in ("chosen", "rejected"):
        tokens = torch.tensor(batch[name], dtype=torch.long)
        mask = torch.tensor(batch[f"{name}_weights"])
        logits = torch_model(input_ids=tokens[:, :-1]).logits.float()
        per_token = torch.gather(F.log_softmax(logits, -1), 2, tokens[:, 1:, None])[..., 0]
        logps[name], counts[name] = (per_token * mask).sum(1), mask.sum(1)
    chosen_ratio = logps["chosen"] - torch.tensor(batch["ref_chosen"])
    rejected_ratio = logps["rejected"] - torch.tensor(batch["ref_rejected"])
    delta, beta, e = chosen_ratio - rejected_ratio, dpo.beta, dpo.label_smoothing
    if dpo.loss == "sigmoid":
        losses = -(1 - e) * F.logsigmoid(beta * delta) - e * F.logsigmoid(-beta * delta)
    elif dpo.loss == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:  # ipo
        ipo_delta = chosen_ratio / counts["chosen"].clamp(min=1.0) - rejected_ratio / counts[
            "rejected"
        ].clamp(min=1.0)
        losses = (ipo_delta - 1 / (2 * beta)) ** 2
    loss = losses.mean()
    loss.backward()
    grads = {n: p.grad.detach().numpy() for n, p in torch_model.named_parameters()}
    rewards = (beta * chosen_ratio).detach().numpy(), (beta * rejected_ratio).detach().numpy()
    return float(loss.detach()), grads, rewards


@pytest.mark.parametrize(
    "dpo",
    [DPO("sigmoid", 0.1), DPO("sigmoid", 0.5, 0.1), DPO("hinge", 0.05), DPO("ipo", 0.1)],
    ids=["sigmoid", "sigmoid-smoothed", "hinge", "ipo"],
)
def test_dpo_loss_and_gradients_equal_trl(models, dpo):
    torch_model, model, params = models
    batch = _pairs()
    theirs, their_grads, (their_chosen, their_rejected) = _trl_reference(torch_model, batch, dpo)
    jbatch = jax.tree.map(jnp.asarray, batch)

    def objective(p):
        return dpo_objective(p, None, jbatch, model=model, dpo=dpo)

    (ours, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    assert float(ours) == pytest.approx(theirs, abs=1e-5)
    assert float(metrics["rewards/chosen"]) == pytest.approx(float(their_chosen.mean()), abs=1e-5)
    assert float(metrics["rewards/margins"]) == pytest.approx(
        float((their_chosen - their_rejected).mean()), abs=1e-5
    )
    assert float(metrics["rewards/accuracies"]) == pytest.approx(
        float((their_chosen > their_rejected).mean())
    )
    compared = 0
    for hf_name, paths, transpose in hf.weight_table(model.cfg):
        (path,) = paths
        ours_grad = np.asarray(_get(grads, path))
        theirs_grad = their_grads[hf_name].T if transpose else their_grads[hf_name]
        np.testing.assert_allclose(ours_grad, theirs_grad, atol=1e-5, err_msg=hf_name)
        compared += 1
    assert compared == len(their_grads)
    assert max(float(np.abs(g).max()) for g in their_grads.values()) > 1e-3  # the gradients are not all ~0


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_a_lora_runs_reference_is_its_base_with_adapters_off(models):
    _, model, params = models
    batch = jax.tree.map(jnp.asarray, {k: v for k, v in _pairs().items() if not k.startswith("ref_")})
    adapters = lora.init_lora(params, rank=2, targets=".*q_proj.*", rng=jax.random.key(0))
    adapters = jax.tree.map(lambda x: x + 0.05, adapters)  # trained: the policy moved off the base
    ref_chosen, ref_rejected = reference_logps(model, params, batch)
    base_chosen, _ = completion_logps(model, {"params": params}, batch["chosen"], batch["chosen_weights"])
    policy_chosen, _ = completion_logps(
        model, {"params": params, "lora": adapters}, batch["chosen"], batch["chosen_weights"]
    )
    np.testing.assert_array_equal(np.asarray(ref_chosen), np.asarray(base_chosen))
    assert np.abs(np.asarray(policy_chosen) - np.asarray(base_chosen)).max() > 1e-3
    loss, metrics = dpo_objective(adapters, params, batch, model=model, dpo=DPO())
    assert np.isfinite(float(loss)) and float(metrics["rewards/chosen"]) != 0.0
    assert ref_rejected.shape == (B,)
