import os
import signal

import numpy as np

from jcw.supernet.pool import DataSpec, RayPool, SerialPool


def test_dead_actor_is_replaced_and_its_genome_requeued(supernet):
    spec = DataSpec(calibration_images=250, val_images=500)
    genomes = list(supernet.space.sample(4, np.random.default_rng(2)))
    serial = SerialPool(supernet, spec).score(genomes)
    pool = RayPool(supernet, spec, workers=2)
    try:
        # a local pool's actors run at the driver's priority, not Ray's default niceness of 15
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pool.actor_pids()] == [os.nice(0)] * 2
        os.kill(pool.actor_pids()[0], signal.SIGKILL)
        scores = pool.score(genomes)
        assert pool.restarts >= 1
    finally:
        pool.close()
    assert len(scores) == len(genomes)
    # one thread per actor against two in-process: summation order may flip at most an image or two
    assert np.allclose([s["top1"] for s in scores], [s["top1"] for s in serial], atol=0.25)
