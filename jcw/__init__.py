"""jcw: joint channel and weight-sparsity search for fast CNNs on phones.

The public API mirrors the CLI: load a supernet, a latency table and a predictor, search, export.
"""
__version__ = "0.1.0"


def __getattr__(name):  # lazy, so `jcw --help` does not import torch
    import importlib

    exports = {
        "SearchSpace": "jcw.space",
        "load_supernet": "jcw.supernet.supernet",
        "Supernet": "jcw.supernet.supernet",
        "load_table": "jcw.latency.table",
        "LatencyTable": "jcw.latency.table",
        "load_predictor": "jcw.predictor.predictor",
        "search": "jcw.search.run",
        "load_subnet": "jcw.supernet.subnet",
        "export_subnet": "jcw.supernet.subnet",
        "export_from_run": "jcw.export.from_run",
        "pick": "jcw.export.from_run",
        "SearchConfig": "jcw.search.run",
        "load_dataset": "jcw.data",
    }
    if name in exports:
        return getattr(importlib.import_module(exports[name]), name)
    raise AttributeError(name)
