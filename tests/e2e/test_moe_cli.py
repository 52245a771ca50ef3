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


def test_expert_lora_trains_resumes_and_exports(tmp_path):
    """lora.experts=True through the CLI, experts over the expert axis: the adapters of every expert train,
    a stopped run resumes to the same losses and adapters, and both exports run (peft: target_parameters;
    hf: the adapters merged into the experts)."""
    import json

    from safetensors.numpy import load_file

    mixtral = [a.replace("llama", "mixtral").replace("moe_d_ff=64", "moe_d_ff=0") for a in MOE]  # exportable
    lora = [
        *mixtral,
        "--config.lora.rank=4",
        "--config.lora.experts=true",
        "--config.train.learning_rate=1e-2",
    ]
    full, part = tmp_path / "full", tmp_path / "part"
    run_cli(full, *lora, devices=4)
    run_cli(part, *lora, "--config.train.stop_after=3", devices=4)
    run_cli(part, *lora, devices=4)
    a, b = read_metrics(full), read_metrics(part)
    assert [a[s]["loss"] for s in (4, 5, 6)] == [b[s]["loss"] for s in (4, 5, 6)]
    assert a[6]["loss"] < a[1]["loss"]
    import orbax.checkpoint as ocp

    ckpt = ocp.StandardCheckpointer()
    adapters = [ckpt.restore((w / "checkpoints/6/lora").absolute()) for w in (full, part)]
    jax.tree.map(np.testing.assert_array_equal, *adapters)
    gate = adapters[0]["layers_0"]["mlp"]["gate_proj"]
    assert gate["lora_a"].shape[:1] == (4,) and np.all(np.abs(gate["lora_b"]).sum((1, 2)) > 0)
    for fmt in ("peft", "hf"):
        run_cli(
            full,
            *lora,
            f"--config.export.format={fmt}",
            f"--config.export.dir={tmp_path / fmt}",
            mode="export",
            devices=4,
        )
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["target_parameters"] == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    merged = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert any(".experts.3." in k for k in merged)
