"""What ``lowlight-fast enhance`` guarantees a careful (or hostile) user: inputs are never written over,
two processes never silently replace each other's results, bad values are refused with one line and
exit status 2, a file that cannot be handled is named and skipped, nothing temporary is left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from lowlight_fast.enhance import Enhancer, OutputClaims, enhance_files
from tests.cli._png import read_png16, write_png16


def _dark(rng, *shape) -> np.ndarray:
    return rng.integers(0, 110, shape).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(5)
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a", "b"):
        Image.fromarray(_dark(rng, 20, 24, 3)).save(d / f"{name}.png")
    return d


def _png_claiming(path, width: int, height: int) -> None:
    """A tiny PNG file whose header claims width x height pixels (its data is cut short)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------ bad flags
@pytest.mark.parametrize("args,message", [
    (["--scale-factor", "-1", "--model", "zerodcepp"], "--scale-factor: must be at least 1"),
    (["--scale-factor", "0", "--model", "zerodcepp"], "--scale-factor: must be at least 1"),
    (["--threads", "-1"], "--threads: must be at least 1"),
    (["--threads", "0"], "--threads: must be at least 1"),
    (["--quality", "101"], "--quality: must be at most 100"),
    (["--quality", "-5"], "--quality: must be at least 1"),
    (["--tile", "-3"], "--tile: must be at least 0"),
    (["--max-pixels", "-1"], "--max-pixels: must be at least 0"),
    (["--ext", "psd"], "--ext psd: not an image format Pillow can write"),
    (["--device", "gpu"], "--device gpu: expected auto, cpu, cuda or cuda:N"),
])
def test_bad_flags_are_one_line_and_exit_2(cli_main, folder, tmp_path, weights_dir, args, message):
    out = tmp_path / "out"
    status, err = cli_main("enhance", folder, "-o", out, "--weights", weights_dir / "zerodce.safetensors",
                        *args)
    assert status == 2, err
    assert message in err and "Traceback" not in err
    assert not out.exists() or not any(p.suffix == ".png" for p in out.iterdir())  # nothing was processed


def test_output_that_is_a_file_is_refused(cli_main, folder, tmp_path):
    target = tmp_path / "taken.png"
    target.write_bytes(b"x")
    status, err = cli_main("enhance", folder, "-o", target)
    assert status == 2 and "exists and is not a folder" in err and "Traceback" not in err
    assert target.read_bytes() == b"x"


def test_output_that_cannot_be_created_is_refused(cli_main, folder, tmp_path):
    (tmp_path / "plain").write_bytes(b"x")
    status, err = cli_main("enhance", folder, "-o", tmp_path / "plain" / "out")
    assert status == 2 and "cannot create the output folder" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ inputs kept
def test_output_folder_equal_to_input_folder_never_overwrites_an_input(cli_main, folder, weights_dir):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    status, err = cli_main("enhance", folder, "-o", folder, "--weights", weights_dir / "zerodce.safetensors",
                        "--device", "cpu", "-q")
    assert status == 1
    assert "is one of the input files, which is never written over" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_another_format_into_the_input_folder_is_allowed(cli_main, folder, weights_dir):
    status, err = cli_main("enhance", folder / "a.png", "-o", folder, "--ext", "tif",
                        "--weights", weights_dir / "zerodce.safetensors", "--device", "cpu", "-q")
    assert status == 0, err
    assert (folder / "a.tif").is_file()


# ------------------------------------------------------------------------------------------ two processes
def test_an_output_claimed_by_a_live_process_is_not_replaced(cli_main, folder, tmp_path, weights_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"the other run's result")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / OutputClaims.FILE).write_text(json.dumps({"a.png": other.pid}))
        status, err = cli_main("enhance", folder, "-o", out, "--weights", weights_dir / "zerodce.safetensors",
                            "--device", "cpu", "-q")
    finally:
        other.kill()
        other.wait()
    assert status == 1
    assert f"is being written by another process (pid {other.pid})" in err
    assert (out / "a.png").read_bytes() == b"the other run's result"
    assert (out / "b.png").is_file()
    assert json.loads((out / OutputClaims.FILE).read_text()) == {"a.png": other.pid}  # ours released


def test_claims_of_a_dead_process_are_taken_over(cli_main, folder, tmp_path, weights_dir):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / OutputClaims.FILE).write_text(json.dumps({"a.png": dead.pid, "b.png": dead.pid}))
    status, err = cli_main("enhance", folder, "-o", out, "--weights", weights_dir / "zerodce.safetensors",
                        "--device", "cpu", "-q")
    assert status == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # the claims file is gone too


