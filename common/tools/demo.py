"""Deterministic synthetic demo data with the real competition schemas.

`make_demo_frames` builds a small stand-in for the Automated Essay Scoring 2.0 files -- `train.csv`,
`test.csv`, `sample_submission.csv` and the PERSUADE 2.0 corpus
(`persuade_2.0_human_scores_demo_id_github.csv`) -- and `write_demo_data` writes them as CSV, so the
whole pipeline runs on CPU in minutes without the competition data. The fake data keeps the traits
that the pipeline has to cope with:

- 15 corpus prompts with their real names, each with its own topic vocabulary, so that text
  clustering recovers the prompt; train essays answer the first 7 of them.
- About three quarters of train essays ("persuade" origin) are also in the corpus with the same score,
  a different id space and whitespace differences; the other quarter ("other" origin) answer only 5
  prompts and score lower; test essays look like the other-origin ones.
- The score is learnable from the text (length, paragraphs, vocabulary, spelling, transitions) but
  noisy, so that word count alone reaches a QWK of about 0.6.
- A few exact and near duplicates inside train (under different ids) and inside the corpus.

Everything is drawn from one `numpy.random.default_rng(seed)`: the same seed gives byte-identical files.
Run `python -m common.tools.demo --out input --seed 7` to regenerate the bundled demo.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

DEMO_FILES: dict[str, str] = {
    "train": "train.csv",
    "test": "test.csv",
    "sample_submission": "sample_submission.csv",
    "persuade": "persuade_2.0_human_scores_demo_id_github.csv",
}
"""Key of each frame written by `write_demo_data` -> its file name (the competition's names)."""

PERSUADE_COLUMNS: tuple[str, ...] = (
    "essay_id_comp",
    "full_text",
    "holistic_essay_score",
    "word_count",
    "prompt_name",
    "task",
    "assignment",
    "source_text",
    "gender",
    "grade_level",
    "ell_status",
    "economically_disadvantaged",
    "student_disability_status",
    "race_ethnicity",
)

SCORES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
TRAIN_SCORE_SHARES: tuple[float, ...] = (0.07, 0.27, 0.36, 0.23, 0.06, 0.01)
"""Share of each score 1..6 in the real train.csv; the demo train matches it."""
OTHER_SCORE_SHARES: tuple[float, ...] = (0.12, 0.36, 0.34, 0.15, 0.03, 0.0)
"""Score shares of other-origin essays: lower than the corpus ones, as in the real data."""
PERSUADE_FRACTION = 0.75
"""Share of train essays that are also in the corpus."""
PERSUADE_SCORE_SHARES: tuple[float, ...] = tuple(
    (t - (1 - PERSUADE_FRACTION) * o) / PERSUADE_FRACTION
    for t, o in zip(TRAIN_SCORE_SHARES, OTHER_SCORE_SHARES, strict=True)
)
"""Score shares of corpus essays, chosen so that the train mix of both origins has TRAIN_SCORE_SHARES."""

N_EXACT_DUPLICATES = 4
N_NEAR_DUPLICATES = 4
N_CORPUS_NEAR_DUPLICATES = 2
MIN_WORDS, MAX_WORDS = 60, 450

LENGTH_NOISE = 1.1
"""Standard deviation, in score units, of the latent that sets an essay's length."""
QUALITY_NOISE = 0.6
"""Standard deviation, in score units, of the latent that sets vocabulary, spelling and structure."""


@dataclass(frozen=True)
class Prompt:
    """One PERSUADE prompt: its name, task type, assignment text, source text and topic vocabulary."""

    name: str
    task: str
    assignment: str
    source_text: str
    topic_terms: tuple[str, ...]


def _terms(text: str) -> tuple[str, ...]:
    """Words and phrases written as one "; "-separated string."""
    return tuple(text.split("; "))


def _text_dependent(name: str, title: str, assignment: str, terms: str) -> Prompt:
    source = (
        f'"{title}" is a short informational article that students read before writing about {name.lower()}.'
    )
    return Prompt(name, "Text dependent", assignment, source, _terms(terms))


def _independent(name: str, assignment: str, terms: str) -> Prompt:
    return Prompt(name, "Independent", assignment, "", _terms(terms))


PROMPTS: tuple[Prompt, ...] = (
    _text_dependent(
        "Car-free cities",
        "In German Suburb, Life Goes On Without Cars",
        "Write an explanatory essay to inform fellow citizens about the advantages of limiting car usage.",
        "car-free cities; Vauban; Germany; Paris; smog; Bogota; car-free day; greenhouse gas emissions; "
        "pollution; public transportation; suburbs; car ownership; limiting car usage; bicycles; buses; "
        "traffic congestion; Elisabeth Rosenthal; driving ban; parking spaces; carbon emissions; walking; "
        "streetcars; commuters; cleaner air; fewer cars; urban planning; sidewalks; city streets; "
        "motor vehicles; Heidrun Walter; odd-even rule; fines; parks and sports centers",
    ),
    _text_dependent(
        "Does the electoral college work?",
        "What Is the Electoral College?",
        "Write a letter to your state senator arguing in favor of keeping the Electoral College or "
        "changing to election by popular vote.",
        "Electoral College; popular vote; electors; presidential election; swing states; Founding Fathers; "
        "Constitution; candidates; Richard Posner; Bradford Plumer; winner-take-all; the President; voters; "
        "Congress; Democrats; Republicans; Al Gore; Nixon; Bob Dole; state legislatures; ballot; big states; "
        "runoff elections; a tie; 538 electors; majority; campaign; Florida; Ohio; regional appeal; "
        "certainty of outcome; senators; disaster factor; democracy",
    ),
    _text_dependent(
        "Exploring Venus",
        "The Challenge of Exploring Venus",
        "Write an essay evaluating how well the author supports the idea that studying Venus is a worthy "
        "pursuit despite the dangers it presents.",
        "Venus; the planet; the surface; atmosphere; NASA; spacecraft; temperature; carbon dioxide; "
        "sulfuric acid; clouds; Evening Star; Earth's twin; volcanoes; mountains; valleys; pressure; "
        "800 degrees; blimp-like vehicle; solar system; orbit; mechanical computers; scientists; "
        "human exploration; probes; landing; thick atmosphere; hostile conditions; sunlight; rocky surface; "
        "electronics; astronomers; silicon carbide; planetary visits",
    ),
    _text_dependent(
        "The Face on Mars",
        "Unmasking the Face on Mars",
        "Write an argumentative essay, as a NASA scientist, convincing someone that the Face on Mars is a "
        "natural landform.",
        "the Face; Mars; landform; aliens; Viking 1; mesa; Cydonia; Mars Global Surveyor; butte; "
        "photograph; natural landform; shadows; Jim Garvin; Michael Malin; camera; resolution; pixels; "
        "Egyptian pyramid; Idaho; Snake River Plain; ancient civilization; conspiracy theorists; Orbiter; "
        "lava dome; pop icon; tabloids; alien artifact; red planet; Martian; 1976; 1998; 2001",
    ),
    _text_dependent(
        "Facial action coding system",
        "Making Mona Lisa Smile",
        "Write an essay arguing whether the use of the Facial Action Coding System to read the emotional "
        "expressions of students in a classroom is valuable.",
        "Facial Action Coding System; FACS; emotions; the computer; classroom; Mona Lisa; facial muscles; "
        "expressions; Dr. Huang; software; smile; bored; confused; 3-D computer model; Paul Eckman; "
        "happy; sad; angry; surprised; video; lesson; privacy; digital; muscles; Leonardo da Vinci; "
        "human emotions; detecting; webcam; feelings; Thomas Huang; face",
    ),
    _text_dependent(
        "A Cowboy Who Rode the Waves",
        "A Cowboy Who Rode the Waves",
        "Write an essay from the point of view of Luke convincing others to participate in the Seagoing "
        "Cowboys program.",
        "Seagoing Cowboys; Luke Bomberger; cowboy; ship; horses; cattle; Europe; World War II; UNRRA; "
        "Atlantic Ocean; China; Greece; Italy; Crete; Venice; adventure; mules; Don Reist; animals; hay; "
        "oats; the sea; voyage; the waves; stalls; volleyball; table-tennis; Navy; trips; Acropolis; "
        "seasick; helping people; New Orleans",
    ),
    _text_dependent(
        "Driverless cars",
        "Driverless Cars Are Coming",
        "Write an argumentative essay taking a position for or against the development of driverless cars.",
        "driverless cars; self-driving; Google; autonomous vehicles; sensors; the driver; safety; BMW; "
        "Tesla; liability; manufacturers; cameras; Sebastian Thrun; insurance; highway; lidar; Volvo; "
        "Traffic Jam Assistant; human drivers; crash; automobile; fully autonomous; smart roads; "
        "vibrating seats; heads-up display; car companies; robots; take over; computer chips; "
        "Google car; test drives; engineers",
    ),
    _independent(
        "Phones and driving",
        "Write an essay arguing whether drivers should or should not be able to use cell phones in any "
        "capacity while operating a vehicle.",
        "texting; driving; distracted driving; car crashes; teenagers; hands-free; text message; the road; "
        "cell phone; law; ticket; police; seatbelt; navigation; fatalities; Bluetooth; speakers; "
        "intersection; reckless; notifications; Do Not Disturb; license; traffic lights; passengers; "
        "phone calls; pull over; eyes on the road; behind the wheel; teen drivers; dashboard",
    ),
    _independent(
        "Summer projects",
        "Write an essay arguing whether summer projects should be teacher-designed or student-designed.",
        "summer projects; teacher-designed projects; student-designed projects; summer break; vacation; "
        "creativity; research; interests; independence; deadlines; guidelines; hobbies; summer camp; "
        "summer reading; the fall; brain drain; grading rubric; science experiment; poster; free time; "
        "the pool; beach; family trips; procrastinate; curriculum; topic choice; self-directed; June; "
        "August; summer slide",
    ),
    _independent(
        "Community service",
        "Write a letter to your principal arguing whether students should be required to perform "
        "community service.",
        "community service; volunteering; volunteers; neighborhood; homeless shelter; food bank; "
        "picking up trash; helping others; required hours; nonprofit; charity; elderly; nursing home; "
        "soup kitchen; park cleanup; mandatory service; citizens; donations; animal shelter; food drive; "
        "Habitat for Humanity; giving back; college applications; service hours; the community; kindness; "
        "young people; local",
    ),
    _independent(
        "Mandatory extracurricular activities",
        "Write an essay arguing for or against the principal's decision that every student must "
        "participate in at least one extracurricular activity.",
        "extracurricular activities; mandatory; clubs; yearbook; student council; basketball; soccer; band; "
        "choir; drama club; after school; debate team; robotics; chess club; at least one activity; "
        "teamwork; friendships; practice; tryouts; homework time; participation; art club; swim team; "
        "leadership; school spirit; part-time job; exhausted; new skills",
    ),
    _independent(
        "Cell phones at school",
        "Write a letter to your principal about which cell phone policy, allowing phones during free time "
        "or banning them at school, is better.",
        "cell phones; school policy; lunch; class time; Policy 1; Policy 2; texting in class; confiscate; "
        "emergencies; parents; distraction; lockers; social media; ban; rules; detention; calculators; "
        "cheating; breaks; hallways; ringing; smartphones; turned off; contact; hall pass; phone use",
    ),
    _independent(
        "Grades for extracurricular activities",
        "Write a letter to your principal about a policy requiring at least a grade B average to "
        "participate in sports or other activities.",
        "grade B average; C average; GPA; report card; eligibility; failing grades; athletes; "
        "academic performance; honor roll; study hall; tutors; math class; quarterly grades; "
        "academic probation; sports teams; games; the bench; low grades; exams; transcript; scholarships; "
        "algebra; improving grades; student athletes; policy change; averages; the season; quizzes",
    ),
    _independent(
        "Distance learning",
        "Write an essay arguing whether students would benefit from being able to attend classes from "
        "home by way of online or video conferencing.",
        "distance learning; online classes; from home; video conferencing; internet; attend classes; "
        "face-to-face; classmates; Zoom; homeschool; self-paced; online school; wifi; laptop; bullying; "
        "anxiety; sick; commute; social skills; isolation; e-mail; virtual; lectures; flexible schedule; "
        "pajamas; discipline; loneliness; technology problems; interaction",
    ),
    _independent(
        "Seeking multiple opinions",
        "Explain why seeking multiple opinions can help someone make a better choice.",
        "advice; multiple opinions; more than one person; perspectives; decision; better choice; friends; "
        "experience; viewpoints; different people; counselor; trust; mistakes; asking for help; wise; "
        "opinions; siblings; compare; options; biased; mentor; suggestions; pros and cons; consult; "
        "outcome; best decision; judgement; grandparents; coworkers",
    ),
)
"""The 15 PERSUADE prompts in the order the brief names them; train answers PROMPTS[:7]."""

TRAIN_PROMPTS: tuple[str, ...] = tuple(p.name for p in PROMPTS[:7])
OTHER_PROMPTS: tuple[str, ...] = (
    "Driverless cars",
    "Facial action coding system",
    "Exploring Venus",
    "The Face on Mars",
    "A Cowboy Who Rode the Waves",
)
"""The 5 prompts that other-origin train essays and test essays answer."""
_TRAIN_PROMPT_WEIGHTS = (0.18, 0.18, 0.13, 0.13, 0.13, 0.11, 0.14)

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


def _allocate(n: int, shares: Sequence[float]) -> np.ndarray:
    """Split n into integer counts proportional to shares (largest remainder; ties go to the first)."""
    raw = np.asarray(shares, dtype=float) / float(np.sum(shares)) * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _shuffled_labels(rng: np.random.Generator, labels: Sequence, shares: Sequence[float], n: int) -> list:
    """n labels in exact proportions to shares, in a random order."""
    counts = _allocate(n, shares)
    out = [label for label, count in zip(labels, counts, strict=True) for _ in range(count)]
    return [out[i] for i in rng.permutation(n)]


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


def _unique_ids(rng: np.random.Generator, n: int, width: int, upper: bool, taken: set[str]) -> list[str]:
    """n new hex ids of the given width, none of them in taken (which is updated)."""
    ids: list[str] = []
    while len(ids) < n:
        value = int(rng.integers(0, 16**width))
        essay_id = f"{value:0{width}X}" if upper else f"{value:0{width}x}"
        if essay_id not in taken:
            taken.add(essay_id)
            ids.append(essay_id)
    return ids


def _demographics(rng: np.random.Generator, prompt: Prompt) -> dict[str, object]:
    grades = (9, 10, 11, 12) if prompt.task == "Text dependent" else (6, 7, 8, 9, 10)
    return {
        "gender": _choice(rng, ("M", "F")),
        "grade_level": int(grades[int(rng.integers(len(grades)))]),
        "ell_status": "Yes" if rng.random() < 0.1 else "No",
        "economically_disadvantaged": (
            "Economically disadvantaged" if rng.random() < 0.45 else "Not economically disadvantaged"
        ),
        "student_disability_status": (
            "Identified as having disability"
            if rng.random() < 0.12
            else "Not identified as having disability"
        ),
        "race_ethnicity": _choice(
            rng,
            (
                "White",
                "White",
                "Hispanic/Latino",
                "Black/African American",
                "Asian/Pacific Islander",
                "Two or more races/Other",
                "American Indian/Alaskan Native",
            ),
        ),
    }


def _corpus_row(rng: np.random.Generator, essay_id: str, text: str, prompt: Prompt, score: int) -> dict:
    return {
        "essay_id_comp": essay_id,
        "full_text": text,
        "holistic_essay_score": score,
        "word_count": len(text.split()),
        "prompt_name": prompt.name,
        "task": prompt.task,
        "assignment": prompt.assignment,
        "source_text": prompt.source_text,
        **_demographics(rng, prompt),
    }


def make_demo_frames(
    seed: int = 7, n_train: int = 360, n_test: int = 48, n_corpus_only: int = 420
) -> dict[str, pd.DataFrame]:
    """Build the demo data in memory.

    Returns a dict with one DataFrame per key of DEMO_FILES (the columns of the competition files) plus
    "truth", which no file holds: one row per train and test essay with `essay_id, split, origin,
    prompt_name, score, essay_id_comp, duplicate_of, duplicate_kind` -- what the pipeline must recover
    (origin, prompt, duplicate groups), for tests. `essay_id_comp` is the matching corpus id of a
    persuade-origin train essay; `duplicate_of` names the train essay that an exact ("exact") or
    lightly edited ("near") copy was made from. Test scores in "truth" are the hidden labels.
    """
    if n_train < 40 or n_test < 1 or n_corpus_only < 2 * N_CORPUS_NEAR_DUPLICATES:
        raise ValueError(
            f"demo sizes too small: n_train={n_train} (>= 40), n_test={n_test} (>= 1), "
            f"n_corpus_only={n_corpus_only} (>= {2 * N_CORPUS_NEAR_DUPLICATES})"
        )
    rng = np.random.default_rng(seed)
    by_name = {p.name: p for p in PROMPTS}
    other_prompts = [by_name[name] for name in OTHER_PROMPTS]
    origins, scores, prompts, texts = _train_essays(rng, n_train, other_prompts)
    duplicate_of, duplicate_kind = _add_duplicates(rng, origins, scores, prompts, texts)
    taken: set[str] = set()
    train_ids = _unique_ids(rng, n_train, 7, upper=False, taken=taken)
    test_ids = _unique_ids(rng, n_test, 7, upper=False, taken=taken)
    persuade, essay_id_comp = _corpus(rng, origins, scores, prompts, texts, n_corpus_only)

    # Test: like the other-origin essays.
    test_scores = _shuffled_labels(rng, SCORES, OTHER_SCORE_SHARES, n_test)
    test_prompts = _shuffled_labels(rng, other_prompts, [1.0] * len(other_prompts), n_test)
    test_texts = [_essay(rng, p, s) for p, s in zip(test_prompts, test_scores, strict=True)]

    train = pd.DataFrame({"essay_id": train_ids, "full_text": texts, "score": scores})
    test = pd.DataFrame({"essay_id": test_ids, "full_text": test_texts})
    truth = pd.DataFrame(
        {
            "essay_id": train_ids + test_ids,
            "split": ["train"] * n_train + ["test"] * n_test,
            "origin": origins + ["other"] * n_test,
            "prompt_name": [p.name for p in prompts] + [p.name for p in test_prompts],
            "score": scores + test_scores,
            "essay_id_comp": essay_id_comp + [""] * n_test,
            "duplicate_of": [train_ids[j] if j is not None else "" for j in duplicate_of] + [""] * n_test,
            "duplicate_kind": duplicate_kind + [""] * n_test,
        }
    )
    train = train.sort_values("essay_id", kind="stable").reset_index(drop=True)
    test = test.sort_values("essay_id", kind="stable").reset_index(drop=True)
    truth = truth.sort_values(["split", "essay_id"], ascending=[False, True], kind="stable")
    sample_submission = pd.DataFrame({"essay_id": test["essay_id"], "score": 3})
    return {
        "train": train,
        "test": test,
        "sample_submission": sample_submission,
        "persuade": persuade,
        "truth": truth.reset_index(drop=True),
    }


def _train_essays(rng: np.random.Generator, n_train: int, other_prompts: list[Prompt]
                  ) -> tuple[list[str], list[int], list[Prompt], list[str]]:
    """Persuade-origin rows on 7 prompts, other-origin rows on 5 prompts with lower scores."""
    n_persuade = round(PERSUADE_FRACTION * n_train)
    n_other = n_train - n_persuade
    origins = ["persuade"] * n_persuade + ["other"] * n_other
    scores = _shuffled_labels(rng, SCORES, PERSUADE_SCORE_SHARES, n_persuade) + _shuffled_labels(
        rng, SCORES, OTHER_SCORE_SHARES, n_other
    )
    prompts = _shuffled_labels(rng, PROMPTS[:7], _TRAIN_PROMPT_WEIGHTS, n_persuade) + _shuffled_labels(
        rng, other_prompts, [1.0] * len(other_prompts), n_other
    )
    texts = [_essay(rng, prompt, score) for prompt, score in zip(prompts, scores, strict=True)]
    return origins, scores, prompts, texts


def _add_duplicates(rng: np.random.Generator, origins: list[str], scores: list[int], prompts: list[Prompt],
                    texts: list[str]) -> tuple[list[int | None], list[str]]:
    """Overwrite some rows (in place) with a copy -- exact, or a few words changed -- of another row of the
    same origin, prompt and score, so the score distribution stays as allocated; returns, per row, the row
    it copies (or None) and the kind of copy."""
    n_train = len(texts)
    duplicate_of: list[int | None] = [None] * n_train
    duplicate_kind = [""] * n_train
    n_dups = N_EXACT_DUPLICATES + N_NEAR_DUPLICATES
    order = [int(i) for i in rng.permutation(n_train)]
    for k, src in enumerate(order[:n_dups]):
        twin = next(
            (
                i
                for i in order[n_dups:]
                if duplicate_of[i] is None and origins[i] == origins[src] and scores[i] == scores[src]
            ),
            None,
        )
        if twin is None:
            continue
        prompts[twin] = prompts[src]
        exact = k < N_EXACT_DUPLICATES
        texts[twin] = texts[src] if exact else _near_duplicate(rng, texts[src])
        duplicate_of[twin] = src
        duplicate_kind[twin] = "exact" if exact else "near"
    return duplicate_of, duplicate_kind


def _corpus(rng: np.random.Generator, origins: list[str], scores: list[int], prompts: list[Prompt],
            texts: list[str], n_corpus_only: int) -> tuple[pd.DataFrame, list[str]]:
    """One corpus row per distinct persuade-origin train text (whitespace changed), then corpus-only rows;
    returns the corpus and each train row's corpus id ("" for other-origin rows)."""
    n_train = len(texts)
    corpus_rows: list[dict] = []
    corpus_id_of_text: dict[str, str] = {}
    essay_id_comp = [""] * n_train
    persuade_rows = [i for i in range(n_train) if origins[i] == "persuade"]
    corpus_ids = _unique_ids(rng, len(persuade_rows) + n_corpus_only, 12, upper=True, taken=set())
    for i in persuade_rows:
        if texts[i] not in corpus_id_of_text:
            corpus_id = corpus_ids[len(corpus_rows)]
            corpus_id_of_text[texts[i]] = corpus_id
            variant = _whitespace_variant(rng, texts[i])
            corpus_rows.append(_corpus_row(rng, corpus_id, variant, prompts[i], scores[i]))
        essay_id_comp[i] = corpus_id_of_text[texts[i]]
    corpus_scores = _shuffled_labels(rng, SCORES, PERSUADE_SCORE_SHARES, n_corpus_only)
    corpus_prompts = _shuffled_labels(rng, PROMPTS, [1.0] * len(PROMPTS), n_corpus_only)
    corpus_texts = [_essay(rng, p, s) for p, s in zip(corpus_prompts, corpus_scores, strict=True)]
    for k in range(N_CORPUS_NEAR_DUPLICATES):
        corpus_texts[n_corpus_only - 1 - k] = _near_duplicate(rng, corpus_texts[k])
        corpus_prompts[n_corpus_only - 1 - k] = corpus_prompts[k]
        corpus_scores[n_corpus_only - 1 - k] = corpus_scores[k]
    for text, prompt, score in zip(corpus_texts, corpus_prompts, corpus_scores, strict=True):
        corpus_rows.append(_corpus_row(rng, corpus_ids[len(corpus_rows)], text, prompt, score))
    persuade = pd.DataFrame(corpus_rows, columns=list(PERSUADE_COLUMNS))
    return persuade.iloc[rng.permutation(len(persuade))].reset_index(drop=True), essay_id_comp


def write_demo_data(
    out_dir: Path, seed: int = 7, n_train: int = 360, n_test: int = 48, n_corpus_only: int = 420
) -> dict[str, Path]:
    """Write the demo CSVs into out_dir (created if missing); returns key of DEMO_FILES -> path written.

    Each file is written to a temporary name and renamed, so a crash never leaves half a file.
    """
    frames = make_demo_frames(seed=seed, n_train=n_train, n_test=n_test, n_corpus_only=n_corpus_only)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for key, file_name in DEMO_FILES.items():
        path = out_dir / file_name
        tmp = path.with_name(f"{path.name}.tmp-{seed}")
        frames[key].to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
        tmp.replace(path)
        paths[key] = path
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `python -m common.tools.demo --out input --seed 7`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("input"), help="Folder to write the CSVs into.")
    parser.add_argument("--seed", type=int, default=7, help="Seed of the generator.")
    parser.add_argument("--n-train", type=int, default=360, help="Train essays.")
    parser.add_argument("--n-test", type=int, default=48, help="Test essays.")
    parser.add_argument("--n-corpus-only", type=int, default=420, help="Corpus essays that are not in train.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = write_demo_data(args.out, args.seed, args.n_train, args.n_test, args.n_corpus_only)
    for path in paths.values():
        logger.info("wrote %s (%d bytes)", path, path.stat().st_size)


if __name__ == "__main__":
    main()
