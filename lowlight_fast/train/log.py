"""What a run reports as it goes: OUT/train_log.csv and the progress bar."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from lowlight_fast.train.config import TrainConfig

LOG_NAME = "train_log.csv"


class RunLog:
    """A csv row (step, then the values by name) every ``log_every`` steps and at the last step, and a
    progress bar unless ``progress`` is off. A run resumed at ``step`` first drops the rows written
    after its checkpoint, so that its log equals the log of an uninterrupted run."""

    def __init__(self, cfg: TrainConfig, step: int, total: int):
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / LOG_NAME
        self.every = cfg.log_every
        self.total = total
        _truncate_log(self.path, step)
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=step, unit="step", desc=f"train {cfg.model}",
                         disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True)
        self._file = open(self.path, "a", newline="")
        self._csv = csv.writer(self._file)

    def record(self, step: int, values: dict[str, float]) -> None:
        """Step ``step`` is done, with these loss values."""
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
        self._bar.update(1)
        if step % self.every == 0 or step == self.total:
            if self._file.tell() == 0:
                self._csv.writerow(["step"] + sorted(values))
            self._csv.writerow([step] + [f"{values[k]:.6g}" for k in sorted(values)])
            self._file.flush()

    def close(self) -> None:
        self._bar.close()
        self._file.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and (not r[0].isdigit() or int(r[0]) <= step)]
    if len(rows) == 1:  # the header alone
        rows = []
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
