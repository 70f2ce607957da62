"""`featcache bench`: throughput and memory of the pipeline as ratios measured in one run (extraction vs the
bare encoder, extra poolings, ranks, memory vs N, HDF5 read), the heads against their references, and
fine-tuning epochs.

May import: every other featcache package (it measures them).
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "BenchConfig": "config", "run_bench": "run", "format_bench": "run",
    "run_heads_benchmark": "heads", "benchmark_epoch": "finetune",
})
