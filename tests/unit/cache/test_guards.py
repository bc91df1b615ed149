"""The answer-correctness guards: text analysis, each rule on the adversarial pairs, the content
guard with the real model's word vectors, verifiers, and the wiring from settings."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from extproc.cache import SemanticCache
from extproc.cache.guards import build_guards
from extproc.cache.guards.content import ContentGuard, missing_words
from extproc.cache.guards.dates import dates_differ, relative_dates
from extproc.cache.guards.direction import DirectionGuard, transposed
from extproc.cache.guards.lexical import analyze, normalize_number, stem
from extproc.cache.guards.rules import NegationGuard, NumbersGuard, OppositesGuard, UnitsGuard
from extproc.cache.guards.verifier import CrossEncoderVerifier
from extproc.config.settings import CacheSettings, with_overrides
from extproc.embedding.base import EncodeFn, WordVectors
from extproc.embedding.batcher import Embedder
from extproc.errors import ConfigError
from tests.support.toy import RejectContaining, answer, make_cache, query

DATA = Path(__file__).resolve().parents[2] / "data" / "adversarial.jsonl"
PAIRS: list[dict[str, Any]] = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
RULES = [NumbersGuard(), UnitsGuard(), NegationGuard(), OppositesGuard(), DirectionGuard()]


def pairs_of(*categories: str) -> list[tuple[str, str]]:
    """(a, b) of the fixture pairs in ``categories``."""
    return [(p["a"], p["b"]) for p in PAIRS if p["category"] in categories]


def test_fixture_is_big_enough() -> None:
    look_alikes = [p for p in PAIRS if p["label"] == 0]
    paraphrases = [p for p in PAIRS if p["label"] == 1]
    assert len(look_alikes) >= 60 and len(paraphrases) >= len(look_alikes)
    assert {p["category"] for p in look_alikes} == {
        "opposite", "negation", "modifier", "number", "date", "entity", "direction", "unit"
    }  # fmt: skip


# --- text analysis ------------------------------------------------------------------------


def test_numbers_are_read_as_people_write_them() -> None:
    assert normalize_number("300,000") == "300000"
    assert normalize_number("3.50") == "3.5"
    assert normalize_number("2,5") == "2.5"
    got = analyze("Is $300,000 15% of two hundred fifty thousand in May, or 1st of 2 iPhone6s?")
    assert got.numbers == {"300000": 1, "15": 1, "%": 1, "250000": 1, "may": 1, "2": 1, "6": 1}
    assert got.units == {"dollar"}
    assert (
        analyze("How many calories are in two bananas?").numbers == analyze("calories in 2 bananas").numbers
    )
    assert not analyze("Which one is a better phone?").numbers  # "one" / "a" / 1 say the same
    assert analyze("What is the fourth state of matter?").numbers == analyze("the 4th state").numbers
    assert analyze("S04E02 review").numbers == analyze("S4E2 review").numbers


def test_negation_contractions_and_tags() -> None:
    assert analyze("Why can't I sleep?").negated and analyze("Why am I unable to sleep?").negated
    assert analyze("Why won't it start?").words[:4] == ("why", "will", "not", "it")
    assert not analyze("Is the moon landing a hoax, or not?").negated


def test_stems_join_inflections() -> None:
    assert stem("increasing") == stem("increases") == stem("increase") == stem("increased")
    assert stem("stopped") == stem("stop") and stem("dictionaries") == stem("dictionary")
    assert stem("300000") == "300000"


# --- rule guards on the adversarial pairs --------------------------------------------------


@pytest.mark.parametrize(
    ("guard", "categories"),
    [
        (NumbersGuard(), ("number", "date")),
        (OppositesGuard(), ("opposite",)),
        (DirectionGuard(), ("direction",)),
        (UnitsGuard(), ("unit",)),
    ],
    ids=lambda v: getattr(v, "name", None) or "-".join(v),
)
def test_each_rule_rejects_its_category(guard: Any, categories: tuple[str, ...]) -> None:
    pairs = pairs_of(*categories)
    missed = [(a, b) for a, b in pairs if not (guard.reject(b, a) and guard.reject(a, b))]
    assert not missed, f"{guard.name} let through {missed}"


def test_negation_rejects_negated_counterparts_and_with_without() -> None:
    guard = NegationGuard()
    for a, b in pairs_of("negation"):
        assert guard.reject(b, a), (a, b)
    assert guard.reject("How do I make bread with yeast?", "How do I make bread without yeast?")
    # both negated, or a negation in a clause the other prompt does not have: no veto
    assert not guard.reject("Why can't I sleep at night?", "Why am I unable to sleep at night?")
    assert not guard.reject(
        "How would you take over the world starting from nothing?", "How would you take over the world?"
    )


def test_rules_never_reject_a_paraphrase_of_the_fixture() -> None:
    vetoed = [(g.name, a, b) for a, b in pairs_of("paraphrase") for g in RULES if g.reject(b, a)]
    assert not vetoed


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I turn on Wi-Fi?", "How do I turn off Wi-Fi?"),
        ("How do I log in to Slack?", "How do I log out of Slack?"),
        ("How do I install npm?", "How do I uninstall npm?"),  # negating prefix, not in any list
        ("Is it legal to fish here?", "Is it illegal to fish here?"),
    ],
)
def test_opposites_by_list_and_by_prefix(a: str, b: str) -> None:
    assert OppositesGuard().reject(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [  # the prefix said as its own word: the same meaning, not the opposite
        ("How long do boiled eggs last if not refrigerated?", "How long do boiled eggs last unrefrigerated?"),
        ("Can you un-merge a question?", "How do you unmerge a question?"),
        ("Why did he stand in front of the house?", "Why did he stand infront of the house?"),
    ],
)
def test_a_prefix_said_apart_is_no_opposite(a: str, b: str) -> None:
    assert not OppositesGuard().reject(a, b) and not OppositesGuard().reject(b, a)


def test_plain_prepositions_carry_no_polarity() -> None:
    guard = OppositesGuard()
    assert not guard.reject("How do I sort a list in Python?", "How do I sort a Python list out?")
    assert not guard.reject("How do I turn off notifications?", "How can I disable notifications?")


def test_direction_needs_swapped_words() -> None:
    guard = DirectionGuard()
    assert guard.reject("Why is UK better than USA?", "Why is the USA better than the UK?")
    assert not guard.reject("How do I convert a PDF to Word?", "How can I turn a PDF into a Word file?")
    assert not guard.reject("How do I get from Rome to Milan?", "How do I get to Milan from Rome?")
    assert not guard.reject("What to do in Rome?", "What is there to do in Rome with kids?")


@pytest.mark.parametrize(
    ("a", "b"),
    [  # the look-alikes the rules let through before
        (
            "What time is it in Tokyo when it is 9am in London?",
            "What time is it in London when it is 9am in Tokyo?",
        ),
        ("What do people in Denver think of Seattle?", "What do people in Seattle think of Denver?"),
        ("Why do Poles dislike Russians?", "Why do Russians dislike Poles?"),
        ("What do Americans think of the British?", "What do the British think of Americans?"),
        # runs of words trade places, and neighbours an article keeps apart
        (
            "What time is it in Los Angeles when it's 9 am in Tokyo?",
            "What time is it in Tokyo when it's 9 am in Los Angeles?",
        ),
        (
            "Is the set of rational numbers a subset of the integers?",
            "Is the set of integers a subset of the rational numbers?",
        ),
        ("Is every rectangle a square?", "Is every square a rectangle?"),
        ("How do I send money from the US to India?", "How do I send money from India to the US?"),
    ],
)
def test_direction_rejects_two_content_words_trading_places(a: str, b: str) -> None:
    assert DirectionGuard().reject(a, b) and DirectionGuard().reject(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Why is Delhi a union territory?", "Why Delhi is a union territory?"),  # function words
        ("How do I get rid of little black bugs?", "How do I get rid of black little bugs?"),  # neighbours
        (
            "What is the difference between Java and Python?",
            "What is the difference between Python and Java?",
        ),
        ("Which is faster, Go or Rust?", "Which is faster, Rust or Go?"),
    ],
)
def test_transpositions_that_keep_the_meaning(a: str, b: str) -> None:
    assert not transposed(analyze(a).words, analyze(b).words)
    assert not DirectionGuard().reject(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How long do I boil an egg for a soft yolk?", "How long do I boil an egg for a hard yolk?"),
        ("How do I make my coffee stronger?", "How do I make my coffee weaker?"),
        ("Is coffee good for your heart?", "Is coffee bad for your heart?"),
        ("Is it safe to eat raw eggs?", "Is it safe to eat cooked eggs?"),
    ],
)
def test_opposite_qualities(a: str, b: str) -> None:
    assert OppositesGuard().reject(a, b)
    assert not OppositesGuard().reject(a, a.replace("?", " please?"))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Who was Barack Obama's successor?", "Who was Barack Obama's predecessor?"),
        ("When is the next solar eclipse?", "When was the last solar eclipse?"),
        ("What foods should I eat during pregnancy?", "What foods should I avoid during pregnancy?"),
        ("Which planet is closest to the Sun?", "Which planet is farthest from the Sun?"),
    ],
)
def test_opposite_relations_and_times(a: str, b: str) -> None:
    assert OppositesGuard().reject(a, b) and OppositesGuard().reject(b, a)


def test_us_in_capitals_is_the_country() -> None:
    assert "usa" in analyze("Can I work in the US?").words
    assert "usa" in analyze("Is the U.S. a federation?").words
    assert "us" in analyze("Tell us about your company").words
    assert "us" in analyze("TELL US NOW").words  # shouting: the pronoun


def test_fractions_half_and_the_second_largest() -> None:
    guard = NumbersGuard()
    assert not guard.reject("How many tbsp in half a cup?", "How many tablespoons are in 1/2 cup?")
    assert not guard.reject("Add 3/4 cup of sugar", "Add 0.75 cup of sugar")
    assert guard.reject("Add 1/2 cup of sugar", "Add 1/4 cup of sugar")
    assert not guard.reject(
        "How do I speak English fluently in half a year?", "How do I speak English fluently?"
    )
    assert (
        analyze("What happened on 9/11?").numbers == analyze("What happened on 9 11?").numbers
    )  # no fraction
    assert analyze("Open 24/7").numbers["24"] == 1
    assert guard.reject("What's the second longest river in Africa?", "What's the longest river in Africa?")
    assert guard.reject("Who is the second most famous painter?", "Who is the most famous painter?")
    assert not guard.reject("Wait a second, is this the longest river?", "Is this the longest river?")
    assert guard.reject(
        "Who was the first person to walk on the moon?", "Who was the second person to walk on the moon?"
    )
    assert not guard.reject("Who won the 2nd presidential debate?", "Who won the second presidential debate?")


def test_roman_numerals_exponents_and_bracketed_suffixes_are_numbers() -> None:
    guard = NumbersGuard()
    for text in ("What caused WW2?", "What caused World War II?", "What caused the Second World War?"):
        assert analyze(text).numbers == {"2": 1}, text
    assert guard.reject("What started World War II?", "What started World War I?")
    assert not guard.reject("How soon is world war III?", "Are we getting closer to world war 3?")
    assert analyze("Louis XIV").numbers == {"14": 1} and analyze("Henry VIII").numbers == {"8": 1}
    assert not analyze("I think I can").numbers and not analyze("DIV and MIX tags").numbers
    assert not analyze("WHAT WAS WORLD WAR II").numbers  # all capitals: no telling numerals from words
    assert not guard.reject("Differentiate x^2 sin(x)", "Differentiate x² sin x")
    assert guard.reject("Differentiate x² sin x", "Differentiate x³ sin x")
    assert not guard.reject("Is a 401(k) worth it?", "Is a 401k worth it?")


def test_degrees_f_and_c_are_units() -> None:
    for text in ("boil in °F", "boil in degrees F", "boil in ℉"):
        assert analyze(text).units == analyze("boil in Fahrenheit").units == {"fahrenheit"}
    assert analyze("bake at 180°C").units == {"celsius"}
    assert UnitsGuard().reject("Bake at 180 degrees C", "Bake at 180 degrees F")


def test_a_numeronym_is_the_word_it_counts() -> None:
    a, b = "k8s: how to remove a pod", "How do I remove a pod in Kubernetes?"
    assert not NumbersGuard().reject(a, b) and not NumbersGuard().reject(b, a)
    assert missing_words(analyze(b), analyze(a)) == []
    assert NumbersGuard().reject("Set up i18n in React", "Set up i19n in React")  # no word spelled out
    assert NumbersGuard().reject("Install k8s on Ubuntu", "Install k9s on Ubuntu")  # two codes


# --- the content guard -------------------------------------------------------------------


def test_missing_words_ignore_function_words_inflections_and_compounds() -> None:
    assert missing_words(analyze("How can I fix my wi-fi?"), analyze("How do I fix the wifi")) == []
    assert missing_words(analyze("merge two dicts"), analyze("merge two dictionaries")) == []
    assert missing_words(analyze("boiling point of ethanol"), analyze("boiling point of methanol")) == [
        "ethanol"
    ]


def test_function_words_spell_no_acronym() -> None:
    # "in Shasta" has the initials of "is", "is solid" those of "is": neither excuses a word
    a = analyze("Is there a rehab center in Shasta County?")
    b = analyze("Is there a rehab center in Sacramento County?")
    assert missing_words(a, b) == ["shasta"] and missing_words(b, a) == ["sacramento"]
    assert missing_words(analyze("What is solid carbon dioxide?"), analyze("What is carbon dioxide?")) == [
        "solid"
    ]
    assert missing_words(analyze("What is machine learning?"), analyze("What is ML?")) == []
    assert missing_words(analyze("Best pizza in New York City"), analyze("Best pizza in NYC")) == []


@pytest.fixture(scope="module")
def embedder(model: tuple[EncodeFn, int]) -> Embedder:
    """An Embedder over the real model (word vectors included)."""
    encode, dim = model
    return Embedder(encode, dim)


async def test_word_vectors_come_from_the_model(embedder: Embedder) -> None:
    assert embedder.has_words
    words = await embedder.embed_words("How do I fix a flat tire on my bike?")
    assert words.words[:4] == ("how", "do", "i", "fix")
    assert words.vectors.shape == (len(words.words), embedder.dim)
    assert np.allclose(np.linalg.norm(words.vectors, axis=1), 1.0, atol=1e-4)
    batches = await asyncio.gather(*(embedder.embed_words(f"question number {i}") for i in range(20)))
    assert [w.words[-1] for w in batches] == [str(i) for i in range(20)]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # alligator / caiman (0.71, not capitalized: not names) align too well to be told apart
        *[(a, b) for a, b in pairs_of("entity") if "alligator" not in a],
        ("What are good universities in Boston?", "What are good universities?"),  # a name added
        ("How do I reverse a list in python?", "How do I reverse a list in javascript?"),  # lower case
        # names of one kind align at 0.5-0.7: a name needs guard_content_name_alignment (0.7)
        (
            "What is the penalty for driving without a license in Washington?",
            "What is the penalty for driving without a license in California?",
        ),
        (
            "How does the education system in South America compare to North America?",
            "How does the education system in South America compare to Europe?",
        ),
    ],
)
async def test_content_guard_rejects_swapped_and_added_names(embedder: Embedder, a: str, b: str) -> None:
    guard = ContentGuard(embedder)
    assert await guard.reject(b, a) and await guard.reject(a, b)


MODIFIED = [
    ("What is a good gluten-free pizza dough recipe?", "What is a good pizza dough recipe?"),
    ("How do I make a vegan chocolate cake?", "How do I make a chocolate cake?"),
    ("What is the best free antivirus for Windows?", "What is the best antivirus for Windows?"),
    ("How do I cook salmon in an air fryer?", "How do I cook frozen salmon in an air fryer?"),
]


@pytest.mark.parametrize(("a", "b"), MODIFIED)
async def test_content_guard_rejects_added_modifiers_when_asked(embedder: Embedder, a: str, b: str) -> None:
    assert not await ContentGuard(embedder).reject(b, a)  # off by default (see bench/quality.md)
    guard = ContentGuard(embedder, modifiers=True)
    assert await guard.reject(b, a) and await guard.reject(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I fix a flat bike tire?", "How do I repair a flat tire on my bike?"),
        ("How can I configure a VPN on my router?", "How do I set up a VPN on my router?"),
        ("What are fun things to do in Rome with kids?", "What can I do in Rome with children?"),
        ("How do I merge two dictionaries in Python?", "How can I merge two dicts in Python?"),
        ("What is the capital of France?", "What's the capital city of France?"),
        ("What is inflation?", "What does inflation mean in economics?"),
        # abbreviations of names: initials, or a name aligned with its short form
        ("What is the population of NYC?", "What is the population of New York City?"),
        ("How do I get a visa for the US?", "How do I get a visa for the United States?"),
        ("How do I learn JS quickly?", "How do I learn JavaScript quickly?"),
    ],
)
async def test_content_guard_accepts_synonyms_and_added_detail(embedder: Embedder, a: str, b: str) -> None:
    guard = ContentGuard(embedder)
    assert not await guard.reject(b, a) and not await guard.reject(a, b)


async def test_content_guard_asks_the_model_only_when_text_cannot_decide(embedder: Embedder) -> None:
    guard = ContentGuard(embedder)
    assert not await guard.reject("How do I tie a tie?", "How do you tie a tie?")
    assert not await guard.reject("What is inflation?", "What does inflation mean in economics?")
    assert guard.model_calls == 0
    assert await guard.reject("What is the capital of Austria?", "What is the capital of Australia?")
    assert guard.model_calls == 1
    started = time.perf_counter()
    for _ in range(20):  # word vectors of both prompts are cached
        await guard.reject("What is the capital of Austria?", "What is the capital of Australia?")
    assert (time.perf_counter() - started) / 20 < 0.005


async def test_content_guard_without_word_vectors_uses_stems_alone() -> None:
    guard = ContentGuard(None)
    assert await guard.reject("What is the capital of Austria?", "What is the capital of Australia?")
    assert await guard.reject("How do I fix a bike?", "How do I repair a bike?")  # no synonyms
    assert not await guard.reject("How do I tie a tie?", "How do you tie a tie?")
    assert not await guard.reject("Where is the Louvre?", "Where is the louvre museum?")  # case


# --- verifiers and wiring ----------------------------------------------------------------


def overlap_score(pairs: Sequence[tuple[str, str]]) -> list[float]:
    """A deterministic pair scorer: Jaccard overlap of the word sets."""
    out = []
    for a, b in pairs:
        x, y = set(analyze(a).words), set(analyze(b).words)
        out.append(len(x & y) / len(x | y))
    return out


def make_verifier(settings: CacheSettings, embedder: Embedder) -> CrossEncoderVerifier:
    """A verifier factory as a user would write one (named in ``semantic_cache.verifier``)."""
    return CrossEncoderVerifier(overlap_score, 0.5, embedder, name="overlap")


def make_nothing(settings: CacheSettings, embedder: Embedder) -> object:
    """A broken verifier factory: returns something that is not a guard."""
    return object()


async def test_cross_encoder_verifier_runs_the_scorer_off_the_loop(model: tuple[EncodeFn, int]) -> None:
    embedder = Embedder(*model)
    verifier = make_verifier(CacheSettings(), embedder)
    assert not await verifier.reject("how do I tie a tie", "how do I tie a tie please")
    assert await verifier.reject("how do I tie a tie", "what is a bow tie made of")
    embedder.close()


async def test_build_guards_follows_settings(model: tuple[EncodeFn, int]) -> None:
    embedder = Embedder(*model)
    names = [g.name for g in await build_guards(CacheSettings(), embedder)]
    assert names == [
        "numbers",
        "units",
        "negation",
        "opposites",
        "direction",
        "code",
        "instructions",
    ]  # content: the verifier's
    on = with_overrides(CacheSettings(), guard_content=True)
    assert [g.name for g in await build_guards(on, embedder)][-1] == "content"
    off = with_overrides(
        CacheSettings(), guard_units=False, guard_content=False, guard_code=False, guard_instructions=False
    )
    assert [g.name for g in await build_guards(off, embedder)] == [
        "numbers", "negation", "opposites", "direction"
    ]  # fmt: skip
    plugged = with_overrides(CacheSettings(), verifier="tests.unit.cache.test_guards:make_verifier")
    assert [g.name for g in await build_guards(plugged, embedder)][-1] == "overlap"
    for spec, message in [
        ("tests.no_such_module:make", "cannot import tests.no_such_module"),
        ("tests.unit.cache.test_guards:nothing_here", "has no function nothing_here"),
        ("tests.unit.cache.test_guards:make_nothing", "has no name and reject"),
        ("tests.unit.cache.test_guards:overlap_score", "the factory failed"),
    ]:
        with pytest.raises(ConfigError, match=message):
            await build_guards(with_overrides(CacheSettings(), verifier=spec), embedder)
    embedder.close()


class AsyncVeto:
    """An async guard (a verifier) that rejects candidates containing a marker, counting calls."""

    name = "async-veto"

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.calls = 0

    async def reject(self, query: str, candidate: str) -> bool:
        self.calls += 1
        await asyncio.sleep(0)
        return self.marker in candidate


async def test_cache_awaits_async_guards_and_spares_them_after_a_veto() -> None:
    veto = AsyncVeto("0.1")
    cache = make_cache(threshold=0.9, guards=[RejectContaining("0.05"), veto])
    await cache.store(query("v:1,0.05"), answer("vetoed by the sync guard"))
    await cache.store(query("v:1,0.1"), answer("vetoed by the async guard"))
    await cache.store(query("v:1,0.3"), answer("served"))
    result = await cache.check(query("v:1,0"))
    assert result.entry is not None and result.entry.response == answer("served")
    assert result.rejections == ["marker", "async-veto"]
    assert veto.calls == 2  # not called for the candidate the sync guard had already vetoed


async def test_content_guard_asks_for_a_prompt_once_when_checked_against_many(embedder: Embedder) -> None:
    asked: list[str] = []

    class Counting:
        has_words = True

        async def embed_words(self, text: str) -> WordVectors:
            asked.append(text)
            return await embedder.embed_words(text)

    guard = ContentGuard(Counting())  # type: ignore[arg-type]
    query_text = "How do I reverse a list in python?"
    others = [f"How do I reverse a list in {lang}?" for lang in ("javascript", "rust", "golang", "kotlin")]
    verdicts = await asyncio.gather(*(guard.reject(query_text, other) for other in others))
    assert verdicts == [True] * 4 and guard.model_calls == 4
    assert sorted(asked) == sorted([query_text, *others])  # the query's words once, not four times


async def test_server_wires_the_configured_guards(model: tuple[EncodeFn, int]) -> None:
    from extproc.app import build_server

    server = await build_server(CacheSettings(), model)
    cache: SemanticCache = server.shared.cache
    assert [g.name for g in cache.guards] == [
        "numbers",
        "units",
        "negation",
        "opposites",
        "direction",
        "code",
        "instructions",
    ]
    assert cache.scorer is not None and cache.min_confidence == 0.75  # the shipped verifier
    assert cache.scorer.words is not None  # word vectors for its alignment features
    assert cache.scorer.model.embedding_dim == 384 and cache.scorer.embed is not None  # reads both vectors
    await cache.close()


def test_the_builtin_verifier_falls_back_to_its_text_model_for_another_embedding_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from extproc.cache.guards import build_scorer
    from extproc.cache.guards.learned import VerifierModel
    from tests.support.toy import DIM, toy_encode

    caplog.set_level("INFO")
    embedder = Embedder(toy_encode, DIM)
    other = CacheSettings(embedding_model="toy-8d")
    scorer = build_scorer(other, embedder, [])
    assert scorer is not None and scorer.model.embedding_dim == 0  # the text features alone
    assert "using the built-in model of the text features alone" in caplog.text
    # a file the user named is used as it is, or refused when its vectors cannot be the model's
    n = 21 + 2 * 4
    wrong = VerifierModel(
        np.zeros(n), np.ones(n), np.zeros(n), 0.0, np.array([0.0, 1.0]), np.array([0.0, 1.0]), embedding_dim=4
    )
    wrong.save(tmp_path / "m.json")
    with pytest.raises(ConfigError, match=r"reads 4-d embeddings .* toy-8d gives 8: retrain it"):
        build_scorer(with_overrides(other, verifier_model=str(tmp_path / "m.json")), embedder, [])
    embedder.close()


def test_the_builtin_verifier_knows_the_model_a_remote_endpoint_serves() -> None:
    """embedding_model stays at its default with an endpoint: the vectors are the served
    model's (bge here, 384-d as MiniLM), and MiniLM's embedding weights mean nothing for them."""
    from extproc.cache.guards import build_scorer

    embedder = Embedder(lambda texts: np.ones((len(texts), 384), np.float32) / 384**0.5, 384)
    endpoint = {"embedding_endpoint": "http://embed:8000/v1/embeddings"}
    bge = CacheSettings(**endpoint, embedding_endpoint_model="BAAI/bge-small-en-v1.5")
    scorer = build_scorer(bge, embedder, [])
    assert scorer is not None and scorer.model.embedding_dim == 0  # the text features alone
    minilm = CacheSettings(**endpoint, embedding_endpoint_model="sentence-transformers/all-MiniLM-L6-v2")
    scorer = build_scorer(minilm, embedder, [])
    assert scorer is not None and scorer.model.embedding_dim == 384  # the same model, served
    embedder.close()


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("guard_numbers: yes please", "semantic_cache.guard_numbers: must be true or false"),
        ("guard_content: 1", "semantic_cache.guard_content: must be true or false"),
        (
            "guard_content_min_alignment: 1.5",
            "semantic_cache.guard_content_min_alignment: must be a number between 0 and 1",
        ),
        ("verifier: my_verifier", 'semantic_cache.verifier: must be "package.module:function"'),
        ("guard_spelling: true", "semantic_cache.guard_spelling: unknown key"),
    ],
)
def test_guard_settings_are_validated(yaml_text: str, expected: str) -> None:
    import yaml

    from extproc.config.settings import parse_config

    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        parse_config(yaml.safe_load("semantic_cache:\n  " + yaml_text + "\n"))


def test_guard_settings_load() -> None:
    from extproc.config.settings import parse_config

    settings = parse_config(
        {
            "semantic_cache": {
                "guard_direction": False,
                "guard_content_min_alignment": 0.6,
                "verifier": "a.b:make",
            }
        }
    )
    assert not settings.guard_direction and settings.guard_numbers
    assert settings.guard_content_min_alignment == 0.6 and settings.verifier == "a.b:make"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What are the tax brackets for this year?", "What were the tax brackets last year?"),
        ("What's the weather forecast for Chicago tomorrow?", "What was the weather in Chicago yesterday?"),
        ("Any concerts in Austin this weekend?", "Any concerts in Austin next weekend?"),
        ("What did the Fed decide last night?", "What did the Fed decide today?"),
        ("What should I plant this spring?", "What should I plant next spring?"),
    ],
)
def test_relative_dates_are_numbers(a: str, b: str) -> None:
    assert NumbersGuard().reject(a, b) and NumbersGuard().reject(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [  # a date on one side only, the same date said twice, or a story's "next day"
        ("What is the best language to learn today?", "What is the best language to learn?"),
        ("What would you finish today if you died tomorrow?", "What would you do if you died tomorrow?"),
        ("Sales in the past week?", "Sales over the last week?"),
        ("What happened this morning?", "What happened today?"),
        ("What did you do the next day after the party?", "What did you do yesterday after the party?"),
        ("Is it my last day at work today?", "Is it my first day at work today?"),  # opposites' job
        ("Is cricket popular in today's world?", "Is cricket popular tomorrow?"),  # the era
    ],
)
def test_relative_dates_that_do_not_differ(a: str, b: str) -> None:
    assert not dates_differ(a, b) and not dates_differ(b, a)


def test_relative_dates_read_as_unit_and_offset() -> None:
    assert relative_dates("What happened last night?") == relative_dates("What happened yesterday?")
    assert relative_dates("Plans for next Monday?") == {("monday", 1): 1}
    assert not relative_dates("What happened on the last day of the war?")
