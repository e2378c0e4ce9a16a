"""Multi-node Ray, on a 2-node cluster started as users start one: data-parallel supernet training on Ray Train (its
arithmetic, the subnets every worker trains, a lost worker) and a search that loses a node mid-scoring.

One cluster serves the module; the training test only kills a worker, so it runs before the test that kills the node.
"""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import proc_stat, run_cli

from jcw.config import TrainConfig
from jcw.search.archive import pareto_mask
from jcw.supernet.supernet import SupernetConfig, load_supernet
from jcw.supernet.train import initial_supernet, train


def processes(prefix: bytes) -> set[int]:
    """Pids whose command line starts with `prefix` (Ray titles a busy actor `ray::_ScoringActor.score`)."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(prefix):
                found.add(int(proc.name))
        except OSError:
            continue
    return found


def raylets() -> set[int]:
    return {pid for pid in processes(b"/") if b"/raylet" in (Path("/proc") / str(pid) / "cmdline").read_bytes()
            .split(b"\0")[0]}


def parent_pid(pid: int) -> int:
    stat = proc_stat(pid)
    return int(stat[1]) if stat else -1  # gone since it was listed


def ray_start(ray: str, *args: str, env: dict | None = None) -> None:
    """`ray start`, failing with what Ray printed: its exit status alone says nothing of why a node did not start."""
    done = subprocess.run([ray, "start", *args, "--disable-usage-stats"], capture_output=True, text=True, timeout=120,
                          env=env)
    if done.returncode:
        pytest.fail(f"ray start {' '.join(args)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}")


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-node Ray cluster started as a user starts one: `ray start --head` (2 CPUs), then a second node
    (`ray start --address`, 1 CPU). Yields the address and the second node's raylet pid; stopped after this module
    (a cluster left running would catch every later `ray.init()`)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray = str(Path(sys.executable).with_name("ray"))
    # `ray start --head` turns token authentication on only where ~/.ray/auth_token exists (the first local
    # `ray.init()` on a machine writes it): make one, as the README tells users to, so the order of tests is moot
    subprocess.run([ray, "get-auth-token", "--generate"], capture_output=True, timeout=120, check=True)
    token = {**os.environ, "RAY_AUTH_MODE": "token"}
    ray_start(ray, "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", env=token)
    try:
        before = raylets()
        ray_start(ray, f"--address=127.0.0.1:{port}", "--num-cpus=1", env=token)
        (second,) = raylets() - before
        yield f"127.0.0.1:{port}", second
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


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
    finished = threading.Event()

    def kill_a_worker_after_the_first_checkpoint():
        while not finished.is_set():  # no deadline: on a loaded machine the first epoch can take minutes
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
    finished.set()
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


@pytest.mark.slow
def test_a_search_on_a_ray_cluster_survives_losing_a_node_mid_scoring(tmp_path, ray_cluster):
    """`jcw search --ray-address` joins a 2-node cluster the user started (token authentication on, as Ray now
    defaults to), scores on both nodes, and loses the second node while both actors are scoring: Ray restarts that
    actor on the head and retries its genome, and the search finishes with every genome scored once."""
    address, second = ray_cluster
    head = next(iter(raylets() - {second}))
    busy_on: set[str] = set()

    def kill_second_node_when_both_score():
        deadline = time.time() + 120
        while time.time() < deadline and busy_on != {"head", "second"}:
            for pid in processes(b"ray::_ScoringActor.score"):
                busy_on.add({head: "head", second: "second"}.get(parent_pid(pid), "?"))
            time.sleep(0.05)
        if busy_on == {"head", "second"}:  # the node goes: its raylet and every process it started
            for pid in [p for p in processes(b"") if parent_pid(p) == second] + [second]:
                os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_second_node_when_both_score, daemon=True)
    killer.start()
    run_cli("search", "--device", "pixel4", "--latency", "0.9ms", "--population", "16", "--generations", "6",
            "--seed", "3", "--out", str(tmp_path / "ray"), "--workers", "2", "--ray-address", address,
            "--rescore", "4", "--calibration-images", "100", "--val-images", "200", "--no-export", check=True,
            env={"RAY_AUTH_MODE": "token"})
    killer.join(5)
    assert busy_on == {"head", "second"}  # both nodes scored before the second one went
    assert not any(pid == second for pid in raylets())
    history = pd.read_csv(tmp_path / "ray" / "history.csv")
    assert not history["genome"].duplicated().any()
    front = pd.read_csv(tmp_path / "ray" / "pareto.csv")
    assert len(front) and front["top1"].notna().all() and (front["latency_ms"] <= 0.9).all()
    assert pareto_mask(front["latency_ms"].to_numpy(), front["top1"].to_numpy()).all()
