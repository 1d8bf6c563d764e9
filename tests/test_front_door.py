"""One way to name a model (issue 26): every command takes the same model options, and bench, diagnose and serve run
on a tiny real-layout Wan checkpoint exactly as on the mini model."""

import argparse
import json

import pytest
import torch

from deepforcing.cli import build_parser, main
from deepforcing.model_spec import ModelSpec, check_model
from deepforcing.models.loading import load_causal_wan
from tiny_layouts import write_tiny_umt5, write_tiny_wan_vae
from tiny_transformer_layouts import TINY_WAN_CONFIG, original_wan_state_dict, write_original_folder

CFG = {**TINY_WAN_CONFIG, "text_dim": 16}  # = the tiny umT5's d_model; in_dim 4 = the tiny VAE's z_dim
PROMPT = "a red cat runs on the green grass"
MODEL_DESTS = {"model", "checkpoint", "preset", "lora", "resolution", "dtype", "device", "attention_backend"}


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    """A tiny random Wan2.1 model in the diffusers pipeline layout (DiT + VAE + umT5)."""
    original = tmp_path_factory.mktemp("wan_original")
    write_original_folder(original, original_wan_state_dict(CFG, seed=1), CFG)
    folder = tmp_path_factory.mktemp("wan_diffusers")
    load_causal_wan(original).save_pretrained(str(folder / "transformer"))
    write_tiny_wan_vae(folder, layout="diffusers")
    write_tiny_umt5(folder, layout="diffusers")
    return folder


def real(folder) -> list[str]:
    return ["--model", str(folder), "--resolution", "32x48"]


@pytest.mark.parametrize("command", ["generate", "serve", "bench", "diagnose", "experiment", "eval"])
def test_every_command_takes_the_same_model_options(command):
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    dests = {a.dest for a in sub._actions}
    assert MODEL_DESTS | ({"threads"} if command != "eval" else set()) <= dests  # eval runs no model
    videos = ["v.mp4"] if command == "eval" else []
    args = parser.parse_args([command, *videos, "--model", "/m", "--preset", "causvid", "--attention-backend", "flash"])
    assert ModelSpec.from_args(args) == ModelSpec("/m", preset="causvid", attention_backend="flash")


