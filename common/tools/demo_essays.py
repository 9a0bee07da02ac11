"""The essay writer of the demo data: one essay on a prompt whose text carries its score.

`_essay` writes an essay whose length, paragraphs, vocabulary, spelling and transitions follow its score
plus noise; `_near_duplicate` and `_whitespace_variant` make the lightly edited copies and the corpus's
whitespace differences. Every draw comes from the generator passed in, so common.tools.demo stays
byte-identical for a seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.tools.demo_prompts import Prompt, _terms

MIN_WORDS, MAX_WORDS = 60, 450

LENGTH_NOISE = 1.1
"""Standard deviation, in score units, of the latent that sets an essay's length."""
QUALITY_NOISE = 0.6
"""Standard deviation, in score units, of the latent that sets vocabulary, spelling and structure."""

# Generic essay language, basic and advanced; an essay's quality sets how often the advanced one is used.
_OPINIONS = _terms("I think; I believe; in my opinion,; I feel like; I say; I know")
_OPINIONS_ADV = _terms(
    "it is evident that; one could argue that; it is clear that; evidence suggests that; "
    "it becomes apparent that; many would agree that"
)
_ADJECTIVES = _terms(
    "good; bad; big; cool; nice; important; hard; easy; fun; great; helpful; dangerous; safe; useful; "
    "interesting; better; worse; awesome"
)
_ADJECTIVES_ADV = _terms(
    "beneficial; detrimental; substantial; significant; essential; crucial; remarkable; inevitable; "
    "considerable; compelling; feasible; profound; invaluable; problematic; sustainable; legitimate; "
    "prevalent; unprecedented"
)
_VERBS = _terms(
    "help; change; show; affect; hurt; make better; give things to; be good for; matter to; keep safe"
)
_VERBS_ADV = _terms(
    "benefit; transform; demonstrate the value of; influence; undermine; strengthen; enhance the lives of; "
    "contribute to; reinforce; reshape"
)
_ADVERBS = _terms("really; very; so; pretty; kind of; totally; super")
_ADVERBS_ADV = _terms(
    "significantly; undeniably; particularly; substantially; ultimately; arguably; inherently; remarkably"
)
_NOUNS = _terms(
    "people; everyone; society; the world; many people; some people; kids; adults; families; students; "
    "teachers; our country; the future; our lives"
)
_TRANSITIONS = _terms("First,; Second,; Also,; Then,; Next,; But; So; Another thing,")
_TRANSITIONS_ADV = _terms(
    "Furthermore,; Moreover,; However,; In addition,; Consequently,; For instance,; On the other hand,; "
    "Nevertheless,; Additionally,; Therefore,; As a result,; Similarly,"
)

# Sentence templates: {O} opinion, {T}/{U} topic terms, {A} adjective, {V} verb, {D} adverb, {N} noun.
# Written in lower case (but "I"): a sentence start is capitalised, topic terms keep their own case.
_TEMPLATES = (
    "{O} {T} is {D} {A}.",
    "{O} {T} can {V} {N}.",
    "{T} is {A} because it can {V} {U}.",
    "some people say {T} is {A}, but I think {U} is {A} too.",
    "when it comes to {T}, {N} should think about {U}.",
    "{T} and {U} are {D} {A} for {N}.",
    "the article says that {T} can {V} {N}.",
    "this is why {T} is {A}.",
    "if {N} look at {T}, they will see {U}.",
    "without {T}, {N} would not know about {U}.",
    "the author says {T} is {A} because of {U}.",
    "{T} matters because it can {V} {N} and {U}.",
    "{N} talk about {T} and {U} a lot.",
    "{O} {N} need {T}.",
)
_TEMPLATES_ADV = (
    "although {T} may seem {A}, it can {D} {V} {U}, which is {A} for {N}.",
    "considering {T} and {U}, {N} should weigh the evidence carefully before reaching a conclusion.",
    "{O} {T}, together with {U}, can {D} {V} {N} in ways that are {A}.",
    "while critics point to {U}, the evidence regarding {T} remains {A}.",
    "the author {D} supports this claim by explaining how {T} relates to {U}.",
    "because {T} is {A}, {N} must consider how {U} could {V} {N} over time.",
    "not only does {T} {V} {N}, but {U} also proves {A} in the long run.",
    "{O} {T} deserves attention, since {U} is {D} {A} for {N}.",
)
_TEMPLATES_LOW = (
    "{T} is {A}",
    "i think {T} is {A} and {U} is {A}",
    "{T} is so {A} and thats why",
    "{N} like {T} alot",
    "it is {A} because {T}",
    "{T} {T} is {A} for {N}",
)


@dataclass(frozen=True)
class _Style:
    """How one essay is written: length, layout and language quality (all set by its score plus noise)."""

    n_words: int
    n_paragraphs: int
    p_advanced: float
    p_transition: float
    p_misspell: float
    p_sloppy: float


def _choice(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]

def _style(rng: np.random.Generator, score: int) -> _Style:
    length_latent = score + rng.normal(0.0, LENGTH_NOISE)
    quality = score + rng.normal(0.0, QUALITY_NOISE)
    n_words = int(np.clip(round(95 + 62 * (length_latent - 1)), MIN_WORDS + 5, MAX_WORDS - 30))
    n_paragraphs = int(np.clip(round(0.4 + 0.8 * quality + rng.normal(0.0, 0.6)), 1, 6))
    return _Style(
        n_words=n_words,
        n_paragraphs=n_paragraphs,
        p_advanced=float(np.clip(0.03 + 0.15 * (quality - 1), 0.0, 0.85)),
        p_transition=float(np.clip(0.05 + 0.11 * (quality - 1), 0.02, 0.7)),
        p_misspell=float(np.clip(0.10 - 0.02 * (quality - 1), 0.0, 0.12)),
        p_sloppy=float(np.clip(0.5 - 0.14 * (quality - 1), 0.0, 0.6)),
    )


