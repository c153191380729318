"""LocalBackend: our own decoding loop over a tiny random Phi-4-architecture model.

Batch composition: sampling is exactly reproducible across batch composition, not
just greedy. Each rollout draws from its own ``torch.Generator`` seeded by (seed,
prompt ids, sample number) and samples by inverse CDF, so only float noise from
left padding (~1e-7 in the logits) could change a token, and only if a uniform
lands that close to a CDF boundary. The tests below assert exact token equality.

Also covered: rows finishing at different times (batch compaction), generations
longer than a KV block, shared-prefix attention vs copied KV, a non-Phi architecture.
"""

import pytest
import torch

from phiforge.backends.base import Backend, SamplingParams
from phiforge.backends.local import LocalBackend
from phiforge.errors import CheckpointError, ConfigError
from phiforge.model.presets import build_config, build_model
from phiforge.tokenize import render_chat, render_conversation, train_bpe

CORPUS = [
    "the cat sat on the mat and looked at the hat",
    "a quick brown fox jumps over the lazy dog",
    "two plus two is four and three plus five is eight",
    "hello world, this is a tiny test of the local backend",
    "prefix reuse makes many rollouts from one prefix cheap",
] * 20
ATOL = 1e-4


@pytest.fixture(scope="module")
def tok():
    return train_bpe(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    cfg = build_config("tiny", dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=320))
    return build_model(cfg, seed=0).eval()


@pytest.fixture
def be(model, tok):
    return LocalBackend(model, tok, batch_size=32)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def tokens(result):
    return [[c.token_ids for c in cs] for cs in result.completions]


def count_prefills(model):
    """Records the batch shape of every multi-token forward (prefix passes, not decode steps)."""
    shapes = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape))
        if kwargs["input_ids"].shape[1] > 1 else None, with_kwargs=True)
    return shapes, handle


def test_is_a_backend(be):
    assert isinstance(be, Backend)


def test_prefix_reuse_logprobs_equal_scoring_from_scratch(be, model, tok):
    prefixes = [ids(tok, "the cat sat on the mat and"), ids(tok, "two"), ids(tok, "a quick brown fox jumps over")]
    assert len({len(p) for p in prefixes}) == 3  # different lengths: left padding is exercised
    shapes, handle = count_prefills(model)
    try:
        res = be.sample_continuations(prefixes, 4, SamplingParams(max_tokens=12, seed=3))
    finally:
        handle.remove()
    # One forward over the three distinct prefixes, not one per rollout.
    assert shapes == [(3, max(map(len, prefixes)))]
    for prefix, completions in zip(prefixes, res.completions):
        assert len(completions) == 4
        scored = be.score([prefix] * 4, [c.token_ids for c in completions])
        for c, ref in zip(completions, scored):
            assert len(c.logprobs) == len(c.token_ids) == len(ref)
            assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(ref), atol=ATOL)


def test_sharing_prefixes_or_not_gives_identical_samples(model, tok):
    prefixes = [ids(tok, "hello world, this"), ids(tok, "the")]
    params = SamplingParams(max_tokens=10, seed=5, top_p=0.9)
    shared = LocalBackend(model, tok, batch_size=4).sample_continuations(prefixes, 3, params)
    shapes, handle = count_prefills(model)
    try:
        naive = LocalBackend(model, tok, batch_size=4, share_prefixes=False).sample_continuations(prefixes, 3, params)
    finally:
        handle.remove()
    assert sorted(s[0] for s in shapes) == [2, 4]  # six rollouts, six prefix passes
    assert tokens(shared) == tokens(naive)


