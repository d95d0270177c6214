"""A run's checkpoints: saving last.pt and best.pt, and the state a ``--resume`` starts from.

last.pt holds everything to continue exactly (weights, optimiser, schedule, scaler, every
rank's RNG state, the resolved config, the best score); best.pt holds the weights of the best
validation. Nothing non-finite is ever written, so after a divergence the last good checkpoint
is still on disk, and every message says what is there and the command that continues.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from segkit.checkpoint import CheckpointWriteError, load_checkpoint, model_spec, save_checkpoint
from segkit.config import Config
from segkit.datasets import SampleError
from segkit.engine import run_folder
from segkit.engine.build import RunParts
from segkit.engine.device import gather_rng, restore_rng
from segkit.engine.run_log import logger

# What last.pt must hold for a resume to continue exactly (best.pt holds weights only).
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "iteration", "rng", "config", "best_score")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is left intact."""


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state that hold NaN or infinity."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix or "tensor"] if bad else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return []
    names = []
    for key, value in items:
        names += nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return names


def load_resume_state(work_dir: Path, config: Config, *, main: bool) -> dict[str, Any]:
    """The state in ``work_dir``'s last.pt, checked against the resumed ``config``.

    On rank 0 the changes a resume makes are listed and ``metrics.jsonl`` is made to agree
    with the checkpoint.

    Raises:
        RunFolderError: last.pt is missing or holds weights only, or ``config`` changes a
            setting the checkpoint was made with.
    """
    path = work_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        best = path.with_name("best.pt")
        hint = (
            f" (it has {best.name}, which holds weights only: start a new run from it with "
            f"--work-dir NEW --init-from {best})"
            if best.is_file()
            else ""
        )
        raise run_folder.RunFolderError(
            f"--resume needs {path}, which does not exist{hint}; pass --work-dir of the "
            "interrupted run"
        )
    state = load_checkpoint(path)
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        raise run_folder.RunFolderError(
            f"{path} holds weights only (no {', '.join(missing)}), so training cannot "
            f"continue exactly from it; start a new run from its weights with --work-dir "
            f"NEW --init-from {path}"
        )
    now = {**config.to_dict(), "work_dir": str(work_dir)}
    changed = run_folder.check_resume_changes(state["config"], now)
    if main and changed:
        logger.info(f"resume changes: {', '.join(changed)}")
    if main:
        run_folder.reconcile_metrics(
            work_dir / "metrics.jsonl", int(state["iteration"]), state.get("record")
        )
    return state


