"""Training hooks: the dispatcher's order and read-only metrics, hooks from entry points and from
``api.train(hooks=...)``, a failing hook stopping the run after its step's checkpoint is committed, and
the end-of-run sample drawn as ``generate.*`` says (the legacy fixture run: 8 steps, its step 4 saved)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import pytest
from conftest import read_metrics

from codex_jax import api, plugins
from codex_jax.config.schema import SCHEMA
from codex_jax.errors import UserError
from codex_jax.train import hooks
from codex_jax.train.hooks import Hook, HookFailed, Hooks

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_run"


class Recorder(Hook):
    """Records (event, step, metrics) and whether the metrics could be changed."""

    def __init__(self, name="recorder"):
        self.name, self.events, self.writable = name, [], False

    def _record(self, event, step, metrics):
        self.events.append((event, step, dict(metrics)))
        try:
            metrics["train/loss"] = 0.0  # type: ignore[index]  # read-only: must raise
            self.writable = True
        except TypeError:
            pass

    def on_step_end(self, step, metrics):
        self._record("step", step, metrics)

    def on_eval_end(self, step, metrics):
        self._record("eval", step, metrics)

    def on_checkpoint_save(self, step, metrics):
        self._record("save", step, metrics)


class Boom(Hook):
    name = "boom"

    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, step, metrics):
        if step == self.at_step:
            raise RuntimeError("the dashboard is down")


def test_builtins_run_first_and_user_hooks_after_the_outermost_event():
    seen = []

    class Builtin(Hook):
        def on_step_end(self, step, metrics):
            seen.append(("builtin step", step))
            run_hooks.eval_end(step, {"eval/loss": 1.5})  # an eval inside the step's hooks

        def on_eval_end(self, step, metrics):
            seen.append(("builtin eval", step))

    class User(Hook):
        def on_step_end(self, step, metrics):
            seen.append(("user step", step, type(metrics["train/loss"])))

        def on_eval_end(self, step, metrics):
            seen.append(("user eval", step))

    run_hooks = Hooks([Builtin()], [("user", User())])
    run_hooks.step_end(3, {"train/loss": jax.numpy.float32(2.0).item()})
    assert seen == [("builtin step", 3), ("builtin eval", 3), ("user step", 3, float), ("user eval", 3)]

    failing = Hooks([], [("boom", Boom(at_step=4))])
    failing.step_end(3, {})
    with pytest.raises(HookFailed, match="hook boom failed at step 4: RuntimeError: the dashboard is down"):
        failing.step_end(4, {})


@pytest.fixture
def hook_plugins(tmp_path, monkeypatch):
    """An installed distribution (a .dist-info on sys.path) with codex_jax.hooks entry points."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "myhooks.py").write_text(
        "from codex_jax.api import Hook\n"
        "class Counter(Hook):\n"
        "    made = []\n"
        "    def __init__(self):\n"
        "        self.steps = []\n"
        "        Counter.made.append(self)\n"
        "    def on_step_end(self, step, metrics):\n"
        "        self.steps.append(step)\n"
        "def failing_factory():\n"
        "    raise OSError('no token')\n"
        "NOT_A_HOOK = 3\n"
    )
    info = site / "myhooks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myhooks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[codex_jax.hooks]\ncounter = myhooks:Counter\nfactory = myhooks:failing_factory\n"
        "number = myhooks:NOT_A_HOOK\nmissing = myhooks_nope:HOOK\n"
    )
    monkeypatch.syspath_prepend(str(site))
    plugins.reload()
    yield
    plugins.reload()


def test_entry_point_hooks_are_made_per_run_and_bad_names_are_one_error(hook_plugins):
    first = hooks.user_hooks("counter", [Recorder()])
    second = hooks.user_hooks(" counter ,")
    assert [name for name, _ in first] == ["counter", "recorder"] and first[0][1] is not second[0][1]
    errors = {
        "nope": "no hook 'nope' is installed (installed: counter, factory; codex-jax plugins",
        "factory": "hook 'factory' could not be created: OSError: no token",
        "number": "hook 'number' failed to load: myhooks:NOT_A_HOOK (myhooks 0.1): TypeError",
        "missing": "hook 'missing' failed to load: myhooks_nope:HOOK (myhooks 0.1): ModuleNotFoundError",
    }
    for name, message in errors.items():
        with pytest.raises(UserError, match=re.escape(f"config key 'train.hooks': {message}")):
            hooks.user_hooks(name)
    with pytest.raises(UserError, match="hooks: 42 has none of the hook methods"):
        hooks.user_hooks("", [42])


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A copy of the legacy fixture run (checkpoint 4 of 8), as the working directory's ``run``."""
    shutil.copytree(FIXTURE / "corpus", tmp_path / "corpus")
    shutil.copytree(FIXTURE / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)  # data.source is the relative 'corpus/*.py'
    return tmp_path / "run"


def test_api_and_entry_point_hooks_run_a_failing_one_stops_after_its_checkpoint(run, hook_plugins, capsys):
    overrides = {"checkpoint.every_steps": 2, "train.hooks": "counter"}
    recorder = Recorder()
    with pytest.raises(UserError) as stopped:
        api.train(api.workdir_config(run, overrides), run, hooks=[recorder, Boom(at_step=6)])
    assert str(stopped.value) == (
        "hook boom failed at step 6: RuntimeError: the dashboard is down; the last checkpoint is step 6 in "
        f"{run / 'checkpoints'} (rerun to resume from it)"
    )
    assert [(e, s) for e, s, _ in recorder.events] == [("step", 5), ("step", 6)]
    written = {step: r["loss"] for step, r in read_metrics(run).items()}
    assert {s: m["train/loss"] for e, s, m in recorder.events} == {5: written[5], 6: written[6]}
    assert not recorder.writable
    counter = plugins.load(plugins.HOOKS).loaded["counter"].made[-1]
    assert counter.steps == [5, 6]  # the entry point's hook ran before the failing one

    # Step 6 was committed before the error: the run resumes from it (bit-exact resume: test_train.py).
    # The hooks see the rest; the end-of-run sample is what --mode=generate draws with the same keys.
    sampled = {key: SCHEMA[key][0] for key in ("generate.temperature", "generate.top_k", "generate.seed")}
    sampled["generate.max_new_tokens"] = 8  # the fixture's config.json says 0 (no sample) and greedy
    again = Recorder()
    final = api.train(api.workdir_config(run, {**overrides, **sampled}), run, hooks=[again])
    assert [(e, s) for e, s, _ in again.events] == [("step", 7), ("step", 8), ("save", 8), ("eval", 8)]
    written = {step: r["loss"] for step, r in read_metrics(run).items()}
    assert {s: m["train/loss"] for e, s, m in again.events if e == "step"} == {7: written[7], 8: written[8]}
    assert again.events[-1][2]["eval/loss"] == final["loss"]
    out, err = capsys.readouterr()
    assert f"resumed from {run / 'checkpoints' / '6'}" in err
    texts = [json.loads(r) for r in (run / "metrics.ndjson").read_text().splitlines() if '"sample"' in r]
    generated = api.generate(api.workdir_config(run, sampled), run)
    assert texts[-1]["text"] == generated[0] and f"step 8 sample: {generated[0]}" in out
