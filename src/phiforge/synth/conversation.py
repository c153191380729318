"""Multi-agent conversations from snippets (Phi-4 report §2.2, App. D.1.3).

The paper builds conversations from a snippet with several agents: an initial turn
presents the snippet's core information (an optional participant profile sets tone
and style); further turns by agents speaking in turn steer the conversation,
summarise earlier context and introduce new scenarios consistent with it; after
each turn a self-revision step evaluates the response and brainstorms the best next
move to maximise complexity and nuance. Our step:

1. **Profiles**: from the config (``profiles``), else generated per snippet as JSON
   (``generate_profiles``; on invalid JSON after re-asks we fall back to
   :data:`DEFAULT_PROFILES` and count ``profiles_fallback``), else the defaults.
2. **Turn 0**: agent 0 presents the snippet (``conversation_opening``).
3. **Turns 1..n-1**: agent ``t % num_agents`` speaks, prompted with its profile, the
   snippet as background, the transcript and a *move* from ``moves`` (steer /
   summarise / new consistent scenario; picked by a stable hash of record id and turn,
   so reruns are identical and conversations differ).
4. **Self-revision** after every turn, ``revisions_per_turn`` times (default 1): the
   agent assesses its draft, names the best next move and rewrites it
   (``ASSESSMENT / BEST NEXT MOVE / REVISED MESSAGE``); an unparsable or empty
   rewrite keeps the draft (``revision_unparsed``).

All conversations of a batch advance together: one model call per turn (and per
revision pass) for the whole batch, never one per record.

Output: ``messages`` with roles alternating ``user`` / ``assistant`` by turn parity
(turn 0 is ``user``: the opener presents the material, the other agent answers), so
the record is ready for SFT; the raw agent names per message, the profiles and the
moves are in ``metadata``. With more than two agents the parity mapping still
alternates roles; the names stay exact in ``metadata["agents"]``.

Drops: an empty turn (draft and revisions empty) ends the conversation; with
``truncate_on_empty=False`` the record is dropped as ``empty_turn``, otherwise the
turns so far are kept if at least ``min_turns`` remain, else ``conversation_too_short``
(after trimming a trailing user turn when ``end_on_assistant``). An empty snippet is
dropped as ``empty_snippet``.

Deviation: the paper does not give the number of turns, agents, or revisions per turn
(UNCONFIRMED; defaults 6, 2, 1), nor whether revision is a separate call: ours is.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterator

from pydantic import BaseModel, Field, model_validator

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import get_template
from phiforge.recipe.schema import Section
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.synth.jsonask import ask_json

TECHNIQUE = "conversation"  # the recipe registry's name for this step


class AgentProfile(Section):
    """One participant: a name, a role (who they are), a tone/style."""

    name: str = Field(min_length=1, max_length=60)
    role: str = Field("a participant", min_length=1, description="who they are and what they know")
    style: str = Field("clear and thoughtful", min_length=1, description="tone and style of speaking")


DEFAULT_PROFILES = (
    AgentProfile(name="Sam", role="a curious student who has just read about the topic",
                 style="informal and inquisitive; asks probing follow-ups and tests ideas with own examples"),
    AgentProfile(name="Dr. Rivera", role="an expert in the topic's field",
                 style="precise and patient; explains step by step, points out subtleties and wider links"),
    AgentProfile(name="Maya", role="a practitioner who applies the topic at work",
                 style="pragmatic; brings real cases, trade-offs and failure modes"),
    AgentProfile(name="Leo", role="a sceptical reviewer", style="critical but fair; challenges assumptions"),
)

DEFAULT_MOVES = (
    "steer the conversation deeper: raise a subtle point, a common misconception or an edge case of what "
    "was just said, and reason it through.",
    "briefly summarise the key points so far in your own words, then build on them with a new insight or "
    "a harder question.",
    "introduce a new, concrete scenario or worked example that is consistent with everything said so far, "
    "and connect it to the topic.",
)


class MultiAgentConversationConfig(Section):
    """Settings of :class:`MultiAgentConversation` (Phi-4 report App. D.1.3)."""

    turns: int = Field(6, ge=1, le=40, description="turns per conversation, including the opening. "
                                                   "UNCONFIRMED: the paper does not say; 6 = 3 exchanges")
    min_turns: int = Field(2, ge=1, description="fewest turns a kept conversation has (else "
                                                "conversation_too_short)")
    num_agents: int = Field(2, ge=2, le=len(DEFAULT_PROFILES), description="agents taking turns in order")
    profiles: list[AgentProfile] | None = Field(None, description="fixed participants (at least num_agents); "
                                                                  "None: generate or use the defaults")
    generate_profiles: bool = Field(True, description="ask the teacher for profiles fitting each snippet")
    moves: list[str] = Field(list(DEFAULT_MOVES), min_length=1, description="instructions for turns >= 1: "
                                                                            "steer, summarise, new scenario")
    revisions_per_turn: int = Field(1, ge=0, le=5, description="self-revision passes after each turn. "
                                                               "UNCONFIRMED: the paper shows one")
    truncate_on_empty: bool = Field(True, description="an empty turn ends the conversation (kept if long "
                                                      "enough); False: drop the record as empty_turn")
    end_on_assistant: bool = Field(True, description="trim a trailing user turn so SFT data ends on a reply")
    temperature: float = Field(0.8, ge=0, description="sampling temperature of turns and revisions")
    turn_max_tokens: int = Field(384, ge=1, description="limit of one turn, tokens")
    revision_max_tokens: int = Field(768, ge=1, description="limit of a revision reply (assessment + turn)")
    profile_max_tokens: int = Field(256, ge=1, description="limit of the profiles JSON reply")
    max_reasks: int = Field(2, ge=0, description="re-asks of a profiles reply that is not valid JSON")
    batch_size: int = Field(16, ge=1, description="conversations advanced together")
    seed: int = Field(0, ge=0, description="sampling seed (and move choice)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_turns > self.turns:
            raise ValueError(f"min_turns={self.min_turns} exceeds turns={self.turns}; lower min_turns")
        if self.profiles is not None and len(self.profiles) < self.num_agents:
            raise ValueError(f"profiles lists {len(self.profiles)} participants but num_agents="
                             f"{self.num_agents}; add profiles or lower num_agents")
        return self


def participants_schema(count: int) -> type[BaseModel]:
    """``{"participants": [AgentProfile x >= count]}`` with distinct names (a bare list is accepted)."""

    class Participants(BaseModel):
        participants: list[AgentProfile]

        @model_validator(mode="before")
        @classmethod
        def _bare_list(cls, value):
            return {"participants": value} if isinstance(value, list) else value

        @model_validator(mode="after")
        def _enough(self):
            names = {p.name.strip().lower() for p in self.participants[:count]}
            if len(self.participants) < count or len(names) < count:
                raise ValueError(f"give exactly {count} participants with different names")
            return self

    return Participants


# --------------------------------------------------------------------------- turn text

_REVISED = re.compile(r"^[ \t>*#_]*REVISED MESSAGE\b[ \t*_]*:?[ \t*_]*", re.IGNORECASE | re.MULTILINE)


def clean_turn(text: str, speaker: str, others: list[str]) -> str:
    """The turn without a leading ``Name:`` and cut where the model starts writing another speaker's turn."""
    text = re.sub(rf"^\s*\**{re.escape(speaker)}\**\s*:\s*\**\s*", "", text.strip(), flags=re.IGNORECASE)
    for name in others + [speaker]:
        m = re.search(rf"^\s*\**{re.escape(name)}\**\s*:", text, flags=re.IGNORECASE | re.MULTILINE)
        if m and m.start() > 0:
            text = text[:m.start()]
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def revised_message(reply: str) -> str | None:
    """The text after the last ``REVISED MESSAGE:`` marker, or None without one."""
    hits = list(_REVISED.finditer(reply))
    return reply[hits[-1].end():].strip() if hits else None


