"""phiforge: an open implementation of the Phi-4 training recipe (arXiv:2412.08905).

Sub-packages mirror the recipe's stages and data flows one way through them:

    data      -> records, JSONL I/O, the tiny recipe's seeded problem generator
    tokenize  -> the Phi-4 (cl100k) tokenizer and from-scratch byte-level BPE, chat template
    model     -> Phi-4 architecture presets on Hugging Face ``Phi3ForCausalLM``, checkpoints
    train     -> packing, mixture sampler, LR schedule, the pretraining / midtraining trainer
    evals     -> evaluation of checkpoints
    report    -> the self-contained ``report.html`` of a run
    recipe    -> typed recipe config, loading and validation
    run       -> run directory, stage markers and the stage pipeline
"""

__version__ = "0.1.0"
