"""Data-parallel supernet training on Ray Train: the arithmetic, the subnets every worker trains, and a lost worker."""
import os
import signal
import threading
import time

import pandas as pd
import pytest
import torch
from conftest import processes, run_cli

from jcw.config import TrainConfig
from jcw.supernet.supernet import SupernetConfig, load_supernet
from jcw.supernet.train import initial_supernet, train


@pytest.mark.slow
def test_ray_train_workers_take_one_process_step_and_resume_after_losing_one(tmp_path, ray_cluster):
    """`supernet train --workers 2 --ray-address` on a 2-node cluster, one step per epoch, each worker on half of
    every batch:
    - after the first step the weights equal, within 1e-5, one process's that accumulates the same two halves;
    - every worker trains the same sandwich subnets at every step (their digests are compared each epoch, and
      match one process's);
    - a training worker killed once the first epoch's checkpoint is reported is restarted by Ray Train, every worker
      resumes from that checkpoint, and each epoch is trained once."""
    address, _ = ray_cluster
    out = tmp_path / "two"
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint():
        deadline = time.time() + 240
        while time.time() < deadline:
            if list((out / "ray_train").glob("checkpoint_*/checkpoint.pt")):
                time.sleep(0.3)  # Ray registers the checkpoint just after writing it
                workers = processes(b"ray::RayTrainWorker")
                if workers:
                    os.kill(max(workers), signal.SIGKILL)
                    return killed.append(len(pd.read_csv(out / "train_log.csv")))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    recipe = dict(batch_size=32, limit_train=32, n_random=2, seed=5, val_images=100)  # one step per epoch
    ran = run_cli("supernet", "train", "--model", "mbv2_tiny", "--epochs", "2", "--workers", "2",
                  "--ray-address", address, "--out", str(out),
                  *[f"--{k.replace('_', '-')}={v}" for k, v in recipe.items()], check=True,
                  env={"RAY_AUTH_MODE": "token"})
    killer.join(5)
    assert killed and killed[0] < 2, (killed, ran.stderr[-2000:])  # killed mid-run
    log = pd.read_csv(out / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2]  # resumed from the checkpoint, not from the start
    assert (log["workers"] == 2).all() and (log["threads_per_worker"] == 1).all()

    one = train(tmp_path / "one", SupernetConfig(model="mbv2_tiny"),
                TrainConfig(epochs=2, accumulate=2, threads=1, **recipe))  # one process, at each worker's 1 thread
    assert log["subnets_digest"].tolist() == pd.read_csv(tmp_path / "one" / "train_log.csv")["subnets_digest"].tolist()
    reported = [torch.load(f, weights_only=True) for f in (out / "ray_train").glob("checkpoint_*/checkpoint.pt")]
    first = next(c for c in reported if c["epoch"] == 1)["state_dict"]
    single = train(tmp_path / "one-step", SupernetConfig(model="mbv2_tiny"),
                   TrainConfig(epochs=1, accumulate=2, threads=1, **recipe))
    a = load_supernet(single).raw_state_dict()
    start = initial_supernet(load_supernet(single).config, TrainConfig(seed=5)).raw_state_dict()
    weights = [k for k, v in a.items() if v.is_floating_point() and "running" not in k]
    assert max(float((a[k] - start[k]).abs().max()) for k in weights) > 1e-3  # the step moved the weights
    for k in weights:
        assert torch.allclose(a[k], first[k], atol=1e-5, rtol=0), (k, float((a[k] - first[k]).abs().max()))
    assert load_supernet(out / "supernet.pt").space.n_genes == load_supernet(one).space.n_genes