def test_batch_and_single_sampling_agree_exactly(be, model, tok):
    prompts = ["the cat", "two plus two is four and", "a"]
    params = SamplingParams(n=2, max_tokens=10, temperature=0.8, seed=11)
    batched = be.sample(prompts, params)
    small = LocalBackend(model, tok, batch_size=1).sample(prompts, params)
    for i, prompt in enumerate(prompts):
        alone = be.sample([prompt], params)
        assert tokens(alone)[0] == tokens(batched)[i] == tokens(small)[i]
        for a, b in zip(alone.completions[0], batched.completions[i]):
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def test_greedy_equals_hf_generate(be, model, tok):
    prompts = ["the cat sat", "hello world, this is a tiny", "two"]
    res = be.sample(prompts, SamplingParams(temperature=0, max_tokens=12))
    for prompt, (c,) in zip(prompts, res.completions):
        x = torch.tensor([ids(tok, prompt)])
        with torch.no_grad():
            ref = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=12,
                                 pad_token_id=tok.pad_token_id)[0, x.shape[1]:].tolist()
        assert c.token_ids == ref[:len(c.token_ids)]
        if c.finish_reason == "length":
            assert len(c.token_ids) == 12


def test_long_greedy_generation_grows_the_kv_blocks(be, model, tok):
    from transformers import GenerationConfig

    prompt = ids(tok, "the cat sat")
    x = torch.tensor([prompt])
    config = GenerationConfig(do_sample=False, max_new_tokens=140, eos_token_id=None, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        ref = model.generate(x, attention_mask=torch.ones_like(x), generation_config=config)[0, len(prompt):].tolist()
    be.stop_ids = set()
    params = SamplingParams(temperature=0, max_tokens=140)
    copied = be.sample([prompt], params).completions[0]  # one row: prefix KV copied
    shared = be.sample_continuations([prompt], 2, params).completions[0]  # two rows share the prefix KV
    assert [c.token_ids for c in copied + shared] == [ref] * 3


def test_shared_prefix_attention_equals_copied_kv_with_ragged_finishes(model, tok):
    prefixes = [ids(tok, "the cat sat on the mat and"), ids(tok, "two"), ids(tok, "a quick brown fox jumps over")]
    params = SamplingParams(max_tokens=16, seed=9, temperature=1.3)
    results = []
    for shared in (True, False):
        be = LocalBackend(model, tok, batch_size=32, shared_attention=shared)
        be.stop_ids = set(range(40, 120))  # common tokens: rows stop at many different steps
        results.append(be.sample_continuations(prefixes, 5, params))
        assert model.config._attn_implementation == "sdpa"  # restored after decoding
    lengths = {len(c.token_ids) for cs in results[0].completions for c in cs}
    assert len(lengths) > 3  # finishes really were ragged
    assert tokens(results[0]) == tokens(results[1])
    for a, b in zip(*(r.completions for r in results)):
        for x, y in zip(a, b):
            assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)


def test_other_architectures_use_the_generic_path(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                      bos_token_id=0, eos_token_id=0)).eval()
    be = LocalBackend(gpt2, tok)
    assert not be.shared_attention
    prefixes = [ids(tok, "the cat sat on"), ids(tok, "a")]
    res = be.sample_continuations(prefixes, 3, SamplingParams(max_tokens=8, seed=0))
    for prefix, completions in zip(prefixes, res.completions):
        scored = be.score([prefix] * 3, [c.token_ids for c in completions])
        for c, ref in zip(completions, scored):
            assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(ref), atol=ATOL)


def test_max_tokens_and_length_finish(be):
    res = be.sample(["the cat"], SamplingParams(n=3, max_tokens=5, seed=0))
    for c in res.completions[0]:
        assert c.finish_reason == "length" and len(c.token_ids) == len(c.logprobs) == 5


