"""The arms and claims of the long-horizon study (:mod:`deepforcing.eval.experiment`), in a module of their own so
that the study and its report (:mod:`deepforcing.eval.experiment_report`) both read them without importing each
other (arXiv 2512.05081: Tab. 1, Tab. 4, Fig. 5, Tab. 5, App. A and D)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Arm", "ARMS", "SINK_SWEEP", "CLAIMS", "WORLD_KEYS", "DRIFT_KEYS", "DEFAULT_HORIZONS", "horizon_key",
           "parse_horizons", "select_arms"]


@dataclass(frozen=True)
class Arm:
    """One cache setting of the study. ``long``: run to the longest horizon by default (the headline arms);
    otherwise to the shortest (ablations whose paper protocol is 30-50 s, about 6-10x the window)."""

    label: str
    policy: str
    sizes: dict = field(default_factory=dict, hash=False)
    groups: tuple[str, ...] = ("policies",)
    long: bool = True


ARMS: tuple[Arm, ...] = (
    Arm("self-forcing", "self-forcing", {}, ("policies", "ablation", "sink sweep")),
    Arm("attention-sink S=3", "attention-sink", {"sink": 3}),
    # the label keeps the old policy name: results/long_horizon's committed summary and metrics are keyed by it
    Arm("rolling-sink S=3", "rolling-forcing-sink", {"sink": 3}),
    Arm("deep-sink S=14", "deep-sink", {"sink": 14}, ("policies", "sink sweep")),
    Arm("deep-forcing", "deep-forcing", {}, ("policies", "ablation", "queries")),
    Arm("random-topc", "random-topc", {}),
    Arm("full", "full", {}, long=False),  # unbounded: attention over the whole past, quadratic in length
    Arm("deep-sink S=10", "deep-sink", {"sink": 10}, ("ablation", "sink sweep")),
    Arm("PC only (S=0)", "deep-forcing", {"sink": 0}, ("ablation",)),
    Arm("deep-sink S=4", "deep-sink", {"sink": 4}, ("sink sweep",), long=False),
    Arm("deep-sink S=7", "deep-sink", {"sink": 7}, ("sink sweep",), long=False),
    Arm("deep-sink S=18", "deep-sink", {"sink": 18}, ("sink sweep",), long=False),
    Arm("deep-forcing queries=past", "deep-forcing", {"queries": "past"}, ("queries",), long=False),
    Arm("deep-forcing queries=denoising", "deep-forcing", {"queries": "denoising"}, ("queries",), long=False),
    Arm("deep-forcing topc-rope=unify", "deep-forcing", {"topc_rope": "unify"}, ("options",), long=False),
    Arm("deep-sink S=14 adjacent", "deep-sink", {"sink": 14, "placement": "adjacent"}, ("options",), long=False),
)
# sink size -> arm label of the Fig. 5 sweep (a deep sink of 0 frames is Self Forcing's cache: the same run)
SINK_SWEEP: dict[int, str] = {0: "self-forcing", 4: "deep-sink S=4", 7: "deep-sink S=7", 10: "deep-sink S=10",
                              14: "deep-sink S=14", 18: "deep-sink S=18"}

# (claim, arm a, arm b, expected sign): a paired comparison of a against b; +1 the paper says a is better, -1 worse,
# 0 no claim (a named option against the release's choice)
CLAIMS: tuple[tuple[str, str, str, int], ...] = (
    ("Deep Sink beats Self Forcing (§4.2)", "deep-sink S=14", "self-forcing", +1),
    ("+DS: Deep Sink (S=10) beats Self Forcing (Tab. 4)", "deep-sink S=10", "self-forcing", +1),
    ("+PC: Participative Compression alone beats Self Forcing (Tab. 4)", "PC only (S=0)", "self-forcing", +1),
    ("+DS+PC: Deep Forcing beats Deep Sink at the same sink (Tab. 4)", "deep-forcing", "deep-sink S=10", +1),
    ("Deep Forcing beats Self Forcing (Tab. 1)", "deep-forcing", "self-forcing", +1),
    ("Participation beats random Top-C (App. D)", "deep-forcing", "random-topc", +1),
    ("Deep Sink beats a shallow attention sink (App. A)", "deep-sink S=14", "attention-sink S=3", +1),
    ("S=18 over-preserves: worse than S=14 (Fig. 5)", "deep-sink S=18", "deep-sink S=14", -1),
    ("Both query sets beat past only (Tab. 5)", "deep-forcing", "deep-forcing queries=past", +1),
    ("Both query sets beat denoising only (Tab. 5)", "deep-forcing", "deep-forcing queries=denoising", +1),
    ("Top-C RoPE unify vs keep (Eq. 10-11, off in the release)", "deep-forcing topc-rope=unify", "deep-forcing", 0),
    ("Adjacent sink vs the release's placement", "deep-sink S=14 adjacent", "deep-sink S=14", 0),
)

WORLD_KEYS = ("object_persistence", "count_accuracy", "object_colour_error", "speed_ratio")
DRIFT_KEYS = ("color_drift_last", "sharpness_change_last", "flicker", "motion_ratio", "near_copy_fraction")
DEFAULT_HORIZONS = (12.0, 48.0)


def horizon_key(horizon: float) -> str:
    """How a horizon names its results: ``12.0`` -> ``"12x"``."""
    return f"{horizon:g}x"


def select_arms(labels: list[str] | None, every_arm_long: bool = False) -> list[Arm]:
    """The arms named by ``labels`` (all when ``None``), in :data:`ARMS` order; unknown labels raise ``ValueError``."""
    known = {a.label: a for a in ARMS}
    if labels is not None:
        unknown = [x for x in labels if x not in known]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(known)}")
    arms = [a for a in ARMS if labels is None or a.label in labels]
    return [Arm(a.label, a.policy, a.sizes, a.groups, True) for a in arms] if every_arm_long else arms


def parse_horizons(text: str) -> tuple[float, ...]:
    """``"12,48"`` -> ``(12.0, 48.0)``: video lengths in windows, each above 1 and at most 10000 (else ``ValueError``)."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and 1 < v <= 10_000 for v in values):
        raise ValueError(f"--horizons must be comma-separated multiples of the window, each above 1 and at most "
                         f"10000 (e.g. 12,48), got {text!r}")
    return values
