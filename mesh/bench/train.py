"""A training run across machines on the process stack (``mesh bench train``).

The char transformer of ``mesh bench train-verify`` on its half of the standard library's
sources, trained by :meth:`meshcompute.client.Client.train` over four workers of the dev stack
(anvil, Valkey, market, two verifiers, every job paid after its audit draw) for five rounds,
against one machine trained here on the same data with the same samples seen (one run of
``rounds * workers * steps_per_round`` steps of the same inner optimizer and batch size).
Both are scored on the other half of the sources (held out) and on the training half:

- ``final_loss_distributed`` / ``final_loss_local``: the held-out loss; ``loss_ratio`` their
  ratio (target <= 1.10); ``train_loss_ratio``: the same on the training half;
- ``rounds``, ``jobs`` (paid), ``wall_s`` (the run, after the stack is up), ``mesh_spent``
  (the client's credits, escrow less refunds);
- the loss curve, ``loss.png`` of the run, is copied to ``docs/bench/train_loss.png``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from meshcompute.mesh.devstack import FAST_PARAMS, DevStack, StackConfig

WORKERS, ROUNDS, STEPS_PER_ROUND, BATCH = 4, 5, 16, 16
OPTIMIZER = {"name": "adamw", "lr": 3e-3}
OUTER = {"outer_lr": 0.7, "outer_momentum": 0.5}
CURVE = Path(__file__).resolve().parents[2] / "docs" / "bench" / "train_loss.png"


def run_train_bench(*, workers: int = WORKERS, rounds: int = ROUNDS,
                    steps_per_round: int = STEPS_PER_ROUND,
                    curve: Path | None = CURVE) -> dict[str, Any]:
    from safetensors.torch import load

    from meshcompute.core.training import validate_plan
    from meshcompute.execution.outer import mean_loss, split_state
    from meshcompute.execution.programs import export_program
    from meshcompute.execution.training import run_steps
    from meshcompute.mesh.bench.stack_bench import _client
    from meshcompute.mesh.bench.train_verify import CharTransformer, _text
    from meshcompute.units import TOKEN

    torch.set_num_threads(1)
    shard, held_out = _text()
    torch.manual_seed(1234)
    program = export_program(CharTransformer().train(), tuple(t[:4] for t in shard))
    config = StackConfig(workers=workers, cheaters=0, worker_slots=1,
                         params=replace(FAST_PARAMS, audit_window_s=300))
    folder = Path(tempfile.mkdtemp(prefix="mesh-bench-train-"))
    try:
        with DevStack(config) as stack:
            client = _client(stack)
            started = time.perf_counter()
            result = client.train(program, shard, optimizer=OPTIMIZER, workers=workers,
                                  rounds=rounds, steps_per_round=steps_per_round,
                                  batch_size=BATCH, run_dir=folder / "run", pay="1",
                                  round_timeout_s=900, **OUTER)
            wall = time.perf_counter() - started
        plan = validate_plan({"optimizer": OPTIMIZER, "steps": rounds * workers * steps_per_round,
                              "batch_size": BATCH, "seed": 0,
                              "checkpoint_every": steps_per_round})
        local, _ = split_state(load(run_steps(program, shard, plan).final_state))
        ours = {"param." + k: v for k, v in result.parameters.items()}
        scores = {name: (mean_loss(program, data, ours, 64), mean_loss(program, data, local, 64))
                  for name, data in (("held_out", held_out), ("train", shard))}
        if curve is not None and result.curve_path is not None:
            curve.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result.curve_path, curve)
        dist, alone = scores["held_out"]
        return {
            "model": "char transformer (mesh bench train-verify)",
            "workers": workers,
            "rounds": len(result.rounds),
            "steps_per_round": steps_per_round,
            "samples_seen": rounds * workers * steps_per_round * BATCH,
            "final_loss_distributed": round(dist, 4),
            "final_loss_local": round(alone, 4),
            "loss_ratio": round(dist / alone, 3),
            "train_loss_distributed": round(scores["train"][0], 4),
            "train_loss_local": round(scores["train"][1], 4),
            "train_loss_ratio": round(scores["train"][0] / scores["train"][1], 3),
            "jobs": sum(len(r.jobs) for r in result.rounds),
            "shards_skipped": sum(len(r.skipped) for r in result.rounds),
            "wall_s": round(wall, 1),
            "mesh_spent": round(result.spent_wei / TOKEN, 4),
            "round_losses": [round(x, 4) for x in result.losses],
            "outer": OUTER,
            "inner": {**OPTIMIZER, "batch_size": BATCH},
            "curve": "docs/bench/train_loss.png" if curve is not None else None,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