def test_stop_string_truncates_text_and_keeps_completing_token(be, tok):
    free = be.sample(["the cat"], SamplingParams(temperature=0, max_tokens=24)).completions[0][0]
    text = free.text
    start = next(i for i in range(2, len(text) - 1) if text[i:i + 2].isascii() and text[i:i + 2].strip())
    stop = text[start:start + 2]
    k = next(k for k in range(1, len(free.token_ids) + 1) if stop in tok.decode(free.token_ids[:k]))
    c = be.sample(["the cat"], SamplingParams(temperature=0, max_tokens=24, stop=("zzzq", stop))).completions[0][0]
    assert c.finish_reason == "stop"
    assert c.token_ids == free.token_ids[:k] and c.logprobs == pytest.approx(free.logprobs[:k])
    assert c.text == text[:text.find(stop)] and stop not in c.text


def test_eos_stops_and_stays_in_ids_not_text(be, tok):
    free = be.sample(["the cat"], SamplingParams(temperature=0, max_tokens=8)).completions[0][0]
    be.stop_ids = {free.token_ids[3]}  # pretend the 4th token is EOS
    c = be.sample(["the cat"], SamplingParams(temperature=0, max_tokens=8)).completions[0][0]
    assert c.finish_reason == "stop" and c.token_ids == free.token_ids[:4]
    assert c.text == tok.decode(free.token_ids[:3]) and len(c.logprobs) == 4


def test_default_stop_tokens_include_eos_and_im_end(be, tok):
    assert {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} <= be.stop_ids


def test_n_samples_and_seed_reproducibility(be):
    params = SamplingParams(n=4, max_tokens=10, seed=42)
    a, b = be.sample(["the cat", "two"], params), be.sample(["the cat", "two"], params)
    assert [len(cs) for cs in a.completions] == [4, 4]
    assert tokens(a) == tokens(b)
    assert len({tuple(t) for t in tokens(a)[0]}) > 1  # the n samples differ from each other
    other = be.sample(["the cat", "two"], SamplingParams(n=4, max_tokens=10, seed=43))
    assert tokens(other) != tokens(a)


def test_repeated_prompt_gets_distinct_samples_from_one_prefix_pass(be, model):
    shapes, handle = count_prefills(model)
    try:
        res = be.sample(["the cat", "the cat"], SamplingParams(n=2, max_tokens=8, seed=1))
    finally:
        handle.remove()
    assert [s[0] for s in shapes] == [1]
    both = tokens(res)
    assert both[0] != both[1]
    assert both[0] == tokens(be.sample(["the cat"], SamplingParams(n=2, max_tokens=8, seed=1)))[0]


def test_tiny_top_p_is_greedy(be):
    greedy = be.sample(["the cat", "hello"], SamplingParams(temperature=0, max_tokens=8))
    nucleus = be.sample(["the cat", "hello"], SamplingParams(top_p=1e-6, max_tokens=8, seed=0))
    assert tokens(greedy) == tokens(nucleus)


def test_chat_prompts_render_the_phi4_template(be, tok):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat?"}]
    expected = ids(tok, render_chat(messages, add_generation_prompt=True))
    assert tok.decode(be.chat_prompt(messages)) == ("<|im_start|>system<|im_sep|>be brief<|im_end|>"
                                                    "<|im_start|>user<|im_sep|>the cat?<|im_end|>"
                                                    "<|im_start|>assistant<|im_sep|>")
    assert be.chat_prompt(messages) == expected == render_conversation(tok, messages, True)[0]
    assert be.chat_prompt(messages, add_generation_prompt=False) == ids(tok, render_chat(messages))
    params = SamplingParams(max_tokens=6, seed=2)
    assert tokens(be.sample([messages], params)) == tokens(be.sample_continuations([expected], 1, params))


def test_token_id_prompts_are_not_reencoded(be, tok, monkeypatch):
    spelled = tok.convert_tokens_to_ids(list("the"))  # one id per character, unlike the BPE encoding
    assert spelled != ids(tok, "the") and tok.decode(spelled) == "the"

    def no_encoding(*args, **kwargs):
        raise AssertionError("token-id prompts must not be re-encoded")

    monkeypatch.setattr(type(tok), "__call__", no_encoding)
    monkeypatch.setattr(type(tok), "encode", no_encoding)
    res = be.sample([spelled], SamplingParams(max_tokens=6, seed=0))
    monkeypatch.undo()
    c = res.completions[0][0]
    assert res.usage.prompt_tokens == len(spelled)
    assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(be.score([spelled], [c.token_ids])[0]), atol=ATOL)