class Checkpoints:
    """The checkpoints of the run in ``work_dir``: what is on disk, saving, restoring.

    Args:
        work_dir: the run folder (checkpoints go to its ``checkpoints/``).
        device: the run's device (its RNG state is saved).
        main: rank 0, the only process that writes.
    """

    def __init__(self, work_dir: Path, *, device: torch.device, main: bool) -> None:
        self.work_dir, self.device, self.main = work_dir, device, main
        self.folder = work_dir / "checkpoints"
        self.saved_iter: int | None = None  # iteration of the last.pt on disk
        self.best_score = -math.inf

    def save(
        self,
        done: int,
        parts: RunParts,
        *,
        config: Config,
        record: dict[str, Any] | None = None,
        pending: bool = False,
    ) -> None:
        """last.pt always; best.pt (weights only) when ``record``'s mIoU beats the best so far.

        Args:
            done: the iteration reached.
            parts: the run's model, optimiser, schedule and scaler.
            config: the resolved configuration (recorded in both files).
            record: this iteration's validation record, if it validated.
            pending: the run stops during validation; a resume validates first.

        Raises:
            TrainingDivergedError: the weights or optimiser state hold NaN or infinity (e.g.
                BatchNorm statistics poisoned before the loss turned NaN); last.pt on disk
                stays as it was.
            CheckpointWriteError: the disk refused the file; the message names the command
                that continues from the last.pt on disk.
        """
        states = gather_rng(self.device)  # a collective: every rank takes part
        if not self.main:
            return
        model_state, optimizer_state = parts.model.state_dict(), parts.optimizer.state_dict()
        bad = nonfinite_tensors(model_state) + nonfinite_tensors(optimizer_state, "optimizer")
        if bad:
            shown = ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
            raise TrainingDivergedError(
                f"the model holds NaN or infinite values at iteration {done}; not saved "
                f"({shown}). {self.recovery(config.train.lr)}"
            )
        score = None if record is None else record["mIoU"]
        improved = score is not None and score > self.best_score
        if improved:
            self.best_score = score
        payload = {
            **model_spec(parts.model),  # the model's build arguments and meta
            "state_dict": model_state,
            "config": config.to_dict(),
            "iteration": done,
            "best_score": self.best_score,
            "record": record,
        }
        training = {
            "optimizer": optimizer_state,
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "rng": states,
            "pending_validation": pending,
        }
        self._write(done, payload, training, best=improved)

    def _write(
        self, done: int, payload: dict[str, Any], training: dict[str, Any], *, best: bool
    ) -> None:
        try:
            if best:
                save_checkpoint(self.folder / "best.pt", payload)
            save_checkpoint(self.folder / "last.pt", {**payload, **training})
        except CheckpointWriteError as err:
            raise CheckpointWriteError(
                f"{err} Training stopped at iteration {done}; {self.note()}: continue "
                f"with segkit train --resume --work-dir {self.work_dir}",
                path=err.path,
                errno=err.errno,
            ) from None
        self.saved_iter = done

    def restore(self, state: dict[str, Any], parts: RunParts, *, rank: int) -> tuple[int, bool]:
        """Load a :func:`load_resume_state` into the run's ``parts``; returns the iteration to
        start from and whether the interrupted run was stopped while validating."""
        optimizer, scheduler = parts.optimizer, parts.scheduler
        parts.model.load_state_dict(state["state_dict"])
        # The schedule is rebuilt from this invocation's settings (a new --lr or --iters after a
        # divergence), then positioned at the saved step; unchanged settings give the saved LRs.
        base_lrs = list(scheduler.base_lrs)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.base_lrs = base_lrs
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["initial_lr"] = base
            group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
        if state["scaler"]:  # empty when saved without CUDA AMP
            parts.scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        self.saved_iter = start
        self.best_score = float(state["best_score"])
        if rank < len(state["rng"]):  # a run resumed on more processes seeds the rest
            restore_rng(state["rng"][rank], self.device)
        if self.main:
            logger.info(f"resumed {self.work_dir} at iteration {start}")
        return start, bool(state.get("pending_validation", False))

    def sample_error(self, err: SampleError, done: int, *, validating: bool) -> SampleError:
        """``err``, met at iteration ``done`` after the save, saying what is on disk and how
        to go on."""
        return SampleError(
            err.problem.kind,
            err.problem.path,
            f"{err} (training stopped at iteration {done}{' in validation' * validating}; "
            f"{self.note()}: fix the file or add --skip-bad-samples, then --resume)",
        )

    def note(self) -> str:
        """What last.pt on disk holds, for messages."""
        if self.saved_iter is None:
            return "no checkpoint was saved yet"
        return f"{self.folder / 'last.pt'} holds iteration {self.saved_iter}"

    def recovery(self, lr: float) -> str:
        """What is on disk after a divergence and the command that continues from it."""
        if self.saved_iter is None:
            return (
                "No checkpoint was saved yet. Lower --lr, add --warmup-iters, drop --amp, or "
                "check the data with `segkit doctor`."
            )
        return (
            f"The last good checkpoint is intact ({self.note()}); continue from it with "
            f"a lower learning rate: segkit train --resume --work-dir {self.work_dir} "
            f"--lr {lr / 2:g} (or --no-amp)."
        )
