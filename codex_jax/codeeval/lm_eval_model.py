"""A ``codex_jax`` model for EleutherAI's lm-evaluation-harness (``pip install 'codex-jax[lm-eval]'``).

lm-eval finds models only in its own registry (it has no plugin entry point), so run the harness through
this module, which registers ``codex_jax`` and then hands the command line to lm-eval's own CLI:

    python -m codex_jax.codeeval.lm_eval_model run --model codex_jax --model_args workdir=RUN \\
        --tasks my_task --include_path tasks/ --batch_size 8

``model_args``: ``workdir`` (a run or a ``format=params`` export), ``step`` (default: the run's
``eval.step``), ``max_gen_toks`` (default 256). Requests are scored in batches: ``loglikelihood`` sums
the log-probabilities of the continuation's tokens after the context (left-truncated to the model's
context), ``loglikelihood_rolling`` scores disjoint windows of the whole text (lm-eval's rolling
windows, the EOS id as the first token), ``generate_until`` generates with the KV cache and cuts at
the ``until`` strings and EOS.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.__main__ import cli_evaluate
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from codex_jax.codeeval.generation import bucket_batches, generate_texts
from codex_jax.compute.loss import cross_entropy
from codex_jax.config.runspec import run_config, set_key
from codex_jax.data.pipeline import load_run_tokenizer
from codex_jax.setup.weights import load_checkpoint, weight_only

BUCKET = 32  # sequences are padded to a multiple of this many tokens (one compilation per length)


@functools.partial(jax.jit, static_argnames=("model",))
def token_logprobs(model, variables, tokens_BxT):
    """``(log p(tokens[:, t+1] | tokens[:, :t+1]), whether it is the argmax)``, each ``[B, T-1]``."""
    loss_BxT, correct_BxT = cross_entropy(model.apply(variables, tokens_BxT[:, :-1]), tokens_BxT[:, 1:])
    return -loss_BxT, correct_BxT


@register_model("codex_jax")
class CodexJaxLM(LM):
    """A codex_jax checkpoint as an lm-eval ``LM``; ``CodexJaxLM(model=, params=, tokenizer=)``
    wraps one already in memory."""

    def __init__(
        self,
        workdir=None,
        step=None,
        batch_size=8,
        max_gen_toks=256,
        model=None,
        params=None,
        tokenizer=None,
        **_,  # lm-eval's device, max_batch_size...: jax places the arrays on this host's devices
    ):
        super().__init__()
        if model is None:
            if workdir is None:
                raise ValueError("codex_jax: --model_args workdir=RUN is required")
            cfg = run_config(Path(workdir))
            if step is not None:
                set_key(cfg, "eval.step", str(step))
            restored = load_checkpoint(cfg, Path(workdir))
            model, params = restored.model, weight_only(cfg, restored.params)
            tokenizer, _ = load_run_tokenizer(cfg, Path(workdir))
        self.model, self.tokenizer = model, tokenizer
        self.variables = params if "params" in params else {"params": params}
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # 'auto': 8
        self.max_gen_toks = int(max_gen_toks)
        self.max_length = model.cfg.max_seq_len
        self.prefix_id = tokenizer.eos_id if tokenizer.eos_id >= 0 else tokenizer.bos_id

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids: the continuation is what encoding both adds to the context's
        ids (so a token spanning the boundary is not split); an empty context is the EOS id."""
        if not context:
            return [self.prefix_id], list(self.tokenizer.encode(continuation))
        context_ids = list(self.tokenizer.encode(context))
        whole = list(self.tokenizer.encode(context + continuation))
        if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
            return context_ids, whole[len(context_ids) :]
        return context_ids, list(self.tokenizer.encode(continuation))

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """``(sum of the continuation's log-probabilities, all of them argmax)`` per pair, the context
        left-truncated to the model's positions."""
        rows = [(context + continuation)[-(self.max_length + 1) :] for context, continuation in pairs]
        lengths = [len(r) for r in rows]
        out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        for T, batch in bucket_batches(lengths, self.batch_size, BUCKET, self.max_length + 1):
            tokens_BxT = np.zeros((self.batch_size, T), np.int32)  # right padding: causal, never seen
            for i, row in enumerate(batch):
                tokens_BxT[i, : lengths[row]] = rows[row]
            logp_BxT, hit_BxT = map(np.asarray, token_logprobs(self.model, self.variables, tokens_BxT))
            for i, row in enumerate(batch):
                end = lengths[row] - 1
                start = end - min(len(pairs[row][1]), end)
                total = logp_BxT[i, start:end].astype(np.float64).sum()  # summed in float64
                out[row] = (float(total), bool(hit_BxT[i, start:end].all()))
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self.score([self.encode_pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        windows, owners = [], []
        for number, request in enumerate(requests):
            ids = list(self.tokenizer.encode(request.args[0]))
            for window in lm_utils.get_rolling_token_windows(ids, self.prefix_id, self.max_length, 1):
                windows.append(lm_utils.make_disjoint_window(window))
                owners.append(number)
        totals = [0.0] * len(requests)
        for owner, (logp, _) in zip(owners, self.score(windows), strict=True):
            totals[owner] += logp
        return totals

    def generate_until(self, requests) -> list[str]:
        groups: dict[tuple, list[int]] = {}
        for number, request in enumerate(requests):
            kwargs = dict(request.args[1])
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            max_new = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            groups.setdefault((until, max_new, temperature), []).append(number)
        out = [""] * len(requests)
        for (until, max_new, temperature), numbers in groups.items():
            keep = self.max_length - max_new + 1
            encoded = [list(self.tokenizer.encode(requests[n].args[0])) for n in numbers]
            prompts = [(ids or [self.prefix_id])[-keep:] for ids in encoded]
            texts = generate_texts(
                self.model,
                self.variables,
                self.tokenizer,
                prompts,
                max_new,
                stop=until,
                batch_size=self.batch_size,
                bucket=BUCKET,
                temperature=temperature,
            )
            for n, text in zip(numbers, texts, strict=True):
                out[n] = text
        return out


def main() -> None:
    """``python -m codex_jax.codeeval.lm_eval_model ...``: lm-eval's CLI with ``codex_jax`` registered."""
    cli_evaluate()


if __name__ == "__main__":
    main()
