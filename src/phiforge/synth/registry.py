"""Technique names a recipe can use in ``[[synth.pipelines.steps]]``, and how to build each.

A recipe step is ``technique = "<name>"`` plus that technique's config keys; the
config is validated (unknown keys rejected, values checked) when the recipe loads,
before any model is opened.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> (module, config class, step class); modules are imported only when used. A bare module
# name is under ``phiforge.synth``; a dotted one is a full path (post-training data steps).
TECHNIQUES: dict[str, tuple[str, str, str]] = {
    "page_educational_filter": ("seeds", "PageEducationalFilterConfig", "PageEducationalFilter"),
    "passage_segmenter": ("seeds", "PassageSegmenterConfig", "PassageSegmenter"),
    "passage_scorer": ("seeds", "PassageScorerConfig", "PassageScorer"),
    "excerpt_tagger": ("seeds", "ExcerptTaggerConfig", "ExcerptTagger"),
    "seed_metadata_filter": ("seeds", "SeedMetadataFilterConfig", "SeedMetadataFilter"),
    "plurality_filter": ("plurality", "PluralityFilterConfig", "PluralityFilter"),
    "document_qa": ("qa", "DocumentQAGeneratorConfig", "DocumentQAGenerator"),
    "rewrite": ("rewrite", "PassageRewriterConfig", "PassageRewriter"),
    "self_revision": ("revision", "SelfRevisionConfig", "SelfRevision"),
    "conversation": ("conversation", "MultiAgentConversationConfig", "MultiAgentConversation"),
    "instruction_reversal": ("reversal", "InstructionReversalConfig", "InstructionReversal"),
    "fill_in_the_middle": ("fim", "FillInTheMiddleConfig", "FillInTheMiddle"),
    "rejection_sampling": ("rejection", "RejectionSamplerConfig", "RejectionSampler"),
    "execution_validation": ("rejection", "ExecutionValidatorConfig", "ExecutionValidator"),
    "arithmetic_check": ("arithmetic", "ArithmeticCheckConfig", "ArithmeticCheck"),
    "best_of_n": ("phiforge.posttrain.best_of_n", "BestOfNConfig", "BestOfN"),
    "judge_dpo": ("phiforge.posttrain.judge", "JudgeGuidedDPOPairsConfig", "JudgeGuidedDPOPairs"),
    "hallucination_refusal": ("phiforge.posttrain.refusal", "HallucinationRefusalConfig", "HallucinationRefusal"),
}


def _load(name: str, which: int):
    if name not in TECHNIQUES:
        raise ValueError(f"unknown technique {name!r}; choose one of {', '.join(sorted(TECHNIQUES))}")
    module = TECHNIQUES[name][0]
    module = importlib.import_module(module if "." in module else f"phiforge.synth.{module}")
    return getattr(module, TECHNIQUES[name][which])


def config_class(name: str):
    return _load(name, 1)


def step_class(name: str):
    return _load(name, 2)


def build_step(name: str, config: Any, models: dict):
    """The step object: model-calling steps get ``models`` (role -> backend or ModelRef)."""
    from phiforge.synth.base import GenerationStep

    cls = step_class(name)
    return cls(config, models) if issubclass(cls, GenerationStep) else cls(config)
