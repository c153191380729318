"""The tiny recipe's web source as a crawl would deliver it: HTML forum pages, with the usual dirt.

Why: the Phi-4 report's organic web data goes through a custom HTML extractor,
language ID, quality classifiers, corruption filters, dedup and decontamination
(§2.3, App. B). To exercise that pipeline on the tiny recipe, every web post is
also written as a forum-thread page (navigation, cookie banner, ads, sidebar,
footer around two posts), and planted among them, in known numbers:

* ``duplicate``: the same thread crawled again (other boilerplate, same posts);
* ``near_duplicate``: a repost with a small edit (another user, a word added);
* ``foreign``: the thread in French, Spanish or German;
* ``junk``: binary garbage decoded as Latin-1, or one sentence repeated hundreds of times;
* ``leaked``: a held-out eval problem with its answer (the contamination the
  decontamination step must catch, report App. B);
* ``empty``: a page whose content never loaded (only boilerplate).

Each page's ``plant`` field says what it is, so the curation report can count
how many of each kind every filter caught. The plain-text ``train/web.jsonl``
(used when curation is off, and by the synth stage's seeds) is unchanged.
"""

from __future__ import annotations

import html
import random
import zlib
from dataclasses import dataclass

FOREIGN = {
    "fr": ("{name} avait {start} {obj} puis {ops}. combien maintenant ?", "c'est {answer} je pense"),
    "es": ("{name} tenía {start} {obj} y luego {ops}. ¿cuántos tiene ahora?", "creo que son {answer}"),
    "de": ("{name} hatte {start} {obj}, dann {ops}. wie viele sind es jetzt?", "ich glaube {answer}"),
}
OBJECT_WORDS = {"fr": "objets", "es": "cosas", "de": "Sachen"}
NAV = ['<a href="/">Home</a>', '<a href="/forums">Forums</a>', '<a href="/new">New posts</a>',
       '<a href="/login">Log in</a>', '<a href="/register">Register</a>']
ADS = ["Buy cheap calculators today! Free shipping on all orders.", "Learn math fast with our app. Download now!",
       "Top 10 tutors near you. Book a free lesson.", "Sponsored: the best graph paper money can buy."]
TITLES = ["quick question", "help pls", "homework help", "word problem", "can someone check this",
          "stuck on this one", "easy one?", "math question"]
RELATED = ["How to add fractions?", "Homework help thread #42", "Is 0 even?", "Mental math tricks",
           "Word problems are hard", "Need help with percentages"]


@dataclass(frozen=True)
class WebPlants:
    """How many pages of each kind to plant (fractions of the web posts, or counts)."""

    duplicate: float = 0.03
    near_duplicate: float = 0.03
    foreign: float = 0.02
    junk: float = 0.01
    empty: float = 0.005
    leaked: int = 12


def forum_page(title: str, posts: list[tuple[str, str, str]], rng: random.Random) -> str:
    """One thread page: boilerplate around ``(author, date, text)`` posts."""
    body = "\n".join(
        f'<div class="post" id="post{i}"><div class="post-header"><span class="author">{html.escape(a)}</span> '
        f'<span class="date">{d}</span></div><div class="post-body"><p>{html.escape(t).replace(chr(10), "<br>")}'
        f"</p></div></div>" for i, (a, d, t) in enumerate(posts))
    related = "".join(f"<li><a href=\"/t/{rng.randrange(10**6)}\">{r}</a></li>" for r in rng.sample(RELATED, 3))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} - MathForum'
            f'</title><script>var analytics = {rng.randrange(10**9)};</script></head>\n<body>\n'
            f'<nav class="menu">{" | ".join(NAV)}</nav>\n'
            f'<div class="cookie-banner">We use cookies to improve your experience. <button>Accept</button></div>\n'
            f'<div id="main"><h1>{html.escape(title)}</h1>\n<div class="thread">\n{body}\n</div></div>\n'
            f'<aside class="sidebar"><h3>Related threads</h3><ul>{related}</ul></aside>\n'
            f'<div class="ad-banner">{rng.choice(ADS)}</div>\n'
            f'<footer>&copy; 2024 MathForum &middot; <a href="/privacy">Privacy</a> &middot; '
            f'<a href="/terms">Terms</a></footer>\n</body></html>\n')


