"""The mini world's prompt language: a tiny grammar, its parser, a sampler and a fixed word vocabulary.

The mini model (see the package's mini-model docs, ``assets/mini/MODEL_CARD.md``) is trained on a procedural world
whose ground truth is known, so that long-horizon drift can be measured. Prompts describe one such scene. Grammar
(words are case-insensitive, commas and a final full stop are optional)::

    prompt     := objects [verb [adverb]] ["on" [article] background "background"] [camera]
    objects    := object (("and" | ",") object)*            -- 1 to 3 objects, each of a different colour
    object     := [article] modifier* colour shape           -- modifier: a size or a speed, any order
    background := "dark" | colour | ("plain" | "striped" | "checkered") colour
    camera     := ["," | "and" | "while"] ["the"] "camera" ("pans" | "pan" | "panning") direction

    article    := a | an | one | the
    colour     := red | green | blue | yellow | cyan | magenta | white | orange
    shape      := circle | square | triangle
    size       := small | medium | big                      -- default medium
    speed      := slow | normal | fast                      -- default normal
    adverb     := slow | slowly | fast | quickly            -- applies to every object without its own speed
    verb       := moves | move | bounces | bounce
    direction  := left | right | up | down

Defaults: no background phrase means a dark background; no camera phrase means a static camera. An object may not
share its colour with another object or with the background (it would be invisible to the colour-based ground-truth
measurement of ``measure.py``). Examples::

    "a red circle and a blue square bounce on a striped green background"
    "a small yellow triangle moves fast on a dark background, camera pans left"
    "a big slow white square, a fast cyan circle and a magenta triangle on a checkered orange background"
    "an orange circle"                                   -> a medium, normal-speed orange circle on a dark background

``SceneSpec.to_prompt()`` writes the canonical form (``parse_prompt(spec.to_prompt()) == spec``).

Text for the mini model's tiny learned embedding: ``tokenize`` parses the prompt and emits the *content* words of
its canonical scene in a fixed order (per object: size, speed, colour, shape; then the background kind and colour;
then the pan direction), so paraphrases of one scene get identical tokens and a 3-object scene fits 16 tokens.
Token ids index ``VOCAB`` plus one; 0 is padding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BACKGROUND_KINDS",
    "COLOURS",
    "DIRECTIONS",
    "SHAPES",
    "SIZES",
    "SPEEDS",
    "VOCAB",
    "BackgroundSpec",
    "ObjectSpec",
    "SceneSpec",
    "CLOSE_COLOURS",
    "SceneMix",
    "WORLD_V5",
    "parse_prompt",
    "sample_class_scene",
    "sample_scene",
    "scene_class",
    "tokenize",
    "tokenize_spec",
]

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.98, 0.90, 0.15),
    "cyan": (0.10, 0.85, 0.90),
    "magenta": (0.90, 0.15, 0.85),
    "white": (0.95, 0.95, 0.95),
    "orange": (1.00, 0.55, 0.05),
}
"""Object colours in RGB 0-1 (backgrounds use darker tones of them, see ``BackgroundSpec.tones``)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "medium", "big")
SPEEDS: tuple[str, ...] = ("slow", "normal", "fast")
BACKGROUND_KINDS: tuple[str, ...] = ("dark", "plain", "striped", "checkered")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

DARK_RGB: tuple[float, float, float] = (0.06, 0.06, 0.08)
PLAIN_TONE = 0.6  # a plain/striped/checkered background's first tone is this fraction of its colour ...
SECOND_TONE = 0.3  # ... and the second tone of striped/checkered backgrounds this fraction.

_ARTICLES = ("a", "an", "one", "the")
_VERBS = ("moves", "move", "bounces", "bounce")
_ADVERBS = {"slow": "slow", "slowly": "slow", "fast": "fast", "quickly": "fast"}
_CAMERA_VERBS = ("pans", "pan", "panning")
_GRAMMAR = ("and", "on", "background", "camera", "while", ",")

VOCAB: tuple[str, ...] = tuple(
    dict.fromkeys(
        (
            *COLOURS,
            *SHAPES,
            *SIZES,
            *SPEEDS,
            *BACKGROUND_KINDS,
            *DIRECTIONS,
            *_ARTICLES,
            *_VERBS,
            *_ADVERBS,
            *_CAMERA_VERBS,
            *_GRAMMAR,
        )
    )
)
"""Every word the parser accepts (the comma counts as a word). Token id of ``VOCAB[i]`` is ``i + 1``."""

_WORD_INDEX = {word: i + 1 for i, word in enumerate(VOCAB)}
MAX_OBJECTS = 3


