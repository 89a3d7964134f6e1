"""enhance_files with reading and writing threads (io_threads >= 1) against the sequential path
(io_threads=0): the same bytes, the same reports in the same order, a bounded number of images in
flight, and a clean stop on an exception."""
from __future__ import annotations

import os
import threading
import time
import weakref

import numpy as np
import pytest
from PIL import Image

from lowlight_fast import io
from lowlight_fast.enhance import OutputClaims, enhance_files
from tests.cli._png import write_png16


@pytest.fixture
def mixed(tmp_path):
    """Images of several kinds and sizes, and files that fail in different ways, in a fixed order."""
    rng = np.random.default_rng(3)
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    dark = lambda *s: rng.integers(0, 110, s).astype(np.uint8)  # noqa: E731
    Image.fromarray(dark(21, 30, 3)).save(d / "rgb.png")
    Image.fromarray(dark(17, 13, 4), "RGBA").save(d / "rgba.png")
    Image.fromarray(dark(9, 40)).save(d / "grey.png")
    Image.fromarray(dark(24, 24, 3)).save(d / "photo.jpg", quality=90)
    write_png16(d / "deep.png", rng.integers(0, 20000, (11, 15, 3)).astype(np.uint16))
    frames = [Image.fromarray(dark(12, 12, 3)) for _ in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    (d / "broken.png").write_bytes(b"not a png")
    Image.fromarray(dark(200, 200, 3)).save(d / "large.png")  # above max_pixels below
    Image.fromarray(dark(8, 8, 3)).save(d / "sub" / "rgb.png")  # its output collides with rgb.png's
    Image.fromarray(dark(10, 14, 3)).save(d / "unwritable.png")
    order = ["rgb.png", "broken.png", "rgba.png", "anim.gif", "grey.png", "large.png", "photo.jpg",
             "sub/rgb.png", "unwritable.png", "deep.png"]
    return [str(d / n) for n in order]


def _run(files, out, enhancer, io_threads, monkeypatch=None, **kw):
    events = []
    written, errors = enhance_files(files, out, enhancer, max_pixels=20000, io_threads=io_threads,
                                    on_progress=lambda p: events.append(("progress", p)),
                                    on_error=lambda m: events.append(("error", m.replace(str(out), "OUT"))),
                                    on_warning=lambda m: events.append(("warning", m)), **kw)
    files_out = {p.name: p.read_bytes() for p in out.iterdir()}
    return [os.path.relpath(p, out) for p in written], events, files_out


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_overlapped_writes_the_same_bytes_and_reports_in_the_same_order(mixed, tmp_path, enhancer, ext,
                                                                        monkeypatch):
    real = io.write_image

    def write_image(path, *a, **kw):  # one write fails: its error is reported in its place
        if os.path.basename(path).startswith("unwritable."):
            raise PermissionError(13, "Permission denied")
        return real(path, *a, **kw)

    monkeypatch.setattr(io, "write_image", write_image)
    runs = {n: _run(mixed, tmp_path / f"out{n}", enhancer, n, ext=ext) for n in (0, 1, 3)}
    written, events, outputs = runs[0]
    assert written == [f"{n}.{ext}" for n in ("rgb", "rgba", "anim", "grey", "photo", "deep")]
    per_file, pending = [], []  # each progress report with the reports just before it
    for kind, text in events:
        if kind == "progress":
            per_file.append((os.path.relpath(text, os.path.dirname(mixed[0])), pending))
            pending = []
        else:
            pending.append((kind, text))
    assert not pending
    assert [(f, [k for k, _ in msgs]) for f, msgs in per_file] == [
        ("rgb.png", []), ("broken.png", ["error"]), ("rgba.png", []), ("anim.gif", ["warning"]),
        ("grey.png", []), ("large.png", ["error"]), ("photo.jpg", []), ("sub/rgb.png", ["error"]),
        ("unwritable.png", ["error"]), ("deep.png", [])]
    for f, msgs in per_file:
        assert all(os.path.join(os.path.dirname(mixed[0]), f) in text for _, text in msgs), msgs
    assert "would overwrite the result of" in per_file[7][1][0][1]
    assert "permission denied" in per_file[8][1][0][1]
    for n in (1, 3):
        assert runs[n][0] == written
        assert runs[n][1] == events
        assert runs[n][2].keys() == outputs.keys()
        for name in outputs:
            assert runs[n][2][name] == outputs[name], name


def _in_flight_counter(monkeypatch, write_delay: float):
    """Counts the images between the start of their decoding and the end of their writing; returns
    the list of counts seen at each decoding start."""
    lock = threading.Lock()
    state = {"now": 0, "seen": []}
    read, write = io.read_image, io.write_image

    def read_image(path, **kw):
        with lock:
            state["now"] += 1
            state["seen"].append(state["now"])
        return read(path, **kw)

    def write_image(path, *a, **kw):
        time.sleep(write_delay)  # slower than the rest: an unbounded pipeline would pile images up
        write(path, *a, **kw)
        with lock:
            state["now"] -= 1

    monkeypatch.setattr(io, "read_image", read_image)
    monkeypatch.setattr(io, "write_image", write_image)
    return state["seen"]


@pytest.mark.parametrize("io_threads", [1, 2])
def test_memory_stays_bounded_with_many_images(tmp_path, monkeypatch, io_threads):
    rng = np.random.default_rng(1)
    d = tmp_path / "in"
    d.mkdir()
    files = []
    for i in range(30):
        files.append(str(d / f"{i:02d}.png"))
        Image.fromarray(rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)).save(files[-1])
    seen = _in_flight_counter(monkeypatch, 0.005)
    outputs = set()  # the enhancer's results still alive (held for their writing)
    alive_outputs = []

    def enhancer(x):
        y = x * 0.5
        outputs.add(id(y))
        weakref.finalize(y, outputs.discard, id(y))
        alive_outputs.append(len(outputs))
        return y

    written, errors = enhance_files(files, tmp_path / "out", enhancer, io_threads=io_threads)
    assert errors == [] and len(written) == 30
    # io_threads decoded ahead, the one in the model, io_threads waiting for or in their writing
    assert len(seen) == 30 and max(seen) <= 2 * io_threads + 1, seen
    assert max(alive_outputs) <= io_threads + 1, alive_outputs