# --------------------------------------------------------------------------- the step


@dataclass
class _Conversation:
    record: Record
    snippet: str
    profiles: list[AgentProfile] = field(default_factory=list)
    profiles_source: str = "config"
    turns: list[str] = field(default_factory=list)
    moves: list[str | None] = field(default_factory=list)
    revised: int = 0
    ended: str | None = None  # None while talking; "complete" | "empty_turn"

    def speaker(self, t: int) -> AgentProfile:
        return self.profiles[t % len(self.profiles)]


class MultiAgentConversation(GenerationStep):
    """Snippet -> profiles -> opening turn -> alternating agents, each turn self-revised (App. D.1.3)."""

    technique = TECHNIQUE

    def __init__(self, config: MultiAgentConversationConfig, models):
        super().__init__(models, batch_size=config.batch_size, seed=config.seed)
        self.config = config
        self.profiles_t, self.opening_t, self.turn_t, self.revise_t = (
            get_template("conversation_profiles"), get_template("conversation_opening"),
            get_template("conversation_turn"), get_template("conversation_revise"))
        self.templates = (self.profiles_t, self.opening_t, self.turn_t, self.revise_t)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            yield from self._run_batch(batch, ctx)

    def _run_batch(self, batch: list[Record], ctx: StepContext) -> Iterator[Record]:
        convs = [_Conversation(r, (r.text or "").strip()) for r in batch]
        talking = [c for c in convs if c.snippet]
        self._assign_profiles(talking, ctx)
        for t in range(self.config.turns):
            talking = [c for c in talking if c.ended is None]
            if not talking:
                break
            self._take_turn(talking, t, ctx)
        for c in convs:
            yield from self._finish(c, ctx)

    # ---- profiles

    def _assign_profiles(self, convs: list[_Conversation], ctx: StepContext) -> None:
        n = self.config.num_agents
        if self.config.profiles is not None or not self.config.generate_profiles:
            fixed = list(self.config.profiles or DEFAULT_PROFILES)[:n]
            source = "config" if self.config.profiles is not None else "default"
            for c in convs:
                c.profiles, c.profiles_source = fixed, source
            return
        prompts = [user(ctx.render(self.profiles_t, count=n, snippet=c.snippet)) for c in convs]
        params = self.params(temperature=self.config.temperature, max_tokens=self.config.profile_max_tokens)
        answers = ask_json(self, ctx, prompts, participants_schema(n), params, max_reasks=self.config.max_reasks)
        for c, answer in zip(convs, answers):
            if answer.value is None:
                c.profiles, c.profiles_source = list(DEFAULT_PROFILES[:n]), "default"
                ctx.stat("profiles_fallback")
            else:
                c.profiles, c.profiles_source = answer.value.participants[:n], "generated"

    # ---- turns

    def _take_turn(self, convs: list[_Conversation], t: int, ctx: StepContext) -> None:
        moves = [self._move(c, t) for c in convs]
        prompts = [user(self._turn_prompt(c, t, move, ctx)) for c, move in zip(convs, moves)]
        params = self.params(temperature=self.config.temperature, max_tokens=self.config.turn_max_tokens)
        drafts = [self._clean(c, t, out[0].text) for c, out in zip(convs, self.sample(ctx, prompts, params))]
        for _ in range(self.config.revisions_per_turn):
            drafts = self._revise(convs, t, moves, drafts, ctx)
        for c, move, text in zip(convs, moves, drafts):
            if not text:
                c.ended = "empty_turn"
                ctx.stat("empty_turns")
                continue
            c.turns.append(text)
            c.moves.append(move)
        ctx.stat("turns_generated", len(convs))

    def _turn_prompt(self, c: _Conversation, t: int, move: str | None, ctx: StepContext) -> str:
        p = c.speaker(t)
        if t == 0:
            return ctx.render(self.opening_t, name=p.name, role=p.role, style=p.style,
                              others=self._others(c, t), snippet=c.snippet)
        return ctx.render(self.turn_t, name=p.name, role=p.role, style=p.style, others=self._others(c, t),
                          snippet=c.snippet, transcript=self._transcript(c), move=move)

    def _revise(self, convs: list[_Conversation], t: int, moves: list[str | None], drafts: list[str],
                ctx: StepContext) -> list[str]:
        todo = [i for i, d in enumerate(drafts) if d]
        prompts = [user(self._revise_prompt(convs[i], t, moves[i], drafts[i], ctx)) for i in todo]
        params = self.params(temperature=self.config.temperature, max_tokens=self.config.revision_max_tokens)
        out = list(drafts)
        for i, completions in zip(todo, self.sample(ctx, prompts, params)):
            rewritten = revised_message(completions[0].text)
            rewritten = self._clean(convs[i], t, rewritten) if rewritten is not None else ""
            if rewritten:
                out[i] = rewritten
                convs[i].revised += 1
            else:
                ctx.stat("revision_unparsed")
        ctx.stat("revisions", len(todo))
        return out

    def _revise_prompt(self, c: _Conversation, t: int, move: str | None, draft: str, ctx: StepContext) -> str:
        p = c.speaker(t)
        goal = move or "open the conversation by presenting the core information of the background accurately"
        return ctx.render(self.revise_t, name=p.name, role=p.role, style=p.style, snippet=c.snippet,
                          transcript=self._transcript(c) or "(nothing yet: this is the opening message)",
                          move=goal, draft=draft)

    # ---- output

    def _finish(self, c: _Conversation, ctx: StepContext) -> Iterator[Record]:
        if not c.snippet:
            ctx.drop(c.record, "empty_snippet")
            return
        if c.ended == "empty_turn" and not self.config.truncate_on_empty:
            ctx.drop(c.record, "empty_turn")
            return
        turns = c.turns[:len(c.turns) - len(c.turns) % 2] if self.config.end_on_assistant else c.turns
        if len(turns) < self.config.min_turns:
            ctx.drop(c.record, "conversation_too_short")
            return
        ctx.stat("conversations_kept")
        yield self._record(c, turns)

    def _record(self, c: _Conversation, turns: list[str]) -> Record:
        messages = [{"role": "user" if t % 2 == 0 else "assistant", "content": text} for t, text in enumerate(turns)]
        meta = {"agents": [c.speaker(t).name for t in range(len(turns))],
                "profiles": [p.model_dump() for p in c.profiles], "profiles_source": c.profiles_source,
                "moves": c.moves[:len(turns)], "turns": len(turns), "turns_requested": self.config.turns,
                "revisions_per_turn": self.config.revisions_per_turn, "revised_turns": c.revised,
                "ended_early": c.ended == "empty_turn" or len(turns) < len(c.turns)}
        prov = Provenance(seed_id=c.record.id, technique=TECHNIQUE, template_id=self.turn_t.id,
                          template_version=self.turn_t.version, model=self.model_name("teacher"))
        return Record(child_id(c.record.id, "conversation"), messages=messages, metadata=meta, provenance=prov)

    # ---- helpers

    def _move(self, c: _Conversation, t: int) -> str | None:
        if t == 0:
            return None
        digest = hashlib.sha1(f"{self.seed}:{c.record.id}:{t}".encode()).digest()
        return self.config.moves[int.from_bytes(digest[:4], "big") % len(self.config.moves)]

    def _others(self, c: _Conversation, t: int) -> str:
        me = c.speaker(t)
        return ", ".join(f"{p.name} ({p.role})" for p in c.profiles if p is not me)

    def _transcript(self, c: _Conversation) -> str:
        return "\n\n".join(f"{c.speaker(t).name}: {text}" for t, text in enumerate(c.turns))

    def _clean(self, c: _Conversation, t: int, text: str) -> str:
        me = c.speaker(t).name
        return clean_turn(text, me, [p.name for p in c.profiles if p.name != me])
