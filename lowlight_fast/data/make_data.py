"""Regenerate the bundled low-light samples and the training set of the bundled weights.

Needs scikit-image (for its public-domain / CC0 sample photographs; see LICENSES.md):

    pip install scikit-image
    python lowlight_fast/data/make_data.py samples            # -> lowlight_fast/data/samples/*.png
    python lowlight_fast/data/make_data.py train data/train   # -> data/train/{dark,bright}/*.png (not shipped)
    python lowlight_fast/data/make_data.py sci data/sci       # -> data/sci/*.png, SCI's set (not shipped)

Samples and training images come from disjoint source photographs. SCI's set is the three darkest
exposures of ``train``'s dark images (the same pixels), each in all six orders of its colour channels, so
that no channel is favoured (SCI has no colour-constancy term, and its short runs drifted into casts). A low-light version of an image x
(floats in [0, 1]) is ``gain * x ** gamma`` plus Gaussian noise whose strength grows with the signal
(shot-noise-like) plus a small constant read noise, quantised to 8 bits. Deterministic (fixed seeds).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))

# shipped samples: (skimage function, gain, gamma)
SAMPLES = [("chelsea", 0.22, 1.6), ("coffee", 0.18, 1.8), ("rocket", 0.25, 1.7), ("astronaut", 0.2, 1.5)]
# training sources (never the samples' photographs)
TRAIN = ["hubble_deep_field", "retina", "immunohistochemistry", "camera", "clock", "cell", "brick", "grass",
         "gravel", "coins", "text"]
# exposure variants of every training image: (gain, gamma); dark, as captured at night, and bright
EXPOSURES = [(0.08, 1.8), (0.15, 1.5), (0.3, 1.3), (0.55, 1.1), (1.0, 1.0), (1.4, 0.8)]


def _load(name: str) -> np.ndarray:
    from skimage import data

    a = getattr(data, name)()
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = (a.astype(np.float64) / max(1, a.max()) * 255).astype(np.uint8)
    return a


def darken(a: np.ndarray, gain: float, gamma: float, rng: np.random.Generator, noise: float = 0.012) -> np.ndarray:
    x = (a.astype(np.float64) / 255.0) ** gamma * gain
    x = x + rng.normal(0.0, 1.0, x.shape) * np.sqrt(noise * 0.5 * x + (noise * 0.25) ** 2)
    return np.clip(np.rint(np.clip(x, 0, 1) * 255), 0, 255).astype(np.uint8)


def make_samples(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for i, (name, gain, gamma) in enumerate(SAMPLES):
        rng = np.random.default_rng(1000 + i)
        Image.fromarray(darken(_load(name), gain, gamma, rng)).save(os.path.join(out, f"{name}_dark.png"),
                                                                    optimize=True)
        print(os.path.join(out, f"{name}_dark.png"))


def make_train(out: str) -> None:
    for sub in ("dark", "bright"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for i, name in enumerate(TRAIN):
        a = _load(name)
        for j, (gain, gamma) in enumerate(EXPOSURES):
            rng = np.random.default_rng(i * 100 + j)
            x = a.astype(np.float64) / 255.0
            y = np.clip(x ** gamma * gain, 0, 1)
            if gain < 1:
                y = darken(a, gain, gamma, rng)
            else:
                y = np.rint(y * 255).astype(np.uint8)
            Image.fromarray(y).save(os.path.join(out, "dark" if gain < 1 else "bright", f"{name}_{j}.png"))
    print(f"{len(TRAIN) * len(EXPOSURES)} training images in {out}")


def make_sci(out: str, darkest: int = 3) -> None:
    import itertools

    os.makedirs(out, exist_ok=True)
    n = 0
    for i, name in enumerate(TRAIN):
        a = _load(name)
        for j, (gain, gamma) in enumerate(EXPOSURES[:darkest]):
            y = darken(a, gain, gamma, np.random.default_rng(i * 100 + j))
            for order in itertools.permutations(range(3)):
                Image.fromarray(np.ascontiguousarray(y[..., list(order)])).save(
                    os.path.join(out, f"{name}_{j}_{''.join(map(str, order))}.png"))
                n += 1
    print(f"{n} training images for SCI in {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("samples", "train", "sci"))
    p.add_argument("out", nargs="?", help="output folder (default: the bundled samples folder / data/train / data/sci)")
    a = p.parse_args(argv)
    if a.what == "samples":
        make_samples(a.out or os.path.join(HERE, "samples"))
    elif a.what == "train":
        make_train(a.out or os.path.join("data", "train"))
    else:
        make_sci(a.out or os.path.join("data", "sci"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