def test_reading_ahead_and_writing_behind_overlap_the_model(tmp_path, monkeypatch, enhancer):
    """The next file is being decoded while the model runs, and a result is still being written when
    the model starts on the next one (each wait would time out on a sequential path)."""
    d = tmp_path / "in"
    d.mkdir()
    files = [str(d / f"{i}.png") for i in range(3)]
    for f in files:
        Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(f)
    read_started, model_on_next = threading.Event(), threading.Event()
    waited = []
    read, write = io.read_image, io.write_image

    def read_image(path, **kw):
        if path == files[1]:
            read_started.set()
        return read(path, **kw)

    def write_image(path, *a, **kw):
        if os.path.basename(path) == "0.png":
            waited.append(("write 0 saw the model on file 1", model_on_next.wait(10)))
        write(path, *a, **kw)

    calls = []

    def model(x):
        calls.append(x)
        if len(calls) == 1:
            waited.append(("model on file 0 saw file 1 decoding", read_started.wait(10)))
        if len(calls) == 2:
            model_on_next.set()
        return enhancer(x)

    monkeypatch.setattr(io, "read_image", read_image)
    monkeypatch.setattr(io, "write_image", write_image)
    written, errors = enhance_files(files, tmp_path / "out", model, io_threads=1)
    assert errors == [] and len(written) == 3
    assert waited == [("model on file 0 saw file 1 decoding", True), ("write 0 saw the model on file 1", True)]


@pytest.mark.parametrize("io_threads", [0, 2])
def test_an_interrupt_writes_what_was_enhanced_whole_and_stops_the_threads(tmp_path, monkeypatch, io_threads,
                                                                           enhancer):
    d = tmp_path / "in"
    d.mkdir()
    files = [str(d / f"{i}.png") for i in range(8)]
    rng = np.random.default_rng(7)
    for f in files:
        Image.fromarray(rng.integers(0, 90, (20, 20, 3)).astype(np.uint8)).save(f)
    expected, _ = enhance_files(files, tmp_path / "ref", enhancer, io_threads=0)
    write = io.write_image

    def slow_write(path, *a, **kw):
        time.sleep(0.05)  # still writing when the interrupt comes
        write(path, *a, **kw)

    monkeypatch.setattr(io, "write_image", slow_write)
    calls = []

    def model(x):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return enhancer(x)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        enhance_files(files, out, model, io_threads=io_threads)
    assert not [t for t in threading.enumerate() if t.name.startswith("lowlight-fast-")]
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{i}.png" for i in range(4)]  # the 4 enhanced before the interrupt, no temporaries,
    for name in names:                               # no claims left
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    assert not (out / OutputClaims.FILE).exists()


def test_io_threads_option(cli_main, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(np.full((8, 8, 3), 30, np.uint8)).save(d / "a.png")
    status, err = cli_main("enhance", d, "-o", tmp_path / "out", "--io-threads", "-1")
    assert status == 2 and "--io-threads: must be at least 0" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="io_threads"):
        enhance_files([str(d / "a.png")], tmp_path / "out", lambda x: x, io_threads=-1)
