"""Corruption filter: real-looking prose, code, math, tables and CJK pass; planted junk is caught.

The fixtures are written for these tests (no external data). Outlier mode is
checked on a block of varied normal documents with a few planted junk ones: it
must find every planted one and drop none of the normal ones.
"""

import base64
import random

import pytest

from phiforge.curate.corruption import (
    FEATURES,
    CorruptionConfig,
    CorruptionFilter,
    features,
    fixed_reason,
)
from phiforge.dataflow.records import Record
from phiforge.dataflow.step import StepContext
from phiforge.errors import ConfigError

PROSE = """\
The lighthouse at the end of the harbour was built in 1868, when the town still depended on the herring fleet.
Its keeper climbed one hundred and twelve steps every evening to light the lamp, and again at dawn to put it out.
In bad weather he stayed at the top all night, trimming the wick and wiping salt from the glass so that the beam
would reach the boats beyond the reef. Records kept by the harbour master show that in the winter of 1881 the
light failed only once, during a storm that tore the roof from the fish market and flooded half of the lower town.

When electricity arrived in the 1920s, the lamp was replaced by a bulb and a clockwork motor that turned the lens.
The keeper's post was abolished a few years later, and the cottage at the foot of the tower became a small museum.
Visitors can still see the logbooks, written in a careful hand, which record the wind, the state of the sea and the
names of the ships that passed. Historians have used them to reconstruct the decline of the fishing industry, which
lost most of its boats between the two world wars as larger trawlers from other ports took over the northern grounds.
"""

CODE = '''\
import heapq
from dataclasses import dataclass, field


@dataclass(order=True)
class Task:
    priority: int
    name: str = field(compare=False)
    retries: int = field(default=0, compare=False)


class Scheduler:
    """Run tasks by priority; a failed task is retried up to max_retries times."""

    def __init__(self, max_retries: int = 3):
        self.max_retries = max_retries
        self._queue: list[Task] = []

    def submit(self, task: Task) -> None:
        heapq.heappush(self._queue, task)

    def run(self, execute) -> list[str]:
        failed = []
        while self._queue:
            task = heapq.heappop(self._queue)
            try:
                execute(task)
            except RuntimeError:
                if task.retries < self.max_retries:
                    task.retries += 1
                    self.submit(task)
                else:
                    failed.append(task.name)
        return failed


if __name__ == "__main__":
    scheduler = Scheduler()
    for i, name in enumerate(["fetch", "parse", "index"]):
        scheduler.submit(Task(priority=i, name=name))
    print(scheduler.run(lambda task: None))
'''

MATH = r"""
\section{The Cauchy--Schwarz inequality}
Let $V$ be a real inner product space. For all $u, v \in V$ we have
\begin{equation}
  |\langle u, v \rangle| \le \|u\| \, \|v\|,
\end{equation}
with equality if and only if $u$ and $v$ are linearly dependent.

\begin{proof}
If $v = 0$ both sides vanish. Otherwise consider, for $t \in \mathbb{R}$,
\[
  0 \le \|u - t v\|^2 = \|u\|^2 - 2t \langle u, v \rangle + t^2 \|v\|^2 .
\]
The right-hand side is a quadratic polynomial in $t$ that is never negative, so its discriminant satisfies
\[
  4 \langle u, v \rangle^2 - 4 \|u\|^2 \|v\|^2 \le 0 ,
\]
which is the claim. Taking $t = \langle u, v \rangle / \|v\|^2$ shows that equality forces $u = t v$.
\end{proof}

\begin{corollary}
For real numbers $a_1, \dots, a_n$ and $b_1, \dots, b_n$,
$\left( \sum_{i=1}^{n} a_i b_i \right)^2 \le \left( \sum_{i=1}^{n} a_i^2 \right) \left( \sum_{i=1}^{n} b_i^2 \right)$,
and the triangle inequality $\|u + v\| \le \|u\| + \|v\|$ follows by expanding $\|u+v\|^2$.
\end{corollary}
"""

TABLE = """\
## Monthly rainfall and temperature, 2023

| Month     | Rainfall (mm) | Mean max (°C) | Mean min (°C) | Rain days |
|-----------|--------------:|--------------:|--------------:|----------:|
| January   |          78.4 |           7.2 |           1.1 |        17 |
| February  |          52.9 |           8.9 |           1.8 |        12 |
| March     |          61.0 |          11.4 |           3.2 |        14 |
| April     |          44.7 |          14.6 |           5.0 |        10 |
| May       |          49.3 |          18.1 |           8.2 |        11 |
| June      |          55.8 |          21.0 |          11.3 |         9 |
| July      |          58.2 |          23.4 |          13.0 |         9 |
| August    |          70.6 |          22.9 |          12.8 |        12 |
| September |          63.1 |          19.8 |          10.6 |        11 |
| October   |          90.2 |          15.3 |           7.9 |        15 |
| November  |          96.5 |          10.6 |           4.4 |        18 |
| December  |          88.0 |           7.8 |           2.0 |        17 |

Totals: 808.7 mm over 155 rain days; the wettest month was November and the driest April.
"""

CHINESE = """\
长江是中国第一长河，发源于青藏高原的唐古拉山脉，自西向东流经青海、西藏、四川、云南、重庆、湖北、湖南、江西、安徽、江苏和上海，最后注入东海，全长约六千三百公里。长江流域面积广阔，气候温和湿润，土地肥沃，自古以来就是中国重要的农业区和人口聚集区。
在历史上，长江不仅是交通运输的大动脉，也孕育了灿烂的文化。楚文化、巴蜀文化和吴越文化都发源于长江流域。许多著名的诗人曾在江边留下不朽的诗篇，例如李白的《早发白帝城》描写了三峡的壮丽景色，杜甫也在夔州写下了大量作品。
二十世纪以来，人们在长江上修建了许多水利工程。三峡大坝是世界上装机容量最大的水电站，它在防洪、发电和航运方面发挥着重要作用，但也引起了关于生态环境和移民问题的广泛讨论。近年来，国家提出了“共抓大保护、不搞大开发”的方针，加强对长江生态系统的修复，禁止在重点水域捕鱼，以保护中华鲟和长江江豚等珍稀物种。
今天，长江经济带覆盖了全国约四成的人口和经济总量。上海、武汉、重庆等城市依托长江发展成为区域中心，沿江的港口和铁路网络把东部沿海与广大的内陆地区紧密地连接在一起。如何在经济发展与环境保护之间取得平衡，仍然是长江流域面临的重要课题。
对于普通游客来说，乘船游览三峡是了解长江最直观的方式。游船通常从重庆出发，经过瞿塘峡、巫峡和西陵峡，最后抵达宜昌，沿途可以参观白帝城、神女峰和屈原故里等名胜古迹。
"""

JAPANESE = """\
富士山は静岡県と山梨県にまたがる活火山で、標高は三千七百七十六メートルと日本で最も高い。なだらかな裾野を持つ円錐形の姿は古くから信仰と芸術の対象となり、葛飾北斎の「富嶽三十六景」をはじめ、数多くの絵画や和歌に描かれてきた。
最後の噴火は千七百七年の宝永噴火で、このとき江戸の町にも火山灰が降り積もったと記録されている。現在も気象庁によって常時観測が続けられており、山頂付近では夏でも気温が十度を下回ることが少なくない。
毎年七月から九月の登山シーズンには二十万人以上が山頂を目指す。多くの登山者は夜のうちに山小屋を出発し、山頂で「御来光」と呼ばれる日の出を迎える。二千十三年には「信仰の対象と芸術の源泉」として世界文化遺産に登録されたが、登山者の増加によるごみや混雑の問題も指摘されており、入山料の導入や人数の制限などの対策が議論されている。
山麓には富士五湖と呼ばれる五つの湖があり、湖面に映る「逆さ富士」は写真の名所として知られている。周辺には温泉や樹海、風穴などの見どころも多く、季節ごとに異なる表情を見せる富士山は、国内外から訪れる人々を今も魅了し続けている。冬の晴れた日には、東京都心の高層ビルからもその白い頂をはっきりと眺めることができる。
"""

NORMAL = {"prose": PROSE, "code": CODE, "math": MATH, "table": TABLE, "chinese": CHINESE, "japanese": JAPANESE}

def sloppy_cp1252(text: str) -> str:
    """UTF-8 bytes read as Windows-1252 the way browsers do (unmapped bytes become C1 controls)."""
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in text.encode("utf-8"))


def random_bytes_text(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(n)).decode("latin-1")


def prose_doc(seed: int) -> str:
    """A varied English-like document of about 1,500 characters: sentences of words drawn from PROSE."""
    rng, vocab, sentences = random.Random(seed), PROSE.split(), []
    while sum(map(len, sentences)) < 1500:
        words = " ".join(rng.choice(vocab) for _ in range(rng.randint(8, 20)))
        sentences.append(words.capitalize().rstrip(".,") + rng.choice([".", ".", ";", "?"]))
    return " ".join(sentences)


def run(step, records):
    ctx = StepContext(step.name)
    return list(step.run(iter(records), ctx)), ctx


def reasons_of(texts, **config):
    """{name: drop reason or None} after a fixed-mode pass."""
    records = [Record(name, text) for name, text in texts.items()]
    ctx = StepContext("corruption_filter")
    dropped = {}
    ctx._sink = lambda record, reason, step: dropped.__setitem__(record.id, reason)
    kept = list(CorruptionFilter(CorruptionConfig(mode="fixed", **config)).run(iter(records), ctx))
    assert len(kept) + len(dropped) == len(records)
    return {name: dropped.get(name) for name in texts}


def test_features_are_all_present_and_finite():
    for text in [*NORMAL.values(), "", "x", random_bytes_text(100)]:
        feats = features(text)
        assert list(feats) == list(FEATURES)
        assert all(isinstance(v, float) and v == v for v in feats.values())


def test_normal_documents_pass_the_fixed_checks():
    assert all(len(text) >= 500 for text in NORMAL.values())  # so the size-dependent checks apply
    assert reasons_of(NORMAL) == dict.fromkeys(NORMAL)


def test_random_bytes_are_binary_junk():
    texts = {f"bytes{n}": random_bytes_text(n, seed=n) for n in (100, 600, 2000)}
    assert reasons_of(texts) == dict.fromkeys(texts, "binary_junk")


def test_random_printable_text_is_binary_junk_by_compression():
    rng = random.Random(1)
    junk = "".join(chr(rng.randint(33, 126)) for _ in range(1500))  # all 94 printable ASCII characters
    assert features(junk)["control_fraction"] == 0
    assert reasons_of({"junk": junk}) == {"junk": "binary_junk"}


def test_a_repeated_sentence_is_repeated_boilerplate():
    texts = {"one_line": "Click here to subscribe to our newsletter. " * 500,
             "lines": "Click here to subscribe to our newsletter.\n" * 500}
    assert features(texts["one_line"])["compression_ratio"] < 0.02
    assert reasons_of(texts) == dict.fromkeys(texts, "repeated_boilerplate")


def test_mostly_duplicated_lines_are_repeated_boilerplate():
    nav = "\n".join(["Home", "About us", "Products and services", "Contact", "Privacy policy"])
    text = "\n".join([PROSE] + [nav] * 60)
    assert features(text)["dup_line_fraction"] > 0.5
    assert reasons_of({"nav": text}) == {"nav": "repeated_boilerplate"}


def test_mojibake_is_caught_in_several_languages():
    texts = {
        "french": sloppy_cp1252("Le café était fermé. À côté, l’hôtel proposait une crème brûlée « maison » "
                                "et un thé glacé. Les élèves ont visité l’église près de la forêt. ") * 4,
        "english_quotes": sloppy_cp1252("“It’s fine,” she said — and it wasn’t. ") * 10 + PROSE,
        "polish": sloppy_cp1252("Zażółć gęślą jaźń. Łódź leży w środkowej Polsce, nad rzeką Łódką. ") * 8,
    }
    assert "Ã©" in texts["french"] and "â€™" in texts["english_quotes"]
    assert reasons_of(texts) == dict.fromkeys(texts, "mojibake")


def test_accented_text_with_typographic_punctuation_is_not_mojibake():
    text = ("Não… disse a irmã – e a mãe respondeu: “São Paulo é longe”. À côté du château, "
            "l’âge d’or — « Ça va ? » — ÉTÉ ÂGÉ… Ångström’s Åland; Ärger’s Österreich. ") * 10
    assert features(text)["mojibake_fraction"] == 0


def test_a_single_mojibake_word_in_a_long_document_is_kept():
    text = PROSE * 2 + sloppy_cp1252(" Café.")
    assert reasons_of({"one": text}) == {"one": None}


