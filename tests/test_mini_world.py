"""The mini world: prompt language (parse / canonical text / sampling / tokens) and the deterministic renderer."""

import itertools
import math

import numpy as np
import pytest
import torch

from deepforcing.mini import language as lang
from deepforcing.mini.language import (
    VOCAB,
    BackgroundSpec,
    ObjectSpec,
    SceneSpec,
    parse_prompt,
    sample_scene,
    tokenize,
)
from deepforcing.mini.world import (
    PAN_SPEED_PX,
    object_radius,
    object_speed,
    render_batch,
    render_clip,
    to_uint8,
)

# ----------------------------------------------------------------------------------------------- language


def test_parse_brief_examples():
    spec = parse_prompt("a red circle and a blue square bounce on a striped green background")
    assert spec == SceneSpec(
        objects=(ObjectSpec("red", "circle"), ObjectSpec("blue", "square")),
        background=BackgroundSpec("striped", "green"),
        pan=None,
    )
    spec = parse_prompt("a small yellow triangle moves fast on a dark background, camera pans left")
    assert spec == SceneSpec(
        objects=(ObjectSpec("yellow", "triangle", size="small", speed="fast"),), background=BackgroundSpec(), pan="left"
    )


def test_parse_variants_and_defaults():
    spec = parse_prompt(
        "A big slow white square, a fast cyan circle and a magenta triangle on a checkered orange background."
    )
    assert [(o.colour, o.shape, o.size, o.speed) for o in spec.objects] == [
        ("white", "square", "big", "slow"),
        ("cyan", "circle", "medium", "fast"),
        ("magenta", "triangle", "medium", "normal"),
    ]
    assert spec.background == BackgroundSpec("checkered", "orange")
    assert parse_prompt("an orange circle") == SceneSpec(objects=(ObjectSpec("orange", "circle"),))
    # the adverb applies to objects without their own speed; a bare colour means a plain background
    spec = parse_prompt(
        "a slow red circle and the blue square move quickly on a yellow background and the camera pans up"
    )
    assert [o.speed for o in spec.objects] == ["slow", "fast"]
    assert spec.background == BackgroundSpec("plain", "yellow") and spec.pan == "up"
    assert parse_prompt("a red circle and the camera pans down").pan == "down"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a purple circle", "unknown word 'purple'"),
        ("a red hexagon", "unknown word 'hexagon'"),
        ("a red", "expected a shape"),
        ("a circle", "expected an object colour"),
        ("a red circle on a striped background", "expected a background colour"),
        ("a red circle on a dark", "'background'"),
        ("a red circle camera pans", "pan direction"),
        ("a red circle and a red square", "different colours"),
        ("a red circle on a plain red background", "vanish"),
        ("a red circle and a blue square and a green circle and a white square", "1 to 3 objects"),
        ("a small big red circle", "two sizes"),
        ("a red circle circle", "should end here"),
        ("", "empty prompt"),
    ],
)
def test_parse_errors_are_clear(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_prompt(text)


def test_unknown_word_error_lists_vocabulary():
    with pytest.raises(ValueError) as info:
        parse_prompt("a purple circle")
    message = str(info.value)
    for word in ("red", "orange", "triangle", "checkered", "left"):
        assert word in message


def test_sampled_scenes_round_trip_and_cover_the_language():
    rng = np.random.default_rng(0)
    specs = [sample_scene(rng) for _ in range(400)]
    for spec in specs:
        assert parse_prompt(spec.to_prompt()) == spec
    seen = lambda attr: {getattr(o, attr) for s in specs for o in s.objects}  # noqa: E731
    assert seen("colour") == set(lang.COLOURS) and seen("shape") == set(lang.SHAPES)
    assert seen("size") == set(lang.SIZES) and seen("speed") == set(lang.SPEEDS)
    assert {s.background.kind for s in specs} == set(lang.BACKGROUND_KINDS)
    assert {len(s.objects) for s in specs} == {1, 2, 3}
    assert {s.pan for s in specs} == {None, *lang.DIRECTIONS}
    assert sample_scene(7) == sample_scene(7) and sample_scene(7) != sample_scene(8)


def test_tokenize_is_canonical_padded_and_strict():
    a = tokenize("a small yellow triangle moves fast on a dark background, camera pans left")
    b = tokenize("one small fast yellow triangle bounces on the dark background and the camera panning left")
    assert a == b and len(a) == 16
    words = ["small", "fast", "yellow", "triangle", "dark", "left"]
    assert a == [VOCAB.index(w) + 1 for w in words] + [0] * 10
    longest = "a big slow white square and a small fast cyan circle and a big slow magenta triangle "
    longest += "on a checkered orange background, camera pans right"
    tokens = tokenize(longest)
    assert 0 not in tokens[:15] and tokens[15] == 0 and max(tokens) <= len(VOCAB)
    assert len(tokenize("a red circle", max_len=32)) == 32
    with pytest.raises(ValueError, match="max_len"):
        tokenize(longest, max_len=8)
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        tokenize("a purple circle")
    assert len(set(VOCAB)) == len(VOCAB)


def test_palette_is_separable_for_measurement():
    """Object colours are >= 0.3 apart from each other and from every background they may appear on."""
    colours = {name: np.array(rgb) for name, rgb in lang.COLOURS.items()}
    for a, b in itertools.combinations(colours, 2):
        assert np.linalg.norm(colours[a] - colours[b]) >= 0.3, (a, b)
    backgrounds = [BackgroundSpec()] + [BackgroundSpec(k, c) for k in ("plain", "striped") for c in colours]
    for name, rgb in colours.items():
        for background in backgrounds:
            if background.colour == name:
                continue
            t0, t1 = (np.array(t) for t in background.tones)
            along = np.clip(np.dot(rgb - t1, t0 - t1) / max(np.dot(t0 - t1, t0 - t1), 1e-12), 0, 1)
            assert np.linalg.norm(rgb - (t1 + along * (t0 - t1))) >= 0.3, (name, background)


# ------------------------------------------------------------------------------------------------- world

PROMPT = "a red circle and a small fast blue square and a big yellow triangle bounce on a checkered green background"


def test_clip_format_and_determinism():
    clip = render_clip(PROMPT + ", camera pans right", seed=3, num_frames=12)
    assert clip.frames.shape == (12, 3, 32, 32) and clip.frames.dtype == torch.float32
    assert clip.frames.min() >= -1 and clip.frames.max() <= 1
    frames_u8 = clip.to_uint8()
    assert frames_u8.shape == (12, 32, 32, 3) and frames_u8.dtype == np.uint8
    assert np.array_equal(frames_u8, to_uint8(clip.frames))
    again = render_clip(parse_prompt(PROMPT + ", camera pans right"), seed=3, num_frames=12)
    assert torch.equal(clip.frames, again.frames)
    assert np.array_equal(clip.states.positions, again.states.positions)
    other = render_clip(PROMPT + ", camera pans right", seed=4, num_frames=12)
    assert not torch.equal(clip.frames, other.frames)
    assert np.abs(clip.states.positions[0] - other.states.positions[0]).max() > 1.0


def test_states_describe_the_scene():
    clip = render_clip(PROMPT, seed=1, num_frames=5)
    states = clip.states
    assert states.positions.shape == (5, 3, 2) and states.velocities.shape == (5, 3, 2)
    assert states.shapes == ("circle", "square", "triangle")
    np.testing.assert_allclose(states.colours[1], lang.COLOURS["blue"], atol=1e-6)
    np.testing.assert_allclose(states.radii, [object_radius(s, 32) for s in ("medium", "small", "big")], rtol=1e-6)
    np.testing.assert_allclose(states.background_tones[0], [0.6 * c for c in lang.COLOURS["green"]], atol=1e-6)
    assert np.all(states.camera_offsets == 0)
    frame = states.frame(2)
    assert frame["objects"][2]["shape"] == "triangle" and len(frame["objects"][0]["position"]) == 2
    # the pixel under an object's centre shows its colour
    for k, (x, y) in enumerate(states.positions[0]):
        pixel = (clip.frames[0, :, int(y), int(x)].numpy() + 1) / 2
        np.testing.assert_allclose(pixel, states.colours[k], atol=0.02)


def test_physics_constant_speed_bounces_and_no_overlap():
    spec = parse_prompt("a big fast red circle and a big fast blue square and a big slow white triangle")
    clip = render_clip(spec, seed=11, num_frames=300)
    s = clip.states
    speeds = np.linalg.norm(s.velocities, axis=-1)
    np.testing.assert_allclose(speeds, np.broadcast_to([2.0, 2.0, 0.5], speeds.shape), rtol=1e-5)
    # always fully inside the view
    assert np.all(s.positions >= s.extents[None, :, None] - 1e-4)
    assert np.all(s.positions <= 32 - s.extents[None, :, None] + 1e-4)
    # per-frame displacement never exceeds the speed and equals it between bounces
    steps = np.linalg.norm(np.diff(s.positions, axis=0), axis=-1)
    assert np.all(steps <= np.array([2.0, 2.0, 0.5]) + 1e-4)
    assert np.mean(np.isclose(steps, [2.0, 2.0, 0.5], atol=1e-4)) > 0.6
    # bounces happened (velocity signs flipped) for the fast objects
    assert (np.diff(np.sign(s.velocities[:, 0, 0])) != 0).sum() >= 4
    # objects bounce off each other: centres never get much closer than the sum of radii
    for i, j in itertools.combinations(range(3), 2):
        gap = np.linalg.norm(s.positions[:, i] - s.positions[:, j], axis=-1) - s.radii[i] - s.radii[j]
        assert gap.min() > -1.0, (i, j, gap.min())


def test_speed_radius_and_pan_scale_with_size():
    assert object_speed("slow", 32) == 0.5 and object_speed("normal", 32) == 1.0 and object_speed("fast", 32) == 2.0
    small = render_clip("a fast big red circle, camera pans down", seed=2, num_frames=4, size=32)
    large = render_clip("a fast big red circle, camera pans down", seed=2, num_frames=4, size=64)
    assert large.frames.shape == (4, 3, 64, 64)
    np.testing.assert_allclose(np.linalg.norm(large.states.velocities[0, 0]), 4.0, rtol=1e-5)
    np.testing.assert_allclose(large.states.radii, 2 * small.states.radii, rtol=1e-6)
    np.testing.assert_allclose(large.states.camera_offsets[:, 1], 2 * PAN_SPEED_PX * np.arange(4), rtol=1e-6)


@pytest.mark.parametrize(
    ("direction", "shift"), [("left", (0, 1)), ("right", (0, -1)), ("up", (1, 0)), ("down", (-1, 0))]
)
def test_camera_pan_scrolls_the_background_consistently(direction, shift):
    """0.5 px/frame: two frames later the background has moved by one pixel against the pan direction."""
    prompt = f"a small red circle on a striped blue background, camera pans {direction}"
    clip = render_clip(prompt, seed=0, num_frames=9)
    offsets = clip.states.camera_offsets
    expected = {"left": (-0.5, 0), "right": (0.5, 0), "up": (0, -0.5), "down": (0, 0.5)}[direction]
    np.testing.assert_allclose(offsets[2], 2 * np.array(expected), atol=1e-6)
    np.testing.assert_allclose(clip.states.world_positions, clip.states.positions + offsets[:, None], atol=1e-6)
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    for t in (0, 2, 6):
        later = clip.frames[t + 2].numpy()
        moved = np.roll(clip.frames[t].numpy(), shift=shift, axis=(1, 2))
        keep = np.ones((32, 32), bool)
        for frame in (t, t + 2):  # away from the object and the wrapped border
            x, y = clip.states.positions[frame, 0]
            keep &= np.hypot(xx - x, yy - y) > clip.states.extents[0] + 2
        keep[[0, -1], :] = keep[:, [0, -1]] = False
        assert keep.sum() > 600
        np.testing.assert_allclose(later[:, keep], moved[:, keep], atol=1e-5)
        assert np.abs(later[:, keep] - clip.frames[t].numpy()[:, keep]).max() > 0.05  # it did move


def test_render_batch_matches_render_clip():
    rng = np.random.default_rng(5)
    specs = [sample_scene(rng) for _ in range(6)]
    seeds = [10, 11, 12, 13, 14, 15]
    batch = render_batch(specs, seeds, num_frames=8)
    assert batch.shape == (6, 8, 3, 32, 32) and batch.dtype == torch.float32
    for b, (spec, seed) in enumerate(zip(specs, seeds)):
        assert torch.equal(batch[b], render_clip(spec, seed, num_frames=8).frames)


def test_render_bad_input():
    with pytest.raises(ValueError, match="num_frames"):
        render_clip("a red circle", seed=0, num_frames=0)
    with pytest.raises(ValueError, match="one seed per scene"):
        render_batch(["a red circle", "a blue square"], [1], num_frames=2)
    with pytest.raises(ValueError, match="unknown word"):
        render_clip("a mauve circle", seed=0, num_frames=2)
    with pytest.raises(ValueError, match="SceneSpec or a prompt"):
        render_clip(42, seed=0, num_frames=2)


def test_shapes_have_equal_area():
    """Each shape's rendered coverage integrates to about pi r^2 (the measurement's expected area)."""
    for shape in ("circle", "square", "triangle"):
        clip = render_clip(f"a big white {shape}", seed=0, num_frames=1)
        coverage = ((clip.frames[0, 2] + 1) / 2 - 0.08) / (0.95 - 0.08)  # blue channel: dark 0.08 -> white 0.95
        assert math.isclose(coverage.sum().item(), math.pi * object_radius("big", 32) ** 2, rel_tol=0.03), shape