def test_an_output_written_by_another_process_during_the_run_is_not_replaced(tmp_path, folder):
    """A run that ended (its claims gone) but wrote one of our outputs after we began: left as it is."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"an older result")  # from before the run: replaced as usual
    (out / "a.png").write_bytes(b"an older result")

    def enhancer(x):
        if not (out / "other").exists():  # while we work on a.png, another process writes b.png
            (out / "other").touch()
            (out / "b.png").write_bytes(b"the other run's result")
        return x

    written, errors = enhance_files([str(folder / "a.png"), str(folder / "b.png")], out, enhancer)
    assert [os.path.basename(p) for p in written] == ["a.png"]
    assert len(errors) == 1 and "was written by another process while this run was going" in errors[0]
    assert (out / "b.png").read_bytes() == b"the other run's result"
    assert (out / "a.png").read_bytes() != b"an older result"


def test_two_concurrent_runs_never_lose_or_mix_results(tmp_path, weights_dir):
    """Inputs of the same names from two folders into one output folder, two processes at once: every
    attempt is either written or reported, no output mixes the two, no traceback."""
    dirs = []
    for k in range(2):
        d = tmp_path / f"in{k}"
        d.mkdir()
        for i in range(6):
            Image.fromarray(np.full((48, 48, 3), 20 + 60 * k, np.uint8)).save(d / f"img{i}.png")
        dirs.append(d)
    out = tmp_path / "out"
    from tests.cli.conftest import ROOT, cli_command

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cli_command() + ["enhance", str(d), "-o", str(out), "--weights",
                                               str(weights_dir / "zerodce.safetensors"), "--device", "cpu"],
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for d in dirs]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    reported = 0
    for status, err in results:
        assert status in (0, 1) and "Traceback" not in err, err
        reported += err.count("error: ")
    written = sum(int(err.split("wrote ")[1].split(" ")[0]) for _, err in results)
    assert written + reported == 12
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"img{i}.png" for i in range(6)]
    from tests.cli.conftest import model_output

    expected = [model_output("zerodce", weights_dir / "zerodce.safetensors",
                             np.full((48, 48, 3), 20 + 60 * k, np.float32) / np.float32(255)) for k in range(2)]
    for name in names:  # each result is one run's, whole
        a = np.asarray(Image.open(out / name))
        assert any(np.array_equal(a, e) for e in expected), name


# ------------------------------------------------------------------------------------------ skipped files
def test_a_decompression_bomb_is_skipped_and_the_rest_written(cli_main, folder, tmp_path, weights_dir):
    _png_claiming(folder / "bomb.png", 100000, 100000)
    out = tmp_path / "out"
    status, err = cli_main("enhance", folder, "-o", out, "--weights", weights_dir / "zerodce.safetensors",
                        "--device", "cpu", "-q")
    assert status == 1
    assert "bomb.png" in err and "100000x100000" in err and "--max-pixels" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_max_pixels_lowers_the_limit(cli_main, folder, tmp_path, weights_dir):
    status, err = cli_main("enhance", folder, "-o", tmp_path / "out", "--max-pixels", "100",
                        "--weights", weights_dir / "zerodce.safetensors", "--device", "cpu", "-q")
    assert status == 1 and err.count("above the limit of 100") == 2


def test_out_of_memory_in_the_model_is_named_and_skipped(tmp_path, folder, weights_dir):
    calls = []

    def enhancer(x):
        calls.append(x.shape)
        if len(calls) == 1:
            raise MemoryError
        return x

    written, errors = enhance_files(sorted(str(p) for p in folder.iterdir()), tmp_path / "out", enhancer)
    assert len(errors) == 1 and "a.png" in errors[0] and "not enough memory" in errors[0]
    assert [os.path.basename(p) for p in written] == ["b.png"]


def test_nan_weights_are_refused_before_any_image(cli_main, folder, tmp_path, weights_dir):
    from lowlight_fast.models import build_model, load_weights
    from lowlight_fast.models.checkpoint import read_state_dict

    sd = read_state_dict(weights_dir / "zerodce.safetensors")
    sd["e_conv1.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.pth"
    torch.save(sd, bad)
    status, err = cli_main("enhance", folder, "-o", tmp_path / "out", "--weights", bad, "--device", "cpu")
    assert status == 2 and "non-finite" in err and "Traceback" not in err
    assert not list((tmp_path / "out").glob("*.png"))
    assert load_weights(build_model("zerodce"), weights_dir / "zerodce.safetensors")  # the good ones still load


def test_nan_input_tensor_is_refused_by_the_enhancer(weights_dir):
    e = Enhancer("zerodce", weights_dir / "zerodce.safetensors", device="cpu")
    x = torch.rand(1, 3, 16, 16)
    x[0, 2, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="contains NaN"):
        e(x)


# ------------------------------------------------------------------------------------------ temporaries
def test_a_failed_write_leaves_no_temporary_file(tmp_path, folder, monkeypatch):
    from lowlight_fast import io, png

    def full_disk(fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", lambda self, fp, *a, **kw: full_disk(fp))  # Pillow's writers
        m.setattr(png, "save", full_disk)  # the PNG writer
        for ext in ("png", "tif"):
            written, errors = enhance_files([str(folder / "a.png")], out, lambda x: x, ext=ext)
            assert written == [] and len(errors) == 1 and "no space left on the device" in errors[0]
            assert list(out.iterdir()) == []
    with pytest.raises(OSError):  # a failure after the file is written: cleaned up too
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
        io.write_image(str(out / "deep.png"), np.zeros((4, 4, 3), np.float32), bits=16)
    assert list(out.iterdir()) == []


def test_leftover_temporaries_are_never_taken_for_inputs(cli_main, folder, tmp_path, weights_dir):
    (folder / f".a.png.tmp{os.getpid() + 1}").write_bytes(b"half a png")  # a run killed while writing
    status, err = cli_main("enhance", folder, "-o", tmp_path / "out",
                        "--weights", weights_dir / "zerodce.safetensors", "--device", "cpu", "-q")
    assert status == 0, err


# ------------------------------------------------------------------------------------------ multi-frame, 16 bits
def test_multi_frame_files_warn_that_only_the_first_frame_is_enhanced(cli_main, tmp_path, weights_dir):
    rng = np.random.default_rng(2)
    frames = [Image.fromarray(_dark(rng, 16, 16, 3)) for _ in range(3)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:2])
    status, err = cli_main("enhance", tmp_path / "clip.gif", tmp_path / "pages.tif", "-o", tmp_path / "out",
                        "--weights", weights_dir / "zerodce.safetensors", "--device", "cpu", "-q")
    assert status == 0, err
    assert "clip.gif: holds 3 frames; only the first is enhanced" in err
    assert "pages.tif: holds 2 frames; only the first is enhanced" in err


def test_16_bit_grey_alpha_png_stays_16_bit(cli_main, tmp_path, weights_dir):
    from lowlight_fast import io

    rng = np.random.default_rng(4)
    la = rng.integers(0, 30000, (12, 14, 2)).astype(np.uint16)
    write_png16(tmp_path / "la.png", la)
    img = io.read_image(tmp_path / "la.png")
    assert img.bits == 16
    np.testing.assert_array_equal(img.alpha, la[..., 1])
    np.testing.assert_array_equal(np.rint(img.rgb[..., 0] * 65535).astype(np.uint16), la[..., 0])
    status, err = cli_main("enhance", tmp_path / "la.png", "-o", tmp_path / "out",
                        "--weights", weights_dir / "zerodce.safetensors", "--device", "cpu", "-q")
    assert status == 0, err
    out = read_png16(tmp_path / "out" / "la.png")
    assert out.dtype == np.uint16 and out.shape == (12, 14, 4)
    np.testing.assert_array_equal(out[..., 3], la[..., 1])


def test_temporaries_of_dead_processes_are_removed_from_the_output_folder(tmp_path, folder):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".a.png.tmp{dead.pid}").write_bytes(b"left by kill -9")
    (out / f".b.png.tmp{os.getpid()}x").write_bytes(b"not one of ours: kept")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / f".c.png.tmp{live.pid}").write_bytes(b"being written")
        written, errors = enhance_files([str(folder / "a.png")], out, lambda x: x)
    finally:
        live.kill()
        live.wait()
    assert errors == []
    assert sorted(p.name for p in out.iterdir()) == [f".b.png.tmp{os.getpid()}x", f".c.png.tmp{live.pid}", "a.png"]


def test_an_image_that_does_not_fit_in_memory_while_decoding_is_named(tmp_path, folder, monkeypatch):
    from lowlight_fast import io

    real = io._to_arrays

    def out_of_memory(im, low):
        if im.size == (24, 20) and not hasattr(out_of_memory, "done"):
            out_of_memory.done = True
            raise MemoryError
        return real(im, low)

    monkeypatch.setattr(io, "_to_arrays", out_of_memory)
    written, errors = enhance_files([str(folder / "a.png"), str(folder / "b.png")], tmp_path / "out", lambda x: x)
    assert len(errors) == 1 and "a.png" in errors[0] and "not enough memory to decode it" in errors[0]
    assert [os.path.basename(p) for p in written] == ["b.png"]
