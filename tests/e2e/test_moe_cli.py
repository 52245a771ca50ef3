"""A mixture-of-experts model through the real CLI: trains on 4 devices with its experts over an ``expert``
axis, logs the router terms, resumes bit for bit; a bad expert axis is one ``error:`` line, exit 2."""

import shutil

import jax
import numpy as np
from conftest import read_metrics, restore_params, run_cli

MOE = [
    "--config.model.family=llama",
    "--config.model.num_experts=4",
    "--config.model.experts_per_token=2",
    "--config.model.moe_d_ff=64",
    "--config.model.router_aux_loss_coef=0.01",
    "--config.model.router_z_loss_coef=0.001",
    "--config.parallel.mesh.expert=2",
    "--config.parallel.fsdp_min_size=1",
    "--config.train.steps=6",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
    "--config.checkpoint.every_steps=3",
    "--config.generate.max_new_tokens=0",
]


def test_moe_trains_with_an_expert_axis_and_resumes_bit_for_bit(tmp_path):
    full = tmp_path / "full"
    run_cli(full, *MOE, devices=4)
    metrics = read_metrics(full)
    assert all({"moe_balance", "router_z"} <= set(m) for m in metrics.values()), metrics[1]
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")
    run_cli(resumed, *MOE, devices=4)
    again = read_metrics(resumed)
    for step in (4, 5, 6):
        assert again[step]["loss"] == metrics[step]["loss"]
        assert again[step]["moe_balance"] == metrics[step]["moe_balance"]
    params = [restore_params(w, 6) for w in (full, resumed)]
    jax.tree.map(np.testing.assert_array_equal, *params)


def test_an_expert_axis_that_does_not_divide_the_experts_is_one_error_line(tmp_path):
    result = run_cli(tmp_path / "bad", *MOE, "--config.model.num_experts=3", devices=4, check=False)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: config key 'parallel.mesh.expert': must divide model.num_experts=3 (got 2)"]
    assert "Traceback" not in result.stderr