def _vocabulary_help() -> str:
    return (
        f"valid words: colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; sizes {', '.join(SIZES)}; "
        f"speeds {', '.join(SPEEDS)} (adverbs {', '.join(_ADVERBS)}); backgrounds {', '.join(BACKGROUND_KINDS)}; "
        f"camera directions {', '.join(DIRECTIONS)}; "
        f"other words {', '.join(_ARTICLES + _VERBS + _CAMERA_VERBS + _GRAMMAR)}"
    )


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene: a colour, a shape, a size class and a speed class (world.py gives them pixel units)."""

    colour: str
    shape: str
    size: str = "medium"
    speed: str = "normal"

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("colour", self.colour, tuple(COLOURS)),
            ("shape", self.shape, SHAPES),
            ("size", self.size, SIZES),
            ("speed", self.speed, SPEEDS),
        ):
            if value not in valid:
                raise ValueError(f"unknown object {name} {value!r}; valid: {', '.join(valid)}")

    @property
    def rgb(self) -> tuple[float, float, float]:
        return COLOURS[self.colour]

    def to_words(self) -> list[str]:
        words = [self.size] if self.size != "medium" else []
        if self.speed != "normal":
            words.append(self.speed)
        words += [self.colour, self.shape]
        return ["an" if words[0][0] in "aeiou" else "a"] + words


@dataclass(frozen=True)
class BackgroundSpec:
    """``dark`` (no colour), or a ``plain`` / ``striped`` / ``checkered`` background of a palette colour."""

    kind: str = "dark"
    colour: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in BACKGROUND_KINDS:
            raise ValueError(f"unknown background kind {self.kind!r}; valid: {', '.join(BACKGROUND_KINDS)}")
        if self.kind == "dark" and self.colour is not None:
            raise ValueError("a dark background takes no colour (use kind='plain' for a coloured one)")
        if self.kind != "dark" and self.colour not in COLOURS:
            raise ValueError(
                f"a {self.kind} background needs a colour, one of {', '.join(COLOURS)}; got {self.colour!r}"
            )

    @property
    def tones(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """The two RGB tones the background is painted with (equal for dark and plain backgrounds)."""
        if self.kind == "dark":
            return DARK_RGB, DARK_RGB
        base = COLOURS[self.colour]
        first = tuple(PLAIN_TONE * c for c in base)
        if self.kind == "plain":
            return first, first
        return first, tuple(SECOND_TONE * c for c in base)

    def to_words(self) -> list[str]:
        if self.kind == "dark":
            return ["a", "dark", "background"]
        return ["a", self.kind, self.colour, "background"]


@dataclass(frozen=True)
class SceneSpec:
    """What a prompt says: 1-3 objects of distinct colours, a background and an optional camera pan direction."""

    objects: tuple[ObjectSpec, ...]
    background: BackgroundSpec = field(default_factory=BackgroundSpec)
    pan: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"objects must have different colours (got {', '.join(colours)}): colour identifies them")
        if self.background.colour in colours:
            raise ValueError(
                f"the {self.background.colour} object would vanish into the {self.background.colour} background; "
                "pick another background colour"
            )
        if self.pan is not None and self.pan not in DIRECTIONS:
            raise ValueError(f"unknown camera pan direction {self.pan!r}; valid: {', '.join(DIRECTIONS)} or None")

    def to_prompt(self) -> str:
        """The canonical text of this scene, e.g. ``"a red circle and a big blue square move on a dark background"``."""
        objects = " and ".join(" ".join(o.to_words()) for o in self.objects)
        verb = "moves" if len(self.objects) == 1 else "move"
        text = f"{objects} {verb} on {' '.join(self.background.to_words())}"
        if self.pan is not None:
            text += f", camera pans {self.pan}"
        return text

    def content_words(self) -> list[str]:
        """The words ``tokenize`` encodes: per object size, speed, colour, shape; background kind [colour]; [pan]."""
        words: list[str] = []
        for o in self.objects:
            words += [o.size, o.speed, o.colour, o.shape]
        words.append(self.background.kind)
        if self.background.colour is not None:
            words.append(self.background.colour)
        if self.pan is not None:
            words.append(self.pan)
        return words


def _words(text: str) -> list[str]:
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
    words = re.sub(r",", " , ", text.strip().lower().rstrip(".")).split()
    for word in words:
        if word not in _WORD_INDEX:
            raise ValueError(f"unknown word {word!r} in prompt {text!r}; {_vocabulary_help()}")
    if not words:
        raise ValueError("empty prompt; describe 1 to 3 objects, e.g. 'a red circle on a dark background'")
    return words


class _Parser:
    """Recursive descent over the word list (grammar in the module docstring)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.words = _words(text)
        self.i = 0

    def peek(self, offset: int = 0) -> str | None:
        j = self.i + offset
        return self.words[j] if j < len(self.words) else None

    def camera_ahead(self) -> bool:
        """Whether the words from here on are the camera phrase (``, and the camera ...``)."""
        j = self.i
        while j < len(self.words) and self.words[j] in (",", "and", "while", "the"):
            j += 1
        return j < len(self.words) and self.words[j] == "camera"

    def take(self) -> str:
        word = self.words[self.i]
        self.i += 1
        return word

    def fail(self, expected: str) -> ValueError:
        got = repr(self.peek()) if self.peek() is not None else "the end of the prompt"
        return ValueError(f"expected {expected} at word {self.i + 1} of {self.text!r}, got {got}; {_vocabulary_help()}")

    def parse(self) -> SceneSpec:
        objects = [self.object()]
        while self.peek() in ("and", ",") and not self.camera_ahead():
            self.take()
            objects.append(self.object())
        adverb = None
        if self.peek() in _VERBS:
            self.take()
            if self.peek() in _ADVERBS:
                adverb = _ADVERBS[self.take()]
        if adverb is not None:
            objects = [o if o[3] else (o[0], o[1], o[2], adverb) for o in objects]
        background = BackgroundSpec()
        if self.peek() == "on":
            self.take()
            background = self.background()
        pan = self.camera()
        if self.peek() is not None:
            raise self.fail("nothing more (the prompt should end here)")
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise ValueError(f"a prompt describes 1 to {MAX_OBJECTS} objects, {self.text!r} has {len(objects)}")
        specs = tuple(ObjectSpec(colour=c, shape=s, size=z or "medium", speed=v or "normal") for c, s, z, v in objects)
        return SceneSpec(objects=specs, background=background, pan=pan)

    def object(self) -> tuple[str, str, str | None, str | None]:
        if self.peek() in _ARTICLES:
            self.take()
        size = speed = None
        while self.peek() in SIZES or self.peek() in SPEEDS:
            word = self.take()
            if word in SIZES:
                if size is not None:
                    raise ValueError(f"object given two sizes ({size}, {word}) in {self.text!r}")
                size = word
            else:
                if speed is not None:
                    raise ValueError(f"object given two speeds ({speed}, {word}) in {self.text!r}")
                speed = word
        if self.peek() not in COLOURS:
            raise self.fail(f"an object colour ({', '.join(COLOURS)})")
        colour = self.take()
        if self.peek() not in SHAPES:
            raise self.fail(f"a shape ({', '.join(SHAPES)}) after {colour!r}")
        return colour, self.take(), size, speed

    def background(self) -> BackgroundSpec:
        if self.peek() in _ARTICLES:
            self.take()
        word = self.peek()
        if word == "dark":
            self.take()
            spec = BackgroundSpec()
        elif word in ("plain", "striped", "checkered"):
            self.take()
            if self.peek() not in COLOURS:
                raise self.fail(f"a background colour after {word!r} ({', '.join(COLOURS)})")
            spec = BackgroundSpec(kind=word, colour=self.take())
        elif word in COLOURS:
            spec = BackgroundSpec(kind="plain", colour=self.take())
        else:
            raise self.fail("a background (dark, plain <colour>, striped <colour>, checkered <colour> or <colour>)")
        if self.peek() != "background":
            raise self.fail("the word 'background'")
        self.take()
        return spec

    def camera(self) -> str | None:
        start = self.i
        for optional in ((",",), ("and", "while"), ("the",)):
            if self.peek() in optional:
                self.take()
        if self.peek() != "camera":
            if self.i != start:
                raise self.fail("'camera'")
            return None
        self.take()
        if self.peek() not in _CAMERA_VERBS:
            raise self.fail("'pans' after 'camera'")
        self.take()
        if self.peek() not in DIRECTIONS:
            raise self.fail(f"a pan direction ({', '.join(DIRECTIONS)})")
        return self.take()


