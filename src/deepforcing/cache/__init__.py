"""Model-agnostic KV-cache engine: storage, temporal RoPE, participation scoring, the policy contract, the named
policies and their registry (imports torch only)."""

from .base import REGIONS, CachePolicy, ChunkContext, Decision, HeadGroup, StreamEvent, Write
from .options import PolicyOption, option
from .policies import (
    AttentionSink,
    DeepForcing,
    DeepSink,
    FifoSelector,
    FullCache,
    RandomTopC,
    RollingForcingSink,
    SelfForcing,
    TopCSelector,
)
from .registry import POLICIES, make_policy, policy_names, policy_option_table, register_policy
from .dummy_forcing import DummyForcing
from .forcing_kv import ForcingKV
from .infinity_rope import InfinityRope
from .memrope import MemRope
from .rolling_sink import RollingSinkReplay
from .triattention import TriAttention
from .rope import TemporalRope, inverse_frequencies, rotate_pairs
from .scoring import QueryWindow, dense_participation_scores, participation_scores
from .session import CacheEvent, CacheGeometry, HeadGroupCache, KVCache, LayerCache
from .store import LayerKVStore

__all__ = [
    "POLICIES",
    "REGIONS",
    "AttentionSink",
    "CacheEvent",
    "CacheGeometry",
    "CachePolicy",
    "ChunkContext",
    "Decision",
    "DeepForcing",
    "DeepSink",
    "DummyForcing",
    "FifoSelector",
    "ForcingKV",
    "FullCache",
    "HeadGroup",
    "HeadGroupCache",
    "InfinityRope",
    "KVCache",
    "LayerCache",
    "LayerKVStore",
    "MemRope",
    "PolicyOption",
    "QueryWindow",
    "RandomTopC",
    "RollingForcingSink",
    "RollingSinkReplay",
    "SelfForcing",
    "StreamEvent",
    "TemporalRope",
    "TopCSelector",
    "TriAttention",
    "Write",
    "dense_participation_scores",
    "inverse_frequencies",
    "make_policy",
    "option",
    "participation_scores",
    "policy_names",
    "policy_option_table",
    "register_policy",
    "rotate_pairs",
]