def _sentence(rng: np.random.Generator, prompt: Prompt, style: _Style, opener: bool = True) -> str:
    """One sentence on prompt; an opener may start with a transition and is capitalised (unless sloppy)."""
    advanced = rng.random() < style.p_advanced
    sloppy = rng.random() < style.p_sloppy
    if sloppy:
        template = _choice(rng, _TEMPLATES_LOW)
    elif advanced:
        template = _choice(rng, _TEMPLATES_ADV)
    else:
        template = _choice(rng, _TEMPLATES)

    def tier(basic: Sequence[str], adv: Sequence[str]) -> str:
        return _choice(rng, adv if rng.random() < style.p_advanced else basic)

    fills = {
        "{O}": lambda: tier(_OPINIONS, _OPINIONS_ADV),
        "{T}": lambda: _choice(rng, prompt.topic_terms),
        "{U}": lambda: _choice(rng, prompt.topic_terms),
        "{A}": lambda: tier(_ADJECTIVES, _ADJECTIVES_ADV),
        "{V}": lambda: tier(_VERBS, _VERBS_ADV),
        "{D}": lambda: tier(_ADVERBS, _ADVERBS_ADV),
        "{N}": lambda: _choice(rng, _NOUNS),
    }
    pieces = template.split(" ")
    words = []
    for piece in pieces:
        for slot, fill in fills.items():
            if slot in piece:
                piece = piece.replace(slot, fill())
        words.append(piece)
    text = " ".join(words)
    if sloppy:
        return text + ("." if rng.random() < 0.5 else "")
    if not opener:
        return text
    if rng.random() < style.p_transition:
        text = tier(_TRANSITIONS, _TRANSITIONS_ADV) + " " + text
    return text[0].upper() + text[1:]


def _misspell(rng: np.random.Generator, word: str) -> str:
    """Swap, drop or double one inner letter of a word."""
    i = int(rng.integers(1, len(word) - 2))
    kind = int(rng.integers(3))
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _apply_misspellings(rng: np.random.Generator, text: str, p: float) -> str:
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) >= 5 and word.isalpha() and rng.random() < p:
            words[i] = _misspell(rng, word)
    return " ".join(words)


def _essay(rng: np.random.Generator, prompt: Prompt, score: int) -> str:
    """One essay on prompt: sentences up to the target length, grouped into paragraphs."""
    style = _style(rng, score)
    sentences: list[str] = []
    n_words = 0
    while n_words < style.n_words:
        sentence = _apply_misspellings(rng, _sentence(rng, prompt, style), style.p_misspell)
        sentences.append(sentence)
        n_words += len(sentence.split())
    if style.n_paragraphs > 2 and rng.random() < style.p_advanced + 0.2:
        sentence = _sentence(rng, prompt, style, opener=False)
        conclusion = "In conclusion, " + _apply_misspellings(rng, sentence, style.p_misspell)
        n_words += len(conclusion.split()) - len(sentences[-1].split())
        if MIN_WORDS <= n_words <= MAX_WORDS:
            sentences[-1] = conclusion
    n_paragraphs = max(1, min(style.n_paragraphs, len(sentences) // 2))
    bounds = np.linspace(0, len(sentences), n_paragraphs + 1).round().astype(int)
    paragraphs = [" ".join(sentences[a:b]) for a, b in itertools.pairwise(bounds)]
    return "\n\n".join(paragraphs)


def _near_duplicate(rng: np.random.Generator, text: str) -> str:
    """text with 2-4 words replaced by other single words: the same essay, lightly edited."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 4]
    n_changes = int(rng.integers(2, 5))
    for i in rng.choice(candidates, size=min(n_changes, len(candidates)), replace=False):
        replacement = _choice(rng, (*_ADJECTIVES, "people", "everyone", "society"))
        words[int(i)] = replacement if replacement != words[int(i)] else replacement + "s"
    return " ".join(words)


def _whitespace_variant(rng: np.random.Generator, text: str) -> str:
    """text with the whitespace changed the ways the corpus differs from train; words stay the same."""
    original = text
    kinds = rng.permutation(5)[: int(rng.integers(1, 4))]
    for kind in sorted(int(k) for k in kinds):
        if kind == 0:
            text = text.replace("\n\n", "\n")
        elif kind == 1:
            text = text.replace("\n", " \n") + " "
        elif kind == 2:
            spaces = [i for i, c in enumerate(text) if c == " "]
            for i in rng.choice(spaces, size=min(2, len(spaces)), replace=False):
                text = text[: int(i)] + "\xa0" + text[int(i) + 1 :]
        elif kind == 3:
            text = _choice(rng, (" ", "\n", "  ")) + text + _choice(rng, ("\n", " ", "\n\n"))
        else:
            spaces = [i for i, c in enumerate(text) if c == " "]
            i = int(spaces[int(rng.integers(len(spaces)))])
            text = text[:i] + "  " + text[i + 1 :]
    return text if text != original else text + " "
