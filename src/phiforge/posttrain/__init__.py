"""Post-training (Phi-4 report §4): SFT, Pivotal Token Search with token-level DPO,
judge-guided DPO and hallucination-refusal data.

Modules: ``sft`` (masked chat SFT), ``best_of_n`` (judge-picked SFT responses),
``pts`` (the search engine), ``pairs`` (DPO pair files on exact token ids),
``dpo`` (the DPO objective and trainer), ``judge`` (any-vs-any judged pairs),
``refusal`` (refusal SFT/DPO data), ``stages`` (the recipe stages).
"""
