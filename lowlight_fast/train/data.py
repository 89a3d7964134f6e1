"""The batches: which images a step sees and how they are cut, a function of (seed, step) alone."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from lowlight_fast.train.config import TrainConfig, TrainingError


def list_images(data_dir: str) -> list[str]:
    """Image files under ``data_dir`` (recursively, sorted, hidden entries skipped)."""
    from lowlight_fast.io import image_extensions

    exts = image_extensions()
    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError(f"data folder {data_dir!r} does not exist or is not a folder")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for n in sorted(filenames):
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in exts:
                files.append(os.path.relpath(os.path.join(dirpath, n), root))
    if not files:
        raise TrainingError(f"no images found under {data_dir!r}")
    return files


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    h = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class StepBatches(torch.utils.data.Dataset):
    """Item ``s`` is the batch of optimiser step ``s`` (B x 3 x H x W float32 in [0, 1])."""

    def __init__(self, cfg: TrainConfig, files: list[str]):
        self.cfg = cfg
        self.files = files
        self.batch = min(cfg.batch_size, len(files))
        self.steps_per_epoch = max(1, len(files) // self.batch)
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_bytes = 0

    def __len__(self) -> int:  # unbounded in epochs; the sampler says which steps run
        return 1 << 62

    def indices(self, step: int) -> tuple[int, list[int]]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(_mix(self.cfg.seed, epoch, "order"))
        perm = torch.randperm(len(self.files), generator=g).tolist()
        return epoch, perm[pos * self.batch:(pos + 1) * self.batch]

    def _load(self, i: int) -> torch.Tensor:
        """Image i as 3 x H x W float32, resized when ``size`` is set (cached within a byte budget)."""
        if i in self._cache:
            return self._cache[i]
        from lowlight_fast.io import ImageReadError, read_image

        path = os.path.join(self.cfg.data_dir, self.files[i])
        try:
            x = read_image(path).to_tensor()
        except ImageReadError as exc:
            raise TrainingError(str(exc)) from None
        if self.cfg.size:
            x = F.interpolate(x, size=(self.cfg.size, self.cfg.size), mode="bilinear", antialias=True,
                              align_corners=False).clamp_(0, 1)
        x = x[0]
        nbytes = x.numel() * 4
        if self._cache_bytes + nbytes <= (1 << 30):
            self._cache[i] = x
            self._cache_bytes += nbytes
        return x

    def _crop(self, x: torch.Tensor, epoch: int, i: int) -> torch.Tensor:
        c = self.cfg.crop
        h, w = x.shape[-2:]
        if min(h, w) < c:  # upscale small images so that a crop fits
            s = c / min(h, w)
            x = F.interpolate(x[None], size=(max(c, round(h * s)), max(c, round(w * s))), mode="bilinear",
                              align_corners=False)[0].clamp_(0, 1)
            h, w = x.shape[-2:]
        g = torch.Generator().manual_seed(_mix(self.cfg.seed, epoch, i, "crop"))
        top = int(torch.randint(0, h - c + 1, (1,), generator=g))
        left = int(torch.randint(0, w - c + 1, (1,), generator=g))
        return x[:, top:top + c, left:left + c]

    def __getitem__(self, step: int) -> torch.Tensor:
        epoch, idx = self.indices(step)
        imgs = []
        for i in idx:
            x = self._load(i)
            if self.cfg.crop:
                x = self._crop(x, epoch, i)
            imgs.append(x)
        shapes = {tuple(t.shape) for t in imgs}
        if len(shapes) > 1:
            raise TrainingError(
                f"the images of one batch differ in size ({sorted(shapes)}); use --batch-size 1, "
                "--size N (resize) or --crop N (random crops)")
        return torch.stack(imgs).contiguous()
