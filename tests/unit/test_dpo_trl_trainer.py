"""DPO's loss and gradients equal what TRL's own ``DPOTrainer`` computes: one trainer step at learning rate 0
on the same tiny Hugging Face Llama (imported into codex_jax), the same tokenizer and the same text pairs,
with a reference model that differs from the policy, for each loss type (TRL 1.16)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sft_helpers import chat_tokenizer_folder

from codex_jax.compute.preference import DPO, completion_logps, dpo_objective
from codex_jax.data.preference import read_pairs
from codex_jax.interop import hf_weights as hf
from codex_jax.tokenizers.hf import HFTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

PAIRS = [  # each prompt ends on a token boundary (TRL tokenizes prompt + completion as one text)
    {"prompt": "def f(x):\n    return", "chosen": " x + 1\n", "rejected": " x - 1\n"},
    {"prompt": "def g(a, b):", "chosen": "\n    return a * b\n", "rejected": "\n    return a\n"},
    {"prompt": "# add three", "chosen": "\ndef h(x):\n    return x + 3\n", "rejected": "\npass\n"},
    {"prompt": "x =", "chosen": " [1, 2, 3]\n", "rejected": " None\n"},
]


def _llama(folder, seed: int, tokenizer: bool = True):
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer:
        chat_tokenizer_folder(folder)
    return transformers.LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_dpo")
    policy, ref = _llama(root / "policy", 0), _llama(root / "ref", 1, tokenizer=False)
    pairs_file = root / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return root, policy, ref, pairs_file


def _trl_step(root, policy, ref, loss_type: str, beta: float):
    """TRL's logged loss of one step on all the pairs, and the gradients it computed, by parameter name."""
    grads = {}

    class Grads(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.update({n: p.grad.detach().clone().numpy() for n, p in model.named_parameters()})

    config = trl.DPOConfig(
        output_dir=str(root / f"out_{loss_type}"),
        per_device_train_batch_size=len(PAIRS),
        learning_rate=0.0,
        beta=beta,
        loss_type=[loss_type],
        max_steps=1,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        disable_tqdm=True,
        max_grad_norm=0.0,  # no clipping: the raw gradients
    )
    trainer = trl.DPOTrainer(
        model=policy,
        ref_model=ref,
        args=config,
        train_dataset=datasets.Dataset.from_list(PAIRS),
        processing_class=transformers.AutoTokenizer.from_pretrained(root / "policy"),
        callbacks=[Grads()],
    )
    trainer.train()
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return float(loss), grads


@pytest.mark.parametrize(
    "dpo", [DPO("sigmoid", 0.1), DPO("ipo", 0.1), DPO("hinge", 0.5)], ids=lambda d: d.loss
)
def test_dpo_loss_and_gradients_equal_trls_dpo_trainer(setup, dpo):
    root, policy, ref, pairs_file = setup
    theirs, their_grads = _trl_step(root, policy, ref, dpo.loss, dpo.beta)
    model, params = hf.import_checkpoint(root / "policy")
    _, ref_params = hf.import_checkpoint(root / "ref")
    pairs = read_pairs(str(pairs_file), HFTokenizer.load(root / "policy"), seq_len=40)
    assert len(pairs) == len(PAIRS)
    batch = {k: jnp.asarray(v) for k, v in pairs.arrays.items()}
    for side in ("chosen", "rejected"):
        batch[f"ref_{side}"], _ = completion_logps(
            model, {"params": ref_params}, batch[side], batch[f"{side}_weights"]
        )

    def objective(p):
        return dpo_objective(p, None, batch, model=model, dpo=dpo)

    (ours, _), grads = jax.value_and_grad(objective, has_aux=True)(params)
    assert float(ours) == pytest.approx(theirs, abs=1e-5)
    assert (
        abs(float(ours) - {"sigmoid": np.log(2), "ipo": 25.0, "hinge": 1.0}[dpo.loss]) > 1e-3
    )  # ref != policy
    compared = 0
    for hf_name, paths, transpose in hf.weight_table(model.cfg):
        (path,) = paths
        ours_grad = np.asarray(_get(grads, path))
        theirs_grad = their_grads[hf_name].T if transpose else their_grads[hf_name]
        np.testing.assert_allclose(ours_grad, theirs_grad, atol=1e-5, err_msg=hf_name)
        compared += 1
    assert compared == len(their_grads)
    assert max(float(np.abs(g).max()) for g in their_grads.values()) > 1e-3


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree
