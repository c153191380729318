"""MGSM as simple-evals runs it: grade-school math in 11 languages, the number after "Answer:" in each.

Why: MGSM is the report's multilingual math row (80.6 for phi-4; report §6, Table 1,
simple-evals at temperature 0.5), and the SFT mix adds data in 40 languages (§6.1 of
``docs/phi4-recipe.md``). Each language gets an instruction in that language asking for
the reasoning first and the integer answer alone on the last line after the
language's own answer word (Answer, Antwort, Respuesta, Réponse, 答え, Ответ, Jibu,
答案, উত্তর, సమాధానం, คำตอบ); the wording is ours, the request is simple-evals'.

Extraction as simple-evals: the text after the *last* occurrence of the answer word,
commas removed, its last number (digits with an optional decimal part; no sign);
a trailing ".", or a decimal part of zeros, is dropped ("18.00" is 18). No answer
word or no number is an extraction failure. The score is an exact string match with
the key (commas removed). As in simple-evals, ``\\d`` also matches non-ASCII digits, and
an answer written in them ("৫") does not match an ASCII key.

Items: ``question``, ``answer`` and ``language``; simple-evals' TSV spelling
``inputs``/``targets``/``lang`` and the Hugging Face release's ``answer_number`` work
too. Items without a language use ``params = {"language": ...}`` (default "en"), for
files that hold one language each, as both releases do. Metrics: ``accuracy``,
``accuracy/<language>``, and the Latin/non-Latin script groups simple-evals reports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from phiforge.errors import DataError
from phiforge.evals.task import Grade, Task
from phiforge.evals.tasks.simple_evals import (accuracy_by, load_any_schema, overall_accuracy, pick, row_value,
                                               user_message)

SCHEMAS = (("question", "answer_number"), ("question", "answer"), ("inputs", "targets"))
LATIN = ("de", "en", "es", "fr", "sw")

ANSWER_PREFIX = {"en": "Answer", "bn": "উত্তর", "de": "Antwort", "es": "Respuesta", "fr": "Réponse", "ja": "答え",
                 "ru": "Ответ", "sw": "Jibu", "te": "సమాధానం", "th": "คำตอบ", "zh": "答案"}

INSTRUCTIONS = {
    "en": 'Solve the following math problem. Write out your reasoning step by step before the final answer, '
          'then give the final answer by itself on the last line in the form "Answer:". Put nothing but the '
          'integer answer after "Answer:".',
    "bn": 'নিচের গণিত সমস্যাটি সমাধান করুন। চূড়ান্ত উত্তরের আগে ধাপে ধাপে আপনার যুক্তি লিখুন, তারপর শেষ '
          'লাইনে শুধু চূড়ান্ত উত্তরটি "উত্তর:" আকারে দিন। "উত্তর:" এর পরে পূর্ণসংখ্যার উত্তর ছাড়া আর কিছু '
          'লিখবেন না।',
    "de": 'Löse die folgende Mathematikaufgabe. Schreibe deine Überlegungen Schritt für Schritt auf, bevor '
          'du die endgültige Antwort gibst, und gib die endgültige Antwort dann allein in der letzten Zeile '
          'im Format "Antwort:" an. Schreibe nach "Antwort:" nichts außer der ganzzahligen Antwort.',
    "es": 'Resuelve el siguiente problema de matemáticas. Escribe tu razonamiento paso a paso antes de la '
          'respuesta final y luego da la respuesta final sola en la última línea con el formato '
          '"Respuesta:". No escribas nada después de "Respuesta:" salvo la respuesta entera.',
    "fr": 'Résolvez le problème de mathématiques suivant. Rédigez votre raisonnement étape par étape avant '
          'la réponse finale, puis donnez la réponse finale seule sur la dernière ligne au format '
          '"Réponse:". N\'écrivez rien d\'autre que la réponse entière après "Réponse:".',
    "ja": '次の数学の問題を解いてください。最終的な答えの前に、推論の過程を順を追って書いてください。'
          'そして最後の行に、最終的な答えだけを "答え:" の形式で書いてください。'
          '"答え:" の後には整数の答え以外は何も書かないでください。',
    "ru": 'Решите следующую математическую задачу. Прежде чем дать окончательный ответ, изложите ход '
          'рассуждений шаг за шагом, а затем запишите окончательный ответ отдельно в последней строке в '
          'формате "Ответ:". После "Ответ:" не пишите ничего, кроме целочисленного ответа.',
    "sw": 'Tatua tatizo lifuatalo la hesabu. Andika hatua za hoja zako moja baada ya nyingine kabla ya jibu '
          'la mwisho, kisha toa jibu la mwisho peke yake kwenye mstari wa mwisho kwa muundo wa "Jibu:". '
          'Usiandike chochote baada ya "Jibu:" isipokuwa jibu la namba kamili.',
    "te": 'కింది గణిత సమస్యను పరిష్కరించండి. తుది సమాధానానికి ముందు మీ తర్కాన్ని దశలవారీగా రాయండి, ఆపై చివరి '
          'పంక్తిలో తుది సమాధానాన్ని మాత్రమే "సమాధానం:" రూపంలో ఇవ్వండి. "సమాధానం:" తర్వాత పూర్ణాంక సమాధానం '
          'తప్ప మరేమీ రాయవద్దు.',
    "th": 'จงแก้โจทย์คณิตศาสตร์ต่อไปนี้ เขียนขั้นตอนการให้เหตุผลทีละขั้นก่อนให้คำตอบสุดท้าย '
          'แล้วให้คำตอบสุดท้ายเพียงอย่างเดียวในบรรทัดสุดท้ายในรูปแบบ "คำตอบ:" หลัง "คำตอบ:" '
          'ห้ามเขียนสิ่งอื่นนอกจากคำตอบที่เป็นจำนวนเต็ม',
    "zh": '请解答下面的数学题。在给出最终答案之前，先逐步写出推理过程，'
          '然后在最后一行单独以 "答案:" 的格式给出最终答案。"答案:" 后面除了整数答案之外不要写任何内容。',
}
"""Per-language instructions; the question follows after a blank line."""

_NUMBER = re.compile(r"\d+\.?\d*")


def extract_mgsm_number(response: str, language: str = "en") -> str | None:
    """The last number after the last answer word of ``language`` ("1,234.0" gives "1234.0"), else None."""
    prefix = ANSWER_PREFIX[language]
    if prefix not in response:
        return None
    numbers = _NUMBER.findall(response.split(prefix)[-1].strip().replace(",", ""))
    return numbers[-1].rstrip(".") if numbers else None


def same_number(key: str, prediction: str) -> bool:
    """simple-evals' match: "18.0" and "18." are 18; commas ignored; otherwise exact strings."""
    if "." in prediction:
        prediction = prediction.rstrip("0").rstrip(".")
    return key.replace(",", "") == prediction.replace(",", "")


