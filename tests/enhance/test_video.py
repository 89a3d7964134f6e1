"""Videos through lowlight_fast.video and ``lowlight-fast enhance clip.mp4``: frame count, size, rate,
timestamps and audio kept; the frames are the enhancer's; a corrupt video is named and the rest written."""
from __future__ import annotations

import os
import sys
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

av = pytest.importorskip("av")

from lowlight_fast import io  # noqa: E402
from lowlight_fast.enhance import Enhancer, OutputClaims  # noqa: E402
from lowlight_fast.video import SWITCH_INTERVAL, TemporalSmoothing, VideoOptions, enhance_video, enhance_videos  # noqa: E402
from tests.enhance.conftest import random_model  # noqa: E402

RATE = Fraction(30000, 1001)


def make_clip(path, codec="libx264", pix_fmt="yuv420p", audio="aac", frames=10, w=48, h=32, seed=0):
    """A small dark clip of random frames (and an audio stream of noise)."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        v = out.add_stream(codec, rate=RATE)
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        a = out.add_stream(audio, rate=16000) if audio else None
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 90, (h, w, 3)).astype(np.uint8), format="rgb24")
            f.pts = i
            out.mux(v.encode(f))
        out.mux(v.encode())
        if a is not None:
            for i in range(12):
                af = av.AudioFrame.from_ndarray((rng.standard_normal((1, 1024)) * 0.1).astype(np.float32),
                                                format="fltp", layout="mono")
                af.sample_rate, af.pts = 16000, 1024 * i
                out.mux(a.encode(af))
            out.mux(a.encode())


def probe(path):
    """(codec, width, height, average rate, frame times in seconds, rgb frames, audio packets)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [(f.pts * f.time_base, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        info = (v.codec_context.name, v.width, v.height, v.average_rate)
    with av.open(str(path)) as c:
        audio = [(p.pts * p.time_base, bytes(p)) for p in c.demux(audio=0) if p.dts is not None]
    return info, [t for t, _ in frames], [f for _, f in frames], audio


@pytest.fixture
def zdpp():
    return Enhancer(random_model("zerodcepp", scale_factor=4), device="cpu")


def test_h264_round_trip_keeps_frames_size_rate_timestamps_and_audio(tmp_path, zdpp):
    make_clip(tmp_path / "clip.mp4")
    frames, intervals = [], []
    switch = sys.getswitchinterval()

    def seen(k):  # called from the model's thread while the stages run
        frames.append(k)
        intervals.append(sys.getswitchinterval())
    n = enhance_video(tmp_path / "clip.mp4", tmp_path / "out.mp4", zdpp, on_frames=seen)
    assert max(intervals) <= min(switch, SWITCH_INTERVAL) and sys.getswitchinterval() == switch  # restored
    (codec, w, h, rate), times, rgb, audio = probe(tmp_path / "clip.mp4")
    (codec2, w2, h2, rate2), times2, rgb2, audio2 = probe(tmp_path / "out.mp4")
    assert n == 10 and sum(frames) == 10 and len(times2) == 10
    assert (codec2, w2, h2, rate2) == ("h264", 48, 32, RATE) == (codec, w, h, rate)
    assert times2 == times == [i * Fraction(1001, 30000) for i in range(10)]
    assert audio2 == audio and len(audio) >= 12  # copied packet for packet
    x = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255
    expected = io.quantize(zdpp(x), 8).transpose(0, 2, 3, 1).astype(np.float32)
    error = np.abs(np.stack(rgb2) - expected).mean()  # the enhanced frames, through a lossy codec
    assert error < 0.5 * np.abs(np.stack(rgb) - expected).mean()  # nearer the enhanced than the input


def test_lossless_output_holds_exactly_the_enhancers_frames(tmp_path, zdpp):
    """ffv1 in planar RGB both ways: the output's pixels are those of the enhancer run on the decoded
    input frames, in the same batches, rounded as images are."""
    make_clip(tmp_path / "clip.mkv", codec="ffv1", pix_fmt="bgr0", audio="flac", frames=10)
    n = enhance_video(tmp_path / "clip.mkv", tmp_path / "out.mkv",
                      zdpp, VideoOptions(batch=4))
    (codec, *_), times, frames_in, audio = probe(tmp_path / "clip.mkv")
    (codec2, *_), times2, frames_out, audio2 = probe(tmp_path / "out.mkv")
    assert n == 10 and codec2 == codec == "ffv1" and times2 == times and audio2 == audio
    x = torch.from_numpy(np.stack(frames_in)).permute(0, 3, 1, 2).float() / 255
    expected = [io.quantize(zdpp(x[i:i + 4]), 8).transpose(0, 2, 3, 1) for i in range(0, 10, 4)]
    np.testing.assert_array_equal(np.stack(frames_out), np.concatenate(expected))


def test_cli_names_a_corrupt_video_and_writes_the_rest(cli_main, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    make_clip(d / "clip.mp4")
    half = (d / "clip.mp4").read_bytes()
    (d / "broken.mp4").write_bytes(half[: len(half) // 2])  # cut short: no index
    (d / "noise.mkv").write_bytes(os.urandom(3000))
    Image.fromarray(np.full((12, 12, 3), 30, np.uint8)).save(d / "a.png")
    out = tmp_path / "out"
    status, err = cli_main("enhance", d, "-o", out, "--model", "zerodcepp", "--scale-factor", "4", "-q")
    assert status == 1 and "Traceback" not in err, err
    assert "broken.mp4' as a video" in err and "noise.mkv' as a video" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "clip.mp4"]  # no temporaries, no claims left
    assert len(probe(out / "clip.mp4")[1]) == 10


def test_cli_video_options(cli_main, tmp_path):
    make_clip(tmp_path / "clip.mp4", frames=3)
    out = tmp_path / "out"
    for args, message in [(["--codec", "nope"], "codec nope: FFmpeg"),
                          (["--codec", "ffv1", "--crf", "20"], "crf: codec ffv1 has none"),
                          (["--temporal-smoothing", "1"], "--temporal-smoothing: must be in [0, 1)"),
                          (["--batch", "0"], "--batch: must be at least 1")]:
        status, err = cli_main("enhance", tmp_path / "clip.mp4", "-o", out, *args)
        assert status == 2 and message in err and "Traceback" not in err, (args, err)
    status, err = cli_main("enhance", tmp_path / "clip.mp4", "-o", out, "--model", "zerodcepp", "--crf", "30",
                           "--preset", "ultrafast", "--temporal-smoothing", "0.5", "--batch", "2")
    assert status == 0, err
    assert "wrote 1 video(s) (3 frames)" in err and "frame/s" in err
    assert len(probe(out / "clip.mp4")[1]) == 3


def test_an_interrupt_leaves_no_file_and_stops_the_threads(tmp_path, zdpp):
    make_clip(tmp_path / "clip.mp4")
    calls = []

    def model(x):
        calls.append(x)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return zdpp(x)

    with pytest.raises(KeyboardInterrupt):
        enhance_videos([str(tmp_path / "clip.mp4")], tmp_path / "out", model, VideoOptions(batch=2))
    assert list((tmp_path / "out").iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("lowlight-fast-")]


def test_a_video_output_is_never_an_input_nor_claimed_twice(tmp_path, zdpp):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        make_clip(tmp_path / sub / "clip.mp4", frames=2)
    files = [str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "b" / "clip.mp4")]
    written, errors, frames = enhance_videos(files, tmp_path / "a", zdpp)
    assert written == [] and len(errors) == 2 and "is one of the input files" in errors[0]
    written, errors, frames = enhance_videos(files, tmp_path / "out", zdpp)
    assert [os.path.basename(p) for p in written] == ["clip.mp4"] and frames == 2
    assert len(errors) == 1 and "would overwrite the result of" in errors[0]
    assert not (tmp_path / "out" / OutputClaims.FILE).exists()


# ------------------------------------------------------------------------------------------ smoothing
@pytest.mark.parametrize("name,kwargs", [("zerodce", {}), ("zerodcepp", {"scale_factor": 3}), ("sci", {})])
def test_smoothing_with_weight_zero_is_the_enhancer(name, kwargs):
    e = Enhancer(random_model(name, **kwargs), device="cpu")
    x = torch.rand(3, 3, 14, 19) * 0.4
    torch.testing.assert_close(TemporalSmoothing(e, 0.0)(x), e(x), rtol=0, atol=0)
    assert not torch.equal(TemporalSmoothing(e, 0.5)(x), e(x))


def test_smoothing_averages_the_maps_across_frames_and_batches(zdpp):
    x = torch.rand(6, 3, 16, 20) * 0.4
    a = 0.7
    s = TemporalSmoothing(zdpp, a)
    whole = s(x)
    s.reset()
    parts = torch.cat([s(x[:2]), s(x[2:3]), s(x[3:])])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    from lowlight_fast.ops import le_curve

    m = zdpp.model
    with torch.inference_mode():
        maps = m.curve_map(x, inference=True)
        state = maps[:1]
        for t in range(6):
            state = a * state + (1 - a) * maps[t:t + 1]
            torch.testing.assert_close(whole[t:t + 1], le_curve.le_curve_shared(x[t:t + 1], state),
                                       rtol=1e-6, atol=1e-6)


def test_smoothing_refuses_a_model_without_known_maps():
    from lowlight_fast.models._common import EnhancementModel

    class Identity(EnhancementModel):
        def enhance_image(self, x):
            return x

    with pytest.raises(ValueError, match="Identity exposes none"):
        TemporalSmoothing(Enhancer(Identity(), device="cpu"), 0.5)
    with pytest.raises(ValueError, match="0 <= A < 1"):
        VideoOptions(temporal_smoothing=1.0).check()
