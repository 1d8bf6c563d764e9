"""What the leaderboard (:mod:`deepforcing.eval.leaderboard`) runs and what it decides: its entries (every
registered cache policy at its release defaults, plus LoL's RoPE jitter on its base), each method's paper and
release, and the table of headline claims that paired comparisons decide.

Entries come from the policy registry when the board runs (:data:`deepforcing.cache.POLICIES`), so a policy
registered later (a plugin, a new method) joins the board without an edit here. Claims whose policies are not
registered are reported as "not run".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

__all__ = ["Entry", "MethodInfo", "Claim", "CLAIMS", "LONGLIVE", "LOL", "board_entries", "select_entries", "method_info",
           "BOARD_OUT", "SCENE_CLASSES", "MAIN_CLASSES", "START_MODES"]

BOARD_OUT = "results/leaderboard"  # the board's default folder
SCENE_CLASSES = ("1-object", "2-object", "hard")  # deepforcing.mini.quality.SCENE_CLASSES
MAIN_CLASSES = ("1-object", "2-object")  # the board's headline classes; "hard" is reported separately
START_MODES = ("prompt", "truth")  # from the prompt alone; from the world's true first chunk (image-to-video path)


@dataclass(frozen=True)
class Entry:
    """One row of the board: ``policy`` built with ``sizes`` over the model's defaults (``generate --policy``'s
    resolution). ``short``: run to the shortest horizon only (a policy whose memory grows with the video).
    ``paper_only``: no public release to check against (the numbers are our reading of the paper)."""

    label: str
    policy: str
    sizes: dict = field(default_factory=dict, hash=False)
    paper_only: bool = False
    short: bool = False


@dataclass(frozen=True)
class MethodInfo:
    method: str
    arxiv: str  # "" when the entry has no paper of its own
    release: str  # "owner/repo@commit" of the release the policy reproduces, or why there is none


# LongLive's cache (NVlabs/LongLive@2462895 configs/longlive_inference.yaml: sink_size 3, local_attn_size 12; our
# preset longlive): the base that TriAttention compresses and that LoL jitters, so their claims compare against it
LONGLIVE = Entry("longlive-sink", "attention-sink", {"sink": 3, "window": 12})
# LoL (arXiv 2601.16914): multi-head RoPE jitter on LongLive's sink + rolling window, the paper's best strength 0.8;
# no public code, so paper-only
LOL = Entry("lol", "attention-sink", {**LONGLIVE.sizes, "rope_jitter": 0.8}, paper_only=True)

# The classic policies predate the ``source`` attribute's arXiv form; the 2026 methods name theirs in ``source``
# (preferred when present). Facts from the README's policy table and each module's docstring.
_METHODS: dict[str, MethodInfo] = {
    "self-forcing": MethodInfo("Self Forcing (rolling KV window)", "2506.08009", "guandeh17/Self-Forcing@33593df"),
    "attention-sink": MethodInfo("Attention sink (StreamingLLM / LongLive-style, Deep Forcing App. A)", "2512.05081",
                                 "guandeh17/Self-Forcing@33593df; NVlabs/LongLive@2462895"),
    "rolling-forcing-sink": MethodInfo("Rolling Forcing's sink, training-free (Deep Forcing App. A)", "2512.05081",
                                       "TencentARC/RollingForcing@a1477d0"),
    "deep-sink": MethodInfo("Deep Sink (Deep Forcing §3)", "2512.05081", "cvlab-kaist/DeepForcing@ea9961a"),
    "deep-forcing": MethodInfo("Deep Forcing (Deep Sink + Participative Compression)", "2512.05081",
                               "cvlab-kaist/DeepForcing@ea9961a"),
    "random-topc": MethodInfo("Random Top-C (Deep Forcing App. D ablation)", "2512.05081", "none (an ablation)"),
    "full": MethodInfo("Full cache (never evict; the unbounded reference)", "", "none"),
    "infinity-rope": MethodInfo("∞-RoPE", "2511.20649", "yesiltepe-hidir/infinity-rope@63d7b84"),
    "memrope": MethodInfo("MemRoPE", "2603.12513", "YoungRaeKimm/MemRoPE@b89bf5b"),
    "rolling-sink-replay": MethodInfo("Rolling Sink", "2602.07775", "Rolling-Sink/Rolling-Sink@d7fc0d9"),
    "dummy-forcing": MethodInfo("Dummy Forcing", "2601.20499", "csguoh/DummyForcing@28128ed"),
    "forcing-kv": MethodInfo("Forcing-KV", "2605.09681", "zju-jiyicheng/Forcing-KV@50ac1f4"),
    "triattention": MethodInfo("TriAttention", "2604.04921", "WeianMao/triattention@c3744ee"),
    "longlive-sink": MethodInfo("LongLive's cache (attention sink 3 + 12-frame window)", "2509.22622",
                                "NVlabs/LongLive@2462895"),
    "lol": MethodInfo("LoL (multi-head RoPE jitter 0.8 on LongLive's cache)", "2601.16914", "none (no public code)"),
}
_ARXIV = re.compile(r"arXiv[: ]*(\d{4}\.\d{4,5})")
_RELEASE = re.compile(r"([\w.-]+/[\w.-]+@[0-9a-f]{7,40})")


def method_info(entry: Entry) -> MethodInfo:
    """The entry's method, arXiv id and release: the policy's own ``source`` when it names them, else the table."""
    from deepforcing.cache import POLICIES

    known = _METHODS.get(entry.label) or _METHODS.get(entry.policy)
    source = getattr(POLICIES[entry.policy], "source", "") if entry.policy in POLICIES and not entry.paper_only else ""
    arxiv, release = _ARXIV.search(source or ""), _RELEASE.findall(source or "")
    if known is None and not source:
        return MethodInfo(entry.label, "", "unknown")
    return MethodInfo(known.method if known else entry.label,
                      arxiv.group(1) if arxiv else (known.arxiv if known else ""),
                      "; ".join(dict.fromkeys(release)) if release else (known.release if known else "unknown"))


def board_entries(options: dict[str, dict] | None = None) -> list[Entry]:
    """Every registered policy at its release defaults, in registration order, then LongLive's cache and LoL
    (paper-only) on it. ``full``'s memory and time grow with the video, so it runs to the shortest horizon only.
    ``options``: entry label -> extra policy options (a per-checkpoint file such as Forcing-KV's ``head_profile``
    or TriAttention's ``calibration``)."""
    from deepforcing.cache import POLICIES

    entries = [Entry(name, name, {}, short=not _bounded(name)) for name in POLICIES]
    if LONGLIVE.policy in POLICIES:
        entries += [LONGLIVE, LOL]
    options = options or {}
    return [replace(e, sizes={**e.sizes, **options[e.label]}) if e.label in options else e for e in entries]


def _bounded(name: str) -> bool:
    from deepforcing.cache import make_policy

    try:
        return bool(make_policy(name).bounded)
    except (TypeError, ValueError):  # a policy that needs options to build: the board reports its failure later
        return True


def select_entries(labels: list[str] | None, options: dict[str, dict] | None = None) -> list[Entry]:
    """The entries named by ``labels`` (all when ``None``), in board order, with ``options`` (see
    :func:`board_entries`); unknown labels raise ``ValueError``."""
    entries = board_entries(options)
    known = {e.label: e for e in entries}
    unknown = sorted(set(options or {}) - set(known))
    if unknown:
        raise ValueError(f"--entry-option names unknown board entr{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(map(repr, unknown))}; choose from: {', '.join(known)}")
    if labels is None:
        return entries
    unknown = [x for x in labels if x not in known]
    if unknown:
        raise ValueError(f"unknown board entr{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                         f"choose from: {', '.join(known)}")
    return [e for e in entries if e.label in labels]


@dataclass(frozen=True)
class Claim:
    """A method's headline claim, decided by paired comparisons (same prompt, seed, class and start) of entry ``a``
    against entry ``b``.

    ``kind="better"``: ``a`` beats ``b`` on the world metrics (:func:`deepforcing.eval.experiment_report.
    claim_verdicts`: supported when better on one primary metric and worse on none). ``kind="cost"``: ``a`` keeps
    ``b``'s quality (no primary metric significantly worse; with ``margin``, the 95 % interval of the relative
    change of persistence must also stay above ``-margin``) while costing less: faster (median ms per chunk; the
    claimed ``speedup`` is shown next to the measured one) and, with ``less_memory``, fewer KV bytes."""

    method: str
    text: str
    a: str
    b: str
    kind: str = "better"
    margin: float | None = None
    faster: bool = False
    speedup: float | None = None
    less_memory: bool = False


CLAIMS: tuple[Claim, ...] = (
    Claim("MemRoPE", "beats Deep Forcing on long-range consistency", "memrope", "deep-forcing"),
    Claim("MemRoPE", "beats ∞-RoPE on long-range consistency", "memrope", "infinity-rope"),
    Claim("Dummy Forcing", "< 0.5 % quality drop at +39 % speed over Self Forcing", "dummy-forcing", "self-forcing",
          kind="cost", margin=0.005, faster=True, speedup=1.39),
    Claim("Forcing-KV", "same quality as Self Forcing, faster, less memory", "forcing-kv", "self-forcing",
          kind="cost", faster=True, less_memory=True),
    Claim("Deep Forcing", "beats Self Forcing (Tab. 1)", "deep-forcing", "self-forcing"),
    Claim("Deep Forcing", "beats a shallow attention sink (App. A)", "deep-forcing", "attention-sink"),
    Claim("Rolling Sink", "extends a short-trained model past its horizon: beats Self Forcing", "rolling-sink-replay",
          "self-forcing"),
    Claim("∞-RoPE", "surpasses previous autoregressive models on long videos: beats Self Forcing", "infinity-rope",
          "self-forcing"),
    Claim("TriAttention", "keeps its base's quality (LongLive's cache) with a smaller KV cache", "triattention",
          "longlive-sink", kind="cost", less_memory=True),
    Claim("LoL (paper only)", "RoPE jitter removes sink-collapse: beats its base (LongLive's cache)", "lol",
          "longlive-sink"),
)
