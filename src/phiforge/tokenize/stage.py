"""The ``tokenizer`` stage: make the tokenizer, then encode every source once.

``kind = "bpe"`` trains a byte-level BPE on the run's own training documents (the
right choice for a from-scratch tiny model: a 100K vocabulary would be most of a
few-million-parameter model). ``kind = "phi4"`` builds the real Phi-4 tokenizer
(cl100k_base + Phi-4 special tokens, report §3). Either way the stage writes the
Hugging Face tokenizer files and ``tokens/<split>/<source>.{tokens,offsets}.npy``,
which pretraining and midtraining read without re-tokenizing.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from phiforge.data.records import read_jsonl
from phiforge.run.context import StageContext
from phiforge.train.packing import TokenSource, tokenize_texts


def run_tokenizer(ctx: StageContext) -> dict:
    data_dir = ctx.input_dir("data")
    cfg = ctx.recipe.tokenizer
    tok = _make_tokenizer(ctx, data_dir)
    from phiforge.tokenize.bpe import save_tokenizer
    save_tokenizer(tok, ctx.stage_dir / "hf")
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    stats = {"kind": cfg.kind, "vocab_size": len(tok), "eos_id": eos, "sources": {}}
    for split in ("train", "valid"):
        for path in _source_files(ctx, data_dir, split):
            src = _encode_file(tok, path, eos)
            src.save(ctx.stage_dir / "tokens" / split)
            stats["sources"][f"{split}/{src.name}"] = {"docs": src.n_docs, "tokens": src.n_tokens}
            ctx.log(f"encoded {split}/{src.name}: {src.n_docs:,} docs, {src.n_tokens:,} tokens")
    return stats


def _make_tokenizer(ctx: StageContext, data_dir: Path):
    cfg = ctx.recipe.tokenizer
    if cfg.kind == "phi4":
        from phiforge.tokenize.phi4 import phi4_tokenizer
        return phi4_tokenizer()
    from phiforge.tokenize.bpe import train_bpe
    texts = itertools.chain.from_iterable(
        (r["text"] for r in itertools.islice(read_jsonl(p), cfg.train_docs))
        for p in _source_files(ctx, data_dir, "train"))
    tok = train_bpe(texts, cfg.vocab_size, split_digits=cfg.split_digits)
    ctx.log(f"trained byte-level BPE: {len(tok)} tokens")
    return tok


def _source_files(ctx: StageContext, data_dir: Path, split: str) -> list[Path]:
    """The data stage's sources, plus the synth stage's new ones (train split only) when it ran."""
    from phiforge.curate.stage import curated_files

    curated = curated_files(ctx, split)  # curated sources replace the data stage's versions
    files = [curated.get(p.stem, p) for p in sorted((data_dir / split).glob("*.jsonl"))]
    if split == "train" and ctx.recipe.synth.enabled and ctx.has_output("synth"):
        from phiforge.synth.stage import load_synth_sources

        files += load_synth_sources(ctx.input_dir("synth"))
    return files


def _encode_file(tok, path: Path, eos: int) -> TokenSource:
    texts = [r["text"] for r in read_jsonl(path, required=("text",))]
    return TokenSource.from_token_lists(path.stem, tokenize_texts(tok, texts), eos)


def load_run_tokenizer(tokenizer_dir: Path):
    from phiforge.tokenize.bpe import load_tokenizer
    return load_tokenizer(tokenizer_dir / "hf")


def load_sources(tokenizer_dir: Path, split: str, names, eos: int) -> dict[str, TokenSource]:
    return {n: TokenSource.load(tokenizer_dir / "tokens" / split, n, eos) for n in names
            if (tokenizer_dir / "tokens" / split / f"{n}.tokens.npy").is_file()}
