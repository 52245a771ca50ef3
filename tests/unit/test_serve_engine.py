"""The serve engine (issue 29) in-process: continuous batching gives each request what ``generate``
gives it alone; seeded draws do not depend on the other requests in flight; cancelled requests free
their slot; echo logprobs are the model's; nothing compiles after warm-up."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_llama

from codex_jax.generate import Sampler, generate, left_pad, sample_rows
from codex_jax.models.transformer import Transformer, init_params
from codex_jax.serve.engine import Done, Engine, QueueFull, Request, Token, buckets

CONTEXT = 64


@pytest.fixture(scope="module")
def engine():
    cfg = tiny_llama(max_seq_len=CONTEXT)
    model = Transformer(cfg)
    params = init_params(cfg, jax.random.key(3))
    engine = Engine(model, params, slots=3, context=CONTEXT, max_queue=8)
    engine.warm_up()
    engine.start()
    yield engine
    engine.stop()


def run(engine, requests: list[dict], timeout=120) -> list[tuple[list[int], str, Done]]:
    """Submits every request (``Request`` fields) at once; each one's tokens, end reason and Done."""
    results: list = [None] * len(requests)
    left = threading.Semaphore(0)

    def collector(i):
        tokens = []

        def emit(event):
            if isinstance(event, Token):
                tokens.append(event.id)
            else:
                results[i] = (tokens, event.reason, event)
                left.release()

        return emit

    for i, fields in enumerate(requests):
        engine.submit(Request(emit=collector(i), **fields))
    for _ in requests:
        assert left.acquire(timeout=timeout)
    return results


def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 97, size=n).tolist() for n in lengths]


def test_buckets():
    assert buckets(64) == [16, 32, 64]
    assert buckets(100) == [16, 32, 64, 100]


def test_greedy_requests_batched_continuously_equal_generate(engine):
    prompts = prompts_of([3, 17, 9, 33, 1, 12, 40])  # more than the 3 slots: some wait for a slot
    max_new = [10, 4, 12, 7, 9, 5, 8]
    got = run(engine, [dict(prompt=p, max_tokens=m) for p, m in zip(prompts, max_new, strict=True)])
    tokens_BxT, lengths_B = left_pad(prompts)
    want = np.asarray(generate(engine.model, engine.variables, tokens_BxT, 12, prompt_lengths=lengths_B))
    for i, (tokens, reason, _) in enumerate(got):
        assert tokens == want[i, : max_new[i]].tolist(), i
        assert reason == "length"
    assert engine.stats()["compiles_after_warm_up"] == 0


def test_stop_ids_and_context_end(engine):
    prompt = prompts_of([5])[0]
    ((alone, _, _),) = run(engine, [dict(prompt=prompt, max_tokens=6)])
    ((stopped, reason, _),) = run(engine, [dict(prompt=prompt, max_tokens=6, stop_ids=frozenset([alone[2]]))])
    assert (stopped, reason) == (alone[: alone.index(alone[2]) + 1], "stop")
    ((full, reason, _),) = run(engine, [dict(prompt=prompts_of([CONTEXT - 3])[0], max_tokens=50)])
    assert (len(full), reason) == (4, "length")  # 3 columns left, plus the token that needs none


def test_seeded_draws_do_not_depend_on_the_batch(engine):
    prompt = prompts_of([6], seed=1)[0]
    sampled = dict(prompt=prompt, max_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=7)
    ((alone, _, _),) = run(engine, [sampled])
    others = [
        dict(prompt=p, max_tokens=12, temperature=1.0, seed=i) for i, p in enumerate(prompts_of([4, 9]))
    ]
    crowded = run(engine, [others[0], sampled, others[1]])
    assert crowded[1][0] == alone
    ((other_seed, _, _),) = run(engine, [{**sampled, "seed": 8}])
    assert other_seed != alone


def test_echo_logprobs_are_the_models(engine):
    prompt = prompts_of([11], seed=2)[0]
    ((tokens, reason, done),) = run(engine, [dict(prompt=prompt, max_tokens=0, prompt_logprobs=True)])
    assert (tokens, reason) == ([], "length")
    logits = engine.model.apply(engine.variables, jnp.asarray([prompt]))
    logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    assert done.prompt_logprobs[0] is None
    for t in range(1, len(prompt)):
        value, top = done.prompt_logprobs[t]
        assert value == pytest.approx(logp[t - 1, prompt[t]], abs=1e-5)
        assert top[0][0] == int(np.argmax(logp[t - 1]))


def test_cancel_frees_the_slot_and_a_full_queue_refuses(engine):
    events = []
    long = Request(prompt=[1, 2, 3], max_tokens=CONTEXT, emit=events.append)
    engine.submit(long)
    long.cancel()
    results = run(engine, [dict(prompt=[4, 5], max_tokens=3)] * 3)
    assert all(r[1] == "length" for r in results)
    assert isinstance(events[-1], Done) and events[-1].reason == "cancelled"
    assert engine.stats()["finished"]["cancelled"] >= 1
    with pytest.raises(ValueError, match="more than the model's context of 64"):
        engine.submit(Request(prompt=[1] * (CONTEXT + 1), max_tokens=1, emit=events.append))
    parked = [Request(prompt=[1], max_tokens=1, emit=events.append) for _ in range(30)]
    with pytest.raises(QueueFull):
        for r in parked:
            engine.submit(r)
    for r in parked:
        r.cancel()


def test_sample_rows_is_the_samplers_draw():
    logits_BxV = jax.random.normal(jax.random.key(0), (4, 50)) * 3
    keys_B = jax.random.split(jax.random.key(1), 4)
    for settings in [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 10, 0.5)]:
        sampler = Sampler(*settings)
        rows = sample_rows(
            logits_BxV,
            keys_B,
            jnp.full((4,), settings[0]),
            jnp.full((4,), settings[1], jnp.int32),
            jnp.full((4,), settings[2]),
        )
        alone = [int(sampler(logits_BxV[b : b + 1], keys_B[b])[0]) for b in range(4)]
        assert rows.tolist() == alone, settings
