"""Data-stage building blocks: records, steps, shards and executors.

Every synthetic-data technique (Phi-4 report §2.2) and curation filter (§2.3) is a
``Step`` over ``Record``s; an executor runs a list of steps once per input shard,
locally or on Ray, resumable after a crash::

    from phiforge.dataflow import ExecutorConfig, Filter, LocalExecutor

    class TooShort(Filter):
        def keep(self, record):
            return len(record.text) >= 200 or (False, "too_short")

    stats = LocalExecutor([TooShort()], input="web/", output_dir="curated/", workers=4).run()

    records    Record, Provenance: the flat on-disk row (columns documented there)
    step       Step, Filter, Map, StepContext: the step contract
    shards     ShardWriter, read_records, write_shards, list_shards: sharded JSONL/zstd/Parquet
    executor   ExecutorConfig, LocalExecutor, RayExecutor
    templates  PromptTemplate, load_template, get_template: versioned prompt files
"""

from phiforge.dataflow.executor import Executor, ExecutorConfig, LocalExecutor, RayExecutor
from phiforge.dataflow.records import COLUMNS, Provenance, Record
from phiforge.dataflow.shards import (FORMATS, ShardWriter, list_shards, read_dropped, read_records,
                                      read_shard, write_shards)
from phiforge.dataflow.step import Filter, Map, Step, StepContext
from phiforge.dataflow.templates import (PromptTemplate, TemplateError, get_template, load_template,
                                         load_templates)

__all__ = [
    "COLUMNS", "FORMATS", "Executor", "ExecutorConfig", "Filter", "LocalExecutor", "Map", "PromptTemplate",
    "Provenance", "RayExecutor", "Record", "ShardWriter", "Step", "StepContext", "TemplateError",
    "get_template", "list_shards", "load_template", "load_templates", "read_dropped", "read_records",
    "read_shard", "write_shards",
]
