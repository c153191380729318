"""Synthetic data: the Phi-4 report's generation techniques as data-stage steps (§2.1-2.2, App. D).

Each technique is a ``phiforge.dataflow.Step`` that calls its models only through a
``phiforge.backends`` ``Backend`` (``synth.base.GenerationStep``), renders its
prompts from versioned template files (``synth/templates/``), validates structured
model output against a schema and re-asks on invalid JSON (``synth.jsonask``), and
records how every output was made in its ``Provenance``.
"""
