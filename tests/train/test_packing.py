import numpy as np

from phiforge.errors import DataError
from phiforge.train.packing import TokenSource

import pytest

EOS = 0


def _source(n_docs=10, seed=0) -> TokenSource:
    rng = np.random.default_rng(seed)
    docs = [list(rng.integers(1, 50, size=rng.integers(3, 20))) for _ in range(n_docs)]
    return TokenSource.from_token_lists("s", docs, EOS), docs


def test_epoch_stream_has_every_document_once_with_separators():
    src, docs = _source()
    stream = src.epoch_stream(epoch=0, seed=1)
    assert len(stream) == src.n_tokens == sum(len(d) + 1 for d in docs)
    pieces = np.split(stream, np.where(stream == EOS)[0] + 1)[:-1]
    got = sorted(tuple(p[:-1].tolist()) for p in pieces)
    assert got == sorted(tuple(int(t) for t in d) for d in docs)
    assert stream[-1] == EOS


def test_epochs_shuffle_differently_but_deterministically():
    src, _ = _source(50)
    a, b = src.epoch_stream(0, 1), src.epoch_stream(1, 1)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, src.epoch_stream(0, 1))


def test_chunks_are_consecutive_windows_with_one_token_overlap():
    src, _ = _source(40)
    seq = 16
    stream = src.epoch_stream(0, 3)
    for i in range(src.n_chunks(seq)):
        chunk = src.chunk(i, seq, 3)
        assert len(chunk) == seq + 1
        assert np.array_equal(chunk, stream[i * seq: i * seq + seq + 1])
    # the index after the last chunk of epoch 0 is the first chunk of epoch 1
    nxt = src.chunk(src.n_chunks(seq), seq, 3)
    assert np.array_equal(nxt, src.epoch_stream(1, 3)[:seq + 1])


def test_save_load_roundtrip(tmp_path):
    src, _ = _source()
    src.save(tmp_path)
    back = TokenSource.load(tmp_path, "s", EOS)
    assert np.array_equal(back.tokens, src.tokens) and np.array_equal(back.offsets, src.offsets)


def test_source_too_small_for_one_sequence():
    src = TokenSource.from_token_lists("small", [[1, 2, 3]], EOS)
    with pytest.raises(DataError, match="source 'small' has only 4 tokens"):
        src.check_fits(64, "pretrain.mixture")


def test_special_token_strings_in_text_are_not_separators():
    from phiforge.tokenize import train_bpe
    from phiforge.train.packing import tokenize_texts

    tok = train_bpe(["hello world"] * 20, vocab_size=300)
    ids = tokenize_texts(tok, ["a <|endoftext|> b"])[0]
    assert tok.convert_tokens_to_ids("<|endoftext|>") not in ids