def canonical_key(raw, item_id: str) -> str:
    """The key as simple-evals stores it: an integer string ("1,234" and 1234.0 both give "1234")."""
    key = str(raw).strip().replace(",", "")
    if "." in key:
        key = key.rstrip("0").rstrip(".")
    if not re.fullmatch(r"-?\d+", key):
        raise DataError(f"task 'mgsm': item {item_id!r}: answer {raw!r} is not an integer")
    return key


class MGSM(Task):
    """Multilingual grade-school math (Shi et al. 2022), 0-shot CoT in the question's language."""

    name = "mgsm"
    description = "MGSM, 11 languages, 0-shot chain of thought, number after the local 'Answer:' (simple-evals)"
    max_tokens = 2048
    required_fields = SCHEMAS[1]
    known_params = ("language",)

    def load(self) -> list[dict]:
        items, schema = load_any_schema(self.options.path, self.name, SCHEMAS)
        return [self._canonical(item, schema) for item in items]

    def _canonical(self, item: dict, schema: tuple[str, ...]) -> dict:
        language = str(pick(item, "language", "lang", default=None) or self.param("language", "en")).lower()
        if language not in INSTRUCTIONS:
            raise DataError(f"task 'mgsm': item {item['id']!r}: language {language!r} is not one of "
                            f"{', '.join(sorted(INSTRUCTIONS))}")
        return {"id": item["id"], "question": str(item[schema[0]]), "language": language,
                "answer": canonical_key(item[schema[1]], item["id"])}

    def prompt(self, item: dict, repeat: int):
        return user_message(f"{INSTRUCTIONS[item['language']]}\n\n{item['question']}")

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        got = extract_mgsm_number(response, item["language"])
        extra = {"language": item["language"]}
        if got is None:
            return Grade(0.0, None, "no_answer", extra)
        right = same_number(item["answer"], got)
        return Grade(float(right), got, "correct" if right else "incorrect", extra)

    def metrics(self, groups: Sequence[Sequence[dict]]) -> dict[str, float]:
        by_script = [[{**r, "script": "latin" if row_value(r, "language") in LATIN else "non_latin"} for r in g]
                     for g in groups if g and row_value(g[0], "language") is not None]
        return {"accuracy": overall_accuracy(groups), **accuracy_by(groups, "language"),
                **accuracy_by(by_script, "script")}

    @property
    def metric_is_item_mean(self) -> bool:
        return True  # the headline is still the mean of per-item scores; per-language keys are extras