def test_bench_measures_a_real_checkpoint(wan_folder, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", *real(wan_folder), "--prompt", PROMPT, "--policies", "deep-forcing,self-forcing",
                 "--horizons", "1,2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "bench.json").read_text())
    rows = {(r["policy"], r["horizon_multiple"]): r for r in report["rows"]}
    assert set(rows) == {("deep-forcing", 1.0), ("self-forcing", 1.0), ("deep-forcing", 2.0), ("self-forcing", 2.0)}
    window = 21  # the self-forcing preset's attention window: the training horizon bench counts in
    assert rows["self-forcing", 2.0]["latent_frames"] == 2 * window and rows["self-forcing", 2.0]["chunks"] == 14
    tokens = 2 * 3  # 32x48 px / VAE stride 8 / patch 2
    assert rows["self-forcing", 2.0]["cache_tokens_max"] == window * tokens  # a rolling 21-frame window
    assert rows["deep-forcing", 2.0]["cache_tokens_max"] < rows["self-forcing", 2.0]["cache_tokens_max"] + 4 * tokens
    assert "self-forcing" in capsys.readouterr().out


def test_diagnose_reads_the_attention_of_a_real_checkpoint(wan_folder, tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["diagnose", PROMPT, *real(wan_folder), "--frames", "27", "--out", str(out)]) == 0
    report = json.loads((out / "attention.json").read_text())
    assert report["policy"]["policy"] == "deep-forcing" and report["policy"]["window"] == 21  # the preset's default
    regions = report["regions_last_chunk"]
    assert sorted(map(int, regions)) == list(range(CFG["num_layers"]))
    for mass in regions.values():
        assert sum(mass.values()) == pytest.approx(1.0, abs=1e-4)
    assert (out / "attention_mass.png").is_file()


def test_serve_streams_a_real_checkpoint(wan_folder, monkeypatch, capsys):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import uvicorn
    from fastapi.testclient import TestClient

    from deepforcing.serve.app import frames_from_message

    seen = {}

    def run(app, **kw):  # instead of serving: one client session against the app serve built
        with TestClient(app) as client, client.websocket_connect("/ws") as ws:
            ws.send_text(json.dumps({"type": "start", "prompt": PROMPT, "policy": "deep-forcing", "seed": 1}))
            for _ in range(50):
                message = json.loads(ws.receive_text())
                assert message["type"] != "error", message
                if message["type"] == "chunk":
                    seen["chunk"] = message
                    break
            ws.send_text(json.dumps({"type": "stop"}))

    monkeypatch.setattr(uvicorn, "run", run)
    assert main(["serve", *real(wan_folder), "--port", "0"]) == 2  # checked before the model loads
    assert main(["serve", *real(wan_folder), "--port", "47391"]) == 0
    assert "self-forcing (wan_diffusers" in capsys.readouterr().out
    chunk = seen["chunk"]
    frames = frames_from_message(chunk)  # the first chunk: 3 latent frames through the causal VAE
    assert chunk["prompt"] == PROMPT and len(frames) == 1 + 4 * 2 and frames[0].shape == (32, 48, 3)


def test_the_mini_model_file_is_opened_once_on_the_serve_path(tiny_mini, monkeypatch):
    import safetensors
    import uvicorn

    import deepforcing.models.checkpoint_io as checkpoint_io

    opened = []
    real_open, real_load = safetensors.safe_open, checkpoint_io._load_file
    monkeypatch.setattr(safetensors, "safe_open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    monkeypatch.setattr(checkpoint_io, "_load_file", lambda path, *a, **k: opened.append(path) or real_load(path, *a, **k))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    assert main(["serve", "--model", str(tiny_mini), "--port", "47392"]) == 0
    assert opened == [str(tiny_mini)]


@pytest.mark.parametrize("argv, message", [
    (["bench", "--checkpoint", "x.pt"], "--checkpoint only applies to real models"),
    (["diagnose", "--dtype", "bfloat16", "--preset", "causvid"], "--preset, --dtype only apply to real models"),
    (["serve", "--lora", "l.safetensors", "--port", "47393"], "--lora only applies to real models"),
    (["bench", "--attention-backend", "warp-drive"], "unknown attention backend 'warp-drive'"),
    (["diagnose", "--model", "/no/such/folder"], "model folder not found: /no/such/folder"),
    (["bench", "--device", "tpu"], "unknown --device 'tpu'"),
    (["bench", "--device", "mps"], "--device 'mps' is not supported"),
])
def test_bad_model_options_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("board, who", [([], "experiment scores"), (["--board"], "the board scores")])
def test_experiment_refuses_a_real_model_before_it_loads(wan_folder, capsys, monkeypatch, board, who, tmp_path):
    import deepforcing.models.bundle as bundle

    monkeypatch.setattr(bundle, "wan_bundle", lambda *a, **k: pytest.fail("the weights were loaded"))
    assert main(["experiment", *board, "--model", str(wan_folder), "--pairs", "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert who in err and "runs the mini model only" in err and err.count("\n") == 1


def test_the_policy_is_built_before_the_weights_load(wan_folder, tmp_path):
    lora = tmp_path / "lora.pt"  # LongLive needs its LoRA named (not read before the weights load)
    lora.write_bytes(b"")
    model = check_model(ModelSpec(str(wan_folder), preset="longlive", lora=str(lora)))
    policy = model.policy()  # LongLive's own cache: a 3-frame sink in a 12-frame window
    assert (policy.name, policy.window, policy.sink_frames) == ("attention-sink", 12, 3)
    assert model.policy("deep-forcing", sink=4, budget=10).window == 12  # any policy gets the preset's window
    with pytest.raises(ValueError):
        model.policy("deep-forcing", sink=40)  # a sink larger than the window: refused, nothing loaded


@pytest.mark.parametrize("resolution", [None, "32x48", "64x32"])
def test_tokens_per_frame_are_known_before_the_weights_load(wan_folder, resolution):
    """What a policy's geometry check reads (Forcing-KV's patches must divide a frame) equals the loaded model's."""
    model = check_model(ModelSpec(str(wan_folder), resolution=resolution))
    tokens = model.tokens_per_frame()
    bundle = model.open().bundle
    assert tokens == bundle.transformer.tokens_per_frame(*bundle.latent_shape[1:])


def test_attention_backend_is_diffusers_own_switch(tiny_mini, monkeypatch):
    """--attention-backend calls diffusers' set_attention_backend, and the processor's backend reaches every
    dispatch_attention_fn call (self- and cross-attention)."""
    from diffusers.models import attention_dispatch

    registry = attention_dispatch._AttentionBackendRegistry  # the switch also sets diffusers' process-wide default
    monkeypatch.setattr(registry, "_active_backend", registry._active_backend)
    seen = []
    real_dispatch = attention_dispatch.dispatch_attention_fn
    monkeypatch.setattr(attention_dispatch, "dispatch_attention_fn",
                        lambda *a, backend=None, **k: seen.append(backend) or real_dispatch(*a, backend=backend, **k))
    gen = check_model(ModelSpec(str(tiny_mini), attention_backend="_native_math")).open()
    processors = {type(m.processor).__name__: m.processor._attention_backend for m in gen.bundle.transformer.modules()
                  if hasattr(m, "processor")}
    assert set(processors.values()) == {attention_dispatch.AttentionBackendName._NATIVE_MATH}
    list(gen.stream("a red circle", latent_frames=3, policy="self-forcing"))
    layers = gen.bundle.transformer.num_layers
    assert len(seen) >= 2 * layers and set(seen) == {attention_dispatch.AttentionBackendName._NATIVE_MATH}
    plain = check_model(ModelSpec(str(tiny_mini))).open()
    seen.clear()
    list(plain.stream("a red circle", latent_frames=3, policy="self-forcing"))
    assert set(seen) == {None}  # no switch: diffusers' active backend
    assert torch.get_num_threads() >= 1


def test_the_bundle_runs_the_preset_sampler(wan_folder):
    from deepforcing.models.presets import get_preset

    gen = check_model(ModelSpec(str(wan_folder), preset="causvid", resolution="32x48")).open()
    assert gen.bundle.sampling is get_preset("causvid").sampling  # not a copy made field by field
    no_restart = check_model(ModelSpec(str(wan_folder), preset="causvid", resolution="32x48", restart=False)).open()
    assert no_restart.bundle.sampling.restart_overlap == 0 and get_preset("causvid").sampling.restart_overlap == 3


@pytest.mark.parametrize("model, window", [("mini", 21), ("wan", 1 + 4 * 20), (None, 81)])
def test_eval_windows_are_the_training_horizon_of_model(model, window, tiny_mini, wan_folder, tmp_path):
    """eval --model: the first window is that model's attention window in pixel frames (the mini model decodes one
    frame per latent frame, the Wan VAE 1 + 4 (F - 1)); no --model: Self Forcing's 81 frames."""
    import av
    import numpy as np

    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.height = stream.width = 32
        stream.pix_fmt = "yuv420p"
        for t in range(90):
            frame = np.full((32, 32, 3), (t * 2) % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    named = {"mini": ["--model", str(tiny_mini)], "wan": ["--model", str(wan_folder)], None: []}[model]
    assert main(["eval", str(video), *named, "--out", str(tmp_path / "report")]) == 0
    (result,) = json.loads((tmp_path / "report" / "metrics.json").read_text())["videos"]
    assert result["window_frames"] == window


def test_each_layer_follows_its_own_processor(tiny_mini, monkeypatch):
    """The backend is read from the processor of the layer that attends (a hand-set processor is followed too)."""
    from diffusers.models import attention_dispatch

    seen = []
    real_dispatch = attention_dispatch.dispatch_attention_fn
    monkeypatch.setattr(attention_dispatch, "dispatch_attention_fn",
                        lambda *a, backend=None, **k: seen.append(backend) or real_dispatch(*a, backend=backend, **k))
    gen = check_model(ModelSpec(str(tiny_mini))).open()
    last = gen.bundle.transformer.blocks[-1]
    monkeypatch.setattr(last.attn1.processor, "_attention_backend", attention_dispatch.AttentionBackendName._NATIVE_MATH)
    list(gen.stream("a red circle", latent_frames=3, policy="self-forcing"))
    math_calls = seen.count(attention_dispatch.AttentionBackendName._NATIVE_MATH)
    assert math_calls > 0 and seen.count(None) == len(seen) - math_calls
    assert len(seen) == math_calls * 2 * gen.bundle.transformer.num_layers  # per model call: L self- and L cross-
