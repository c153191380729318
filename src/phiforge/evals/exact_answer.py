"""Exact-answer accuracy on held-out word problems (the tiny recipe's evaluation).

Each item is a question with an integer answer. The model sees the textbook prompt
("Problem: ...\\nSolution:"), decodes greedily until the end-of-text token, and
scores 1 if the first ``Answer: N`` it writes equals the key. Items with no
parsable answer count as wrong and are reported as the extraction-failure rate
(simple-evals style, §7.1). Two trivial baselines put the accuracy in context:
always answering the most common training answer, and repeating the last number
of the question.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Sequence

import torch

from phiforge.data import tinymath
from phiforge.tokenize.chat import IM_END, uses_phi4_format

NUMBER = re.compile(r"-?\d+")


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 64,
                    device: str = "cpu", progress: Callable[[int, int], None] | None = None,
                    temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Completions for ``prompts`` in left-padded batches (KV cache on): greedy, or sampled.

    ``temperature > 0`` samples (seeded by ``seed``), the simple-evals protocol the
    report uses (t = 0.5, §7.1). Decoding stops at the end-of-text token and at
    ``<|im_end|>`` (the end of an assistant turn, for chat-format prompts).
    """
    model.eval()
    tokenizer.padding_side = "left"
    stops = _stop_ids(tokenizer, model)
    if temperature > 0:
        torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 \
        else {"do_sample": False}
    outs: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id, **sampling)
        new = gen[:, enc["input_ids"].shape[1]:]
        outs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
        if progress:
            progress(min(i + batch_size, len(prompts)), len(prompts))
    return outs


def _stop_ids(tokenizer, model=None) -> list[int]:
    """EOS and ``<|im_end|>``; for a model with its own chat template also its generation config's EOS ids
    (e.g. Llama 3 ends a turn with ``<|eot_id|>``, which is not its tokenizer's EOS)."""
    ids = [tokenizer.convert_tokens_to_ids(tokenizer.eos_token)]
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if im_end is not None and tokenizer.convert_ids_to_tokens(im_end) == IM_END:
        ids.append(im_end)
    if model is not None and not uses_phi4_format(tokenizer):
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        extra = eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
        ids += [int(i) for i in extra if int(i) not in ids]
    return ids


def score(items: Sequence[dict], completions: Sequence[str]) -> tuple[dict, list[dict]]:
    """Accuracy, extraction failures and per-step-count accuracy, plus per-item rows."""
    rows = []
    for item, text in zip(items, completions):
        pred = tinymath.extract_answer(text)
        rows.append({"id": item["id"], "question": item["question"], "answer": item["answer"],
                     "steps": item.get("steps"), "completion": text, "prediction": pred,
                     "correct": int(pred == item["answer"])})
    n = len(rows)
    by_steps: dict[int, list[int]] = {}
    for r in rows:
        by_steps.setdefault(r["steps"], []).append(r["correct"])
    summary = {"n": n, "accuracy": sum(r["correct"] for r in rows) / n,
               "extraction_failure_rate": sum(r["prediction"] is None for r in rows) / n,
               "accuracy_by_steps": {str(k): sum(v) / len(v) for k, v in sorted(by_steps.items())}}
    return summary, rows


def trivial_baselines(items: Sequence[dict], train_answers: Sequence[int]) -> dict[str, float]:
    """Accuracy of answering the modal training answer, and of echoing the question's last number."""
    mode = Counter(train_answers).most_common(1)[0][0] if train_answers else 0
    n = len(items)
    modal = sum(int(it["answer"] == mode) for it in items) / n
    last = sum(int(_last_number(it["question"]) == it["answer"]) for it in items) / n
    return {"most_common_answer": modal, "last_number_in_question": last}


def _last_number(text: str) -> int | None:
    nums = NUMBER.findall(text)
    return int(nums[-1]) if nums else None
