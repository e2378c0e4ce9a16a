"""torchvision, imported without importing torch._dynamo.

torchvision's ops package imports `torch._dynamo.utils` for one function, which `roi_align` calls when it runs. That
import made a process that builds a network take 3.75 s instead of 2.20 s from start to exit on 2 cores (start-up
and exit; 150 MiB more memory), and jcw never compiles. While torchvision is imported, that one module is a stand-in
whose function imports the real one on its first call; afterwards the stand-in is gone, so a later
`import torch._dynamo` gets the real package. Where torchvision or torch._dynamo is already imported, this changes
nothing. TensorFlow is the one library that must come after torch._dynamo (triton's library crashes loading after
it), so jcw imports torch._dynamo just before it (`jcw.latency.tflite_runtime.tensorflow`).
"""
from __future__ import annotations

import sys
import types

_UTILS = "torch._dynamo.utils"


def _is_compile_supported(device_type):
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


def _import() -> types.ModuleType:
    if "torchvision" not in sys.modules and "torch._dynamo" not in sys.modules:
        stand_in = types.ModuleType(_UTILS)
        stand_in.is_compile_supported = _is_compile_supported
        sys.modules[_UTILS] = stand_in
        try:
            import torchvision  # noqa: F401
        finally:
            if sys.modules.get(_UTILS) is stand_in:
                del sys.modules[_UTILS]
    import torchvision

    return torchvision


torchvision = _import()