def parse_prompt(text: str) -> SceneSpec:
    """Parse a prompt of the mini-world language (module docstring) into a ``SceneSpec``.

    Raises ``ValueError`` naming the unknown or misplaced word and listing the valid vocabulary.
    """
    return _Parser(text).parse()


def sample_scene(rng: np.random.Generator | int, *, pan_probability: float | None = None,
                 mix: SceneMix | None = None) -> SceneSpec:
    """Draw a random valid scene (training data) from ``mix`` (default: the original world): 1-3 objects of
    distinct colours, any background, maybe a pan. Defaults (medium size, normal speed, dark background) are drawn
    more often than each alternative. With the default mix the draws are those of every earlier model's training."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    mix = mix or SceneMix()
    pan_probability = mix.pan_probability if pan_probability is None else pan_probability
    names = list(COLOURS)
    count = int(rng.choice([1, 2, 3], p=list(mix.objects_p)))
    while True:
        colours = [names[i] for i in rng.choice(len(names), size=count, replace=False)]
        if mix.close_colours or not any(pair <= set(colours) for pair in CLOSE_COLOURS):
            break
    objects = tuple(
        ObjectSpec(
            colour=colour,
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            size=SIZES[int(rng.choice(3, p=list(mix.sizes_p)))],
            speed=SPEEDS[int(rng.choice(3, p=[0.3, 0.4, 0.3]))],
        )
        for colour in colours
    )
    kind = BACKGROUND_KINDS[int(rng.choice(4, p=[0.25, 0.25, 0.25, 0.25]))]
    free = [c for c in names if c not in colours]
    background = BackgroundSpec(kind=kind, colour=None if kind == "dark" else free[int(rng.integers(len(free)))])
    pan = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))] if rng.random() < pan_probability else None
    return SceneSpec(objects=objects, background=background, pan=pan)


CLOSE_COLOURS: frozenset[frozenset[str]] = frozenset({frozenset({"yellow", "orange"}), frozenset({"red", "orange"})})
"""Object colour pairs the mini codec barely tells apart (latent distance 3.3 and 4.4 against a median pair's 8.0):
a scene with both is the *hard* class (:func:`scene_class`)."""


@dataclass(frozen=True)
class SceneMix:
    """How training draws scenes: probabilities of 1, 2 and 3 objects, of the small / medium / big sizes, whether
    near-identical colour pairs (:data:`CLOSE_COLOURS`) may share a scene, and the chance of a camera pan.

    The default is the original world (v1-v4 training and the long-horizon study's held-out pool)."""

    objects_p: tuple[float, float, float] = (0.3, 0.4, 0.3)
    sizes_p: tuple[float, float, float] = (0.3, 0.4, 0.3)
    close_colours: bool = True
    pan_probability: float = 0.3


WORLD_V5 = SceneMix(objects_p=(0.45, 0.45, 0.10), sizes_p=(0.10, 0.50, 0.40), close_colours=False)
"""The v5 training world (a world the mini model can hold): mostly one or two objects of medium or big size and
no near-identical colour pairs; three objects, small objects and close colours stay in a tenth of the clips so the
language's whole range is still seen (they form the reported *hard* class)."""


def scene_class(spec: SceneSpec) -> str:
    """``"1-object"`` or ``"2-object"`` for scenes of the v5 world (medium / big objects, no close colour pair),
    else ``"hard"`` (three objects, a small object or a close colour pair)."""
    colours = {o.colour for o in spec.objects}
    if (len(spec.objects) > 2 or any(o.size == "small" for o in spec.objects)
            or any(pair <= colours for pair in CLOSE_COLOURS)):
        return "hard"
    return f"{len(spec.objects)}-object"


def sample_class_scene(rng: np.random.Generator, cls: str) -> SceneSpec:
    """A scene of the v5 world of class ``cls`` (``"1-object"``, ``"2-object"`` or ``"hard"``), by rejection."""
    mix = SceneMix(objects_p=(0.5, 0.5, 0.0), sizes_p=(0.0, 0.55, 0.45), close_colours=False) if cls != "hard" \
        else SceneMix()
    while True:
        spec = sample_scene(rng, mix=mix)
        if scene_class(spec) == cls:
            return spec


def tokenize_spec(spec: SceneSpec, max_len: int = 16) -> list[int]:
    """Token ids (``VOCAB`` index + 1) of the scene's content words, right-padded with 0 to ``max_len``."""
    words = spec.content_words()
    if len(words) > max_len:
        raise ValueError(
            f"scene needs {len(words)} tokens but max_len={max_len}; raise max_len to at least {len(words)}"
        )
    return [_WORD_INDEX[w] for w in words] + [0] * (max_len - len(words))


def tokenize(text: str, max_len: int = 16) -> list[int]:
    """Parse ``text`` and return its canonical content tokens (see module docstring); 0 = padding.

    Unknown words raise ``ValueError``. Paraphrases of one scene give identical tokens.
    """
    return tokenize_spec(parse_prompt(text), max_len=max_len)