def test_replacement_and_control_characters():
    lost = PROSE.replace("e", "\ufffd", 40)
    ansi = PROSE.replace("the ", "\x1b[1mthe ", 40)  # about 2% escape characters: control_chars, not binary
    nul = PROSE.replace(" ", "\x00")  # about 15% NUL: binary
    assert reasons_of({"lost": lost, "ansi": ansi, "nul": nul}) == {
        "lost": "replacement_chars", "ansi": "control_chars", "nul": "binary_junk"}


def test_short_documents_skip_size_dependent_checks():
    assert reasons_of({"short": "Hello hello hello hello.", "short_rep": "ok ok\n" * 40}) == {
        "short": None, "short_rep": None}
    assert fixed_reason(features("ok ok\n" * 40), 240, CorruptionConfig(min_chars=100)) == "repeated_boilerplate"


def test_metadata_keeps_features_of_dropped_records_and_the_ratio_of_kept_ones():
    records = [Record("good", PROSE), Record("bad", random_bytes_text(800))]
    dropped = []
    ctx = StepContext("corruption_filter", sink=lambda r, reason, step: dropped.append(r))
    kept = list(CorruptionFilter(CorruptionConfig(mode="fixed")).run(iter(records), ctx))
    assert [r.id for r in kept] == ["good"] and list(kept[0].metadata["corruption"]) == ["compression_ratio"]
    assert set(dropped[0].metadata["corruption"]) == set(FEATURES)
    assert ctx.counters["checked"] == 2 and ctx.drops == {"binary_junk": 1}


def planted_corpus():
    normal = {f"generated{i}": prose_doc(i) for i in range(60)}
    normal |= {f"{name}{i}": text for i in range(3) for name, text in NORMAL.items()}
    rng = random.Random(7)
    planted = {
        "base64": "Attachment follows.\n" + base64.b64encode(rng.randbytes(1200)).decode(),
        "hexdump": " ".join(rng.randbytes(400).hex()[i:i + 32] for i in range(0, 800, 32)) * 2,
        "spam": "buy cheap pills now " * 60,
        "rule": PROSE[:300] + "\n" + "=" * 1500,
    }
    return normal, planted


def test_outlier_mode_finds_every_planted_document_and_no_normal_one():
    normal, planted = planted_corpus()
    records = [Record(k, v) for k, v in {**normal, **planted}.items()]
    random.Random(3).shuffle(records)
    dropped = {}
    ctx = StepContext("corruption_filter", sink=lambda r, reason, step: dropped.__setitem__(r.id, reason))
    kept = list(CorruptionFilter(CorruptionConfig(mode="outlier")).run(iter(records), ctx))
    assert set(dropped) == set(planted), dropped
    assert all(reason.startswith("outlier_") for reason in dropped.values())
    assert len(kept) == len(normal) and ctx.counters["outlier_blocks"] == 1


def test_outlier_mode_uses_the_previous_blocks_statistics_for_a_small_last_block():
    normal, planted = planted_corpus()
    records = [Record(k, v) for k, v in normal.items()][:60] + [Record("base64", planted["base64"])]
    config = CorruptionConfig(mode="outlier", block_size=55, min_docs=50)
    kept, ctx = run(CorruptionFilter(config), records)
    assert list(ctx.drops) == ["outlier_mean_word_length"] and len(kept) == 60  # base64: one 1,600-char "word"
    assert ctx.counters["outlier_blocks"] == 2
    kept, ctx = run(CorruptionFilter(config), records[-6:])
    assert len(kept) == 6 and ctx.counters["outlier_blocks_unscored"] == 1  # nothing to compare against


def test_both_mode_runs_fixed_checks_first():
    normal, planted = planted_corpus()
    records = [Record(k, v) for k, v in normal.items()] + [Record("bytes", random_bytes_text(900)),
                                                          Record("base64", planted["base64"])]
    kept, ctx = run(CorruptionFilter(), records)
    assert ctx.drops == {"binary_junk": 1, "outlier_mean_word_length": 1} and len(kept) == len(normal)


@pytest.mark.parametrize("bad", [
    {"mode": "strict"}, {"max_compression_ratio": 1.5}, {"min_compression_ratio": 0.9},
    {"max_control_fraction": 0.2}, {"max_robust_z": -1}, {"outlier_features": ("entropy",)},
    {"min_docs": 0}, {"block_size": 10, "min_docs": 20}, {"max_chars": True},
])
def test_bad_config_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        CorruptionConfig(**bad)
