"""Tokenized sources and packing into fixed-length training sequences.

Documents are tokenized once, stored flat (``tokens`` + ``offsets``, uint32 on disk),
and packed per epoch: the documents are shuffled with a seed derived from
(run seed, source, epoch), each is followed by the end-of-text separator, and the
stream is cut into windows of ``seq_len + 1`` tokens with stride ``seq_len`` (inputs
are the first ``seq_len`` tokens, targets the last ``seq_len``). Attention may cross
a separator, as in GPT-style packing; the separator teaches the model where a
document ends. The Phi-4 report does not state its packing policy (UNCONFIRMED).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from phiforge.errors import DataError


class TokenSource:
    """All documents of one named source, tokenized, with per-epoch packing."""

    def __init__(self, name: str, tokens: np.ndarray, offsets: np.ndarray, eos_id: int):
        self.name, self.tokens, self.offsets, self.eos_id = name, tokens, offsets, int(eos_id)
        self._cache: tuple[int, int, np.ndarray] | None = None

    @classmethod
    def from_token_lists(cls, name: str, docs: Sequence[Sequence[int]], eos_id: int) -> "TokenSource":
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for d in docs for t in d), dtype=np.uint32, count=int(offsets[-1]))
        return cls(name, flat, offsets, eos_id)

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        """Unique tokens per epoch, separators included (the report's Table 5 unit)."""
        return int(self.offsets[-1]) + self.n_docs

    def n_chunks(self, seq_len: int) -> int:
        """Training sequences one epoch of this source yields."""
        return max(0, (self.n_tokens - 1) // seq_len)

    def check_fits(self, seq_len: int, where: str) -> None:
        if self.n_chunks(seq_len) < 1:
            raise DataError(f"{where}: source '{self.name}' has only {self.n_tokens} tokens, fewer than "
                            f"one sequence of {seq_len + 1}; add documents or lower the seq_len")

    def epoch_stream(self, epoch: int, seed: int) -> np.ndarray:
        """The packed token stream of one epoch (documents shuffled, separator after each)."""
        rng = np.random.default_rng([seed, zlib.crc32(self.name.encode()), epoch])
        order = rng.permutation(self.n_docs)
        starts, ends = self.offsets[order], self.offsets[order + 1]
        lengths = ends - starts + 1
        out = np.empty(int(lengths.sum()), dtype=np.int64)
        pos = 0
        for s, e in zip(starts.tolist(), ends.tolist()):
            n = e - s
            out[pos:pos + n] = self.tokens[s:e]
            out[pos + n] = self.eos_id
            pos += n + 1
        return out

    def chunk(self, index: int, seq_len: int, seed: int) -> np.ndarray:
        """Sequence ``index`` of the endless stream (epoch = index // chunks per epoch)."""
        per_epoch = self.n_chunks(seq_len)
        epoch, i = divmod(index, per_epoch)
        if self._cache is None or self._cache[:2] != (epoch, seed):
            self._cache = (epoch, seed, self.epoch_stream(epoch, seed))
        stream = self._cache[2]
        return stream[i * seq_len: i * seq_len + seq_len + 1]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / f"{self.name}.tokens.npy", self.tokens)
        np.save(directory / f"{self.name}.offsets.npy", self.offsets)

    @classmethod
    def load(cls, directory: str | Path, name: str, eos_id: int) -> "TokenSource":
        directory = Path(directory)
        return cls(name, np.load(directory / f"{name}.tokens.npy"),
                   np.load(directory / f"{name}.offsets.npy"), eos_id)


def tokenize_texts(tokenizer, texts: Sequence[str], batch_size: int = 1000) -> list[list[int]]:
    """Token ids of each text with the fast tokenizer's batch path.

    No special tokens are added, and special-token strings that occur *inside* raw
    text (e.g. a web page quoting ``<|endoftext|>``) are encoded as ordinary text
    (``split_special_tokens``), so documents cannot forge separators or chat turns.
    """
    out: list[list[int]] = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), add_special_tokens=False,
                        split_special_tokens=True)["input_ids"]
        out.extend(enc)
    return out