def post_page(text: str, rng: random.Random, thread: str | None = None) -> str:
    """A tiny-recipe web post (``[thread] question\n> user: reply``) as a forum page.

    The thread's title, asker and dates are a function of the post, so a re-crawl of
    the same thread (a ``duplicate`` page) differs only in the page's boilerplate, and
    an edited repost (``thread`` = the original post) keeps the thread's metadata.
    """
    first, _, rest = text.partition("\n")
    question = first.removeprefix("[thread] ").strip()
    user, _, reply = rest.removeprefix("> ").partition(": ")
    own = random.Random(zlib.crc32((thread or text).encode()))
    asker = own.choice(["newbie", "student22", "confused", "mathlearner", "kid_genius"])
    posts = [(asker, _date(own), question)]
    if reply:
        posts.append((user or "anon", _date(own), reply))
    return forum_page(own.choice(TITLES), posts, rng)


def _date(rng: random.Random) -> str:
    return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def web_pages(rows: list[dict], eval_items: list[dict], seed: int, plants: WebPlants = WebPlants()) -> list[dict]:
    """``{"id", "text" (HTML), "plant"}`` rows: every post as a page, plus the planted pages, shuffled."""
    rng = random.Random(seed + 7)
    pages = [{"id": f"page-{r['id']}", "text": post_page(r["text"], rng), "plant": "none"} for r in rows]
    n = len(rows)
    pages += [_duplicate(rows, rng, i) for i in range(_count(plants.duplicate, n))]
    pages += [_near_duplicate(rows, rng, i) for i in range(_count(plants.near_duplicate, n))]
    pages += [_foreign(rows, rng, i) for i in range(_count(plants.foreign, n))]
    pages += [_junk(rng, i) for i in range(_count(plants.junk, n))]
    pages += [_empty(rng, i) for i in range(_count(plants.empty, n))]
    pages += [_leaked(it, rng, i) for i, it in enumerate(eval_items[:plants.leaked])]
    rng.shuffle(pages)
    return pages


def _count(share: float, n: int) -> int:
    return max(1, round(share * n)) if share > 0 else 0


def _duplicate(rows: list[dict], rng: random.Random, i: int) -> dict:
    return {"id": f"dup-{i:05d}", "text": post_page(rng.choice(rows)["text"], rng), "plant": "duplicate"}


def _near_duplicate(rows: list[dict], rng: random.Random, i: int) -> dict:
    text = rng.choice(rows)["text"]
    first, _, rest = text.partition("\n")
    edited = f"{first} {rng.choice(['pls help', 'thanks in advance', 'urgent'])}\n{rest}"
    return {"id": f"near-{i:05d}", "text": post_page(edited, rng, thread=text), "plant": "near_duplicate"}


def _foreign(rows: list[dict], rng: random.Random, i: int) -> dict:
    lang = rng.choice(sorted(FOREIGN))
    q, a = FOREIGN[lang]
    name, start, steps = rng.choice(["Marie", "Lucas", "Sofía", "Jonas"]), rng.randint(2, 30), rng.randint(1, 3)
    ops = ", ".join(f"+{rng.randint(1, 9)}" for _ in range(steps))
    text = q.format(name=name, start=start, obj=OBJECT_WORDS[lang], ops=ops)
    posts = [("utilisateur" if lang == "fr" else "usuario" if lang == "es" else "nutzer", _date(rng), text),
             ("anon", _date(rng), a.format(answer=start + 5))]
    return {"id": f"foreign-{i:05d}", "text": forum_page(text[:60], posts, rng), "plant": "foreign", "lang": lang}


def _junk(rng: random.Random, i: int) -> dict:
    if i % 2 == 0:
        noise = bytes(rng.randrange(256) for _ in range(3000)).decode("latin-1")
        body = html.escape(noise)
    else:
        body = "Click here to subscribe to our newsletter! " * 300
    posts = [("spam", _date(rng), body)]
    return {"id": f"junk-{i:05d}", "text": forum_page("attachment", posts, rng), "plant": "junk"}


def _empty(rng: random.Random, i: int) -> dict:
    page = forum_page("Loading...", [], rng)
    return {"id": f"empty-{i:05d}", "text": page, "plant": "empty"}


def _leaked(item: dict, rng: random.Random, i: int) -> dict:
    """A held-out eval problem posted verbatim with its answer: the leak decontamination must catch."""
    posts = [("homeworkhelper", _date(rng), f"Problem: {item['question']}"),
             ("solver", _date(rng), f"Answer: {item['answer']}")]
    return {"id": f"leak-{i:05d}", "text": forum_page("exam question", posts, rng), "plant": "leaked",
            "eval_id": item.get("id")}
