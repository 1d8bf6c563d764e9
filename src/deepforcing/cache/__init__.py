"""Model-agnostic KV-cache engine: storage, temporal RoPE, participation scoring and policies (imports torch only)."""

from .policies import (
    POLICIES,
    AttentionSink,
    CachePolicy,
    ChunkContext,
    Decision,
    DeepForcing,
    DeepSink,
    FullCache,
    RandomTopC,
    RollingSink,
    SelfForcing,
    make_policy,
    policy_names,
)
from .rope import TemporalRope, inverse_frequencies, rotate_pairs
from .scoring import QueryWindow, dense_participation_scores, participation_scores
from .session import CacheEvent, CacheGeometry, KVCache, LayerCache
from .store import LayerKVStore

__all__ = [
    "POLICIES",
    "AttentionSink",
    "CacheEvent",
    "CacheGeometry",
    "CachePolicy",
    "ChunkContext",
    "Decision",
    "DeepForcing",
    "DeepSink",
    "FullCache",
    "KVCache",
    "LayerCache",
    "LayerKVStore",
    "QueryWindow",
    "RandomTopC",
    "RollingSink",
    "SelfForcing",
    "TemporalRope",
    "dense_participation_scores",
    "inverse_frequencies",
    "make_policy",
    "participation_scores",
    "policy_names",
    "rotate_pairs",
]
