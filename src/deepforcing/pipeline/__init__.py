"""Pipeline layer: rollout loop, streaming decode and writers."""