def test_usage_counts(model, tok):
    be = LocalBackend(model, tok)
    prompts = [ids(tok, "the cat"), ids(tok, "two plus two")]
    res = be.sample(prompts, SamplingParams(n=3, max_tokens=4, seed=0, stop=("zzzq",)))
    u = res.usage
    assert u.prompt_tokens == sum(map(len, prompts))  # once per prompt, not per sample
    assert u.completion_tokens == sum(len(c.token_ids) for cs in res.completions for c in cs) == 24
    assert u.calls == 2 and u.seconds > 0
    be.sample(["a"], SamplingParams(max_tokens=2, seed=0))
    assert be.usage.calls == 3 and be.usage.completion_tokens == 26
    assert be.usage.prompt_tokens == u.prompt_tokens + len(ids(tok, "a"))


def test_score_handles_ragged_batches_and_empty_continuations(be, model, tok):
    p1, p2 = ids(tok, "the cat sat on"), ids(tok, "a")
    c1, c2 = ids(tok, " the mat"), ids(tok, " quick brown fox jumps")
    got = be.score([p1, p2, p1], [c1, c2, []])
    assert got[2] == []
    for p, c, values in ((p1, c1, got[0]), (p2, c2, got[1])):
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0].float()
        ref = logits.log_softmax(-1)[len(p) - 1:-1].gather(-1, torch.tensor(c)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(values), ref, atol=ATOL)


def test_progress_and_training_flag(model, tok):
    seen = []
    be = LocalBackend(model, tok, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    model.train()
    try:
        be.sample(["the", "cat", "sat"], SamplingParams(max_tokens=2, seed=0))
        assert model.training  # restored after the call
    finally:
        model.eval()
    assert seen[-1] == (3, 3) and len(seen) == 2


def test_user_errors_say_what_to_change(be, tok):
    with pytest.raises(ConfigError, match="empty"):
        be.sample([[]], SamplingParams(max_tokens=2))
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        be.sample([[1, 10**6]], SamplingParams(max_tokens=2))
    with pytest.raises(ConfigError, match="one continuation per prompt"):
        be.score([[1, 2]], [])
    with pytest.raises(ConfigError, match="batch_size"):
        LocalBackend(be.model, tok, batch_size=0)
    with pytest.raises(ConfigError, match="expected text"):
        be.sample([3.5], SamplingParams(max_tokens=2))


def test_from_pretrained_uses_folder_tokenizer(model, tok, tmp_path):
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = LocalBackend.from_pretrained(tmp_path / "m", device="cpu")
    params = SamplingParams(temperature=0, max_tokens=6)
    assert tokens(loaded.sample(["the cat"], params)) == tokens(LocalBackend(model, tok).sample(["the cat"], params))
    assert loaded.name == "local:m"
    with pytest.raises(CheckpointError, match="no config.json"):
        LocalBackend.from_pretrained(tmp_path / "missing")


def test_single_token_options_of_one_prompt_share_a_forward(be, model, tok):
    """Multiple-choice options / judge score digits: one distribution answers every option, exactly."""
    prompt = tok("the cat sat on the", add_special_tokens=False)["input_ids"]
    other = tok("a dog", add_special_tokens=False)["input_ids"]
    options = [[5], [6], [7]]
    shared = be.score([prompt] * 3 + [other], options + [[8, 9]])
    alone = [be.score([prompt], [o])[0] for o in options] + be.score([other], [[8, 9]])
    assert [len(v) for v in shared] == [1, 1, 1, 2]
    for a, b in zip(shared, alone):
        assert a == pytest.approx(b, abs=1e-5)
