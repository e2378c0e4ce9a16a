"""Ray scoring pool: work spread over actors, each genome scored once at its thread count, dead actors replaced,
and every failure it cannot recover from named."""
import os
import signal

import numpy as np
import pytest

from jcw.errors import JcwError
from jcw.supernet.pool import DataSpec, RayPool, SerialPool


@pytest.mark.slow
def test_ray_pool_spreads_work_replaces_dead_actors_and_names_failures(supernet, tmp_path):
    spec = DataSpec(calibration_images=100, val_images=200)
    genomes = list(supernet.space.sample(4, np.random.default_rng(2)))
    serial = SerialPool(supernet, spec).score(genomes)
    pool = RayPool(supernet, spec, workers=2)
    try:
        pids = pool.actor_pids()
        # a local pool's actors run at the driver's priority, not Ray's default niceness of 15
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [os.nice(0)] * 2
        scores = pool.score(genomes)
        assert sorted(s["genome"] for s in pool.scored_by) == [0, 1, 2, 3]  # each genome scored once
        assert {s["worker"] for s in pool.scored_by} == set(pids)  # by both actors
        assert {s["threads"] for s in pool.scored_by} == {os.cpu_count() // 2}  # the CPUs split between them
        # one thread per actor against two in-process: summation order may flip at most an image or two
        assert np.allclose([s["top1"] for s in scores], [s["top1"] for s in serial], atol=0.25)

        os.kill(pids[0], signal.SIGKILL)
        again = pool.score(genomes)
        assert pool.restarts == 1 and [s["top1"] for s in again] == [s["top1"] for s in scores]
        assert sorted(s["genome"] for s in pool.scored_by) == [0, 1, 2, 3]

        pool.max_restarts = 1  # the next death is one too many
        os.kill(pool.actor_pids()[0], signal.SIGKILL)
        with pytest.raises(JcwError, match="scoring actors died 2 times"):
            pool.score(genomes)

        for actor in pool.actors:  # free their CPUs: the next pool's actor asks for all of them
            pool.ray.kill(actor)
        pool.actors = []
        broken = RayPool(supernet, DataSpec(data_dir=str(tmp_path)), workers=1)  # no data where it looks
        with pytest.raises(JcwError, match=f"a scoring actor could not start: Fashion-MNIST not found in {tmp_path}"):
            broken.score(genomes[:1])
        broken.close()
    finally:
        pool.close()
