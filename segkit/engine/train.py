"""The training loop. :meth:`Trainer.run` reads top to bottom: draw a batch, forward, loss,
backward, step, and every ``val_interval`` iterations validate and checkpoint.

One process, or N under ``torchrun`` (DistributedDataParallel, Gloo on CPU / NCCL on GPU).
Training is counted in iterations (optimiser steps); epochs only decide when the sampler
draws a new permutation.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from segkit.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from segkit.config import Config
from segkit.datasets import SampleError
from segkit.datasets.preflight import preflight, problem_lines
from segkit.engine import distributed as dist
from segkit.engine import run_folder
from segkit.engine.data import build_datasets, make_loader
from segkit.engine.evaluate import EvaluationInterruptedError, evaluate
from segkit.engine.optim import build_optimizer, build_scheduler, resolve_backbone_lr_mult
from segkit.engine.report import RunReporter
from segkit.engine.runtime import (
    StopRequest,
    TrainingDivergedError,
    build_model,
    class_weights_for,
    default_work_dir,
    nonfinite_tensors,
    resolve_device,
    restore_rng,
    rng_state,
    set_train_mode,
    stop_signals_blocked,
)
from segkit.losses import build_criterion
from segkit.weights import load_weights


class Trainer:
    """Everything a run holds; build with a resolved :class:`Config`, then :meth:`run`."""

    def __init__(self, config: Config) -> None:
        self.config = cfg = config
        self.device = resolve_device(cfg.train.device)
        self.rank, self.world, local_rank = dist.init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
        self.main = self.rank == 0
        self.work_dir = Path(cfg.work_dir) if cfg.work_dir else default_work_dir(cfg)
        cfg.work_dir = str(self.work_dir)
        self.lock: run_folder.RunLock | None = None
        self.reporter: RunReporter | None = None
        if self.main:
            self.lock = run_folder.claim(
                self.work_dir, resume=cfg.train.resume, overwrite=cfg.train.overwrite
            )
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        cfg = self.config
        resume = self._resume_state() if cfg.train.resume else None
        self.train_set, self.val_set = build_datasets(cfg)
        self._preflight()
        self.num_classes = self.train_set.num_classes
        self.model = build_model(cfg, self.num_classes)
        self._report_loads(resume)
        self._check_sync_bn()
        self.model.to(self.device)
        self.memory_format = torch.preserve_format
        if cfg.train.channels_last:
            self.memory_format = torch.channels_last
            self.model.to(memory_format=self.memory_format)
        pretrained = bool(cfg.model.pretrained_backbone or cfg.train.init_from)
        cfg.train.backbone_lr_mult = resolve_backbone_lr_mult(cfg.train, pretrained)
        self.loader = make_loader(
            self.train_set,
            batch_size=cfg.train.batch_size,
            workers=cfg.data.workers,
            seed=cfg.train.seed,
            train=True,
            rank=self.rank,
            world=self.world,
        )
        self.val_loader = make_loader(
            self.val_set,
            batch_size=cfg.eval.batch_size,
            workers=min(cfg.data.workers, 1),
            seed=cfg.train.seed,
            train=False,
            rank=self.rank,
            world=self.world,
        )
        self.iters_per_epoch = len(self.loader)
        if cfg.train.epochs is not None:
            cfg.train.iters = cfg.train.epochs * self.iters_per_epoch
        self.total = cfg.train.iters
        self.optimizer = build_optimizer(self.model, cfg.train, cfg.train.backbone_lr_mult)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, self.total)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp and self._cuda)
        if cfg.train.class_weights == "auto":
            cfg.train.class_weights = class_weights_for(cfg, self.train_set)
        self.criterion = build_criterion(
            cfg.train.loss,
            num_classes=self.num_classes,
            ignore_index=cfg.train.ignore_index,
            class_weights=cfg.train.class_weights,
            focal_gamma=cfg.train.focal_gamma,
            aux_weight=cfg.train.aux_weight,
            se_weight=cfg.train.se_weight,
            dice_weight=cfg.train.dice_weight,
        ).to(self.device)
        self.start_iter, self.best_score = 0, -math.inf
        self.saved_iter: int | None = None  # iteration of the last.pt on disk
        self.pending_validation = False
        if resume is not None:
            self._load_state(resume)
        self.ddp: torch.nn.Module = self.model
        self.backbone_frozen: bool | None = None
        self.reporter = self._start_reporting()

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def run(self) -> dict[str, Any]:
        """Train to ``train.iters`` (or until stopped); returns the last validation record.

        A stop signal (INT, TERM, HUP) ends the iteration under way (or the validation, in a
        single process), saves last.pt and returns with ``stopped_at`` and ``signal``. A bad
        sample met by the loader saves last.pt, then raises its :class:`SampleError`.
        """
        cfg = self.config.train
        stop = StopRequest()
        stop.install()
        progress = self._progress()
        record: dict[str, Any] = {}
        running, count, started = 0.0, 0, time.perf_counter()
        batches, done = None, self.start_iter
        try:
            with stop_signals_blocked():  # start every loader's workers with the signals held
                iter(self.val_loader)
                iter(self.loader)
            if self.pending_validation:  # the interrupted run was stopped while validating
                record = self._validate_and_save(self.start_iter, None, stop, started)
            for it in range(self.start_iter, self.total):
                self._set_phase(it)
                epoch, position = divmod(it, self.iters_per_epoch)
                if batches is None or position == 0:
                    self.loader.sampler.set_epoch(epoch, start=position * cfg.batch_size)
                    batches = iter(self.loader)
                images, masks = next(batches)
                loss, parts = self.step(images, masks, it)
                running, count = running + loss, count + 1
                lr = self.optimizer.param_groups[-1]["lr"]
                if self.main and (it + 1) % cfg.log_interval == 0:
                    self.reporter.log_train(it + 1, loss, parts, lr)
                done = it + 1
                if done % cfg.val_interval == 0 or done == self.total:
                    record = self._validate_and_save(done, running / count, stop, started)
                    running, count = 0.0, 0
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", mIoU=self._last_miou)
                if self._should_stop(stop, done):
                    if self.saved_iter != done:
                        self._save(done)
                    return {**record, "stopped_at": done, "signal": stop.signum}
        except SampleError as err:  # a file that changed or broke after the pre-flight check
            validating = self._validating
            if self.saved_iter != done:
                self._save(done, pending=validating)
            raise SampleError(
                err.problem.kind,
                err.problem.path,
                f"{err} (training stopped at iteration {done}{' in validation' * validating}; "
                f"{self._saved_note()}: fix the file or add --skip-bad-samples, then --resume)",
            ) from None
        except EvaluationInterruptedError:
            if self.saved_iter != done:  # else last.pt already waits for this validation
                self._save(done, pending=True)
            print(f"\nstopped during validation ({self._saved_note()}; it validates first on "
                  "--resume)", flush=True)  # fmt: skip
            return {**record, "stopped_at": self.saved_iter, "signal": stop.signum}
        finally:
            stop.restore()
            if progress is not None:
                progress.close()
            self.close()
        return record

    def step(self, images: torch.Tensor, masks: torch.Tensor, it: int) -> tuple[float, dict]:
        """One optimisation step on a batch (iteration ``it``); returns the loss and its parts."""
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        masks = masks.to(self.device, non_blocking=True)
        with self._autocast():
            outputs = self.ddp(images)
            loss, parts = self.criterion(outputs, masks)
        value = float(dist.mean_across_ranks(loss.detach()))
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"loss is {value} at iteration {it + 1}; training stopped. {self._recovery()}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value, parts

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.config.train.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self._cuda else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _set_phase(self, it: int) -> None:
        """Two-stage training: backbone frozen (BN included) for ``freeze_backbone_iters``."""
        frozen = it < self.config.train.freeze_backbone_iters
        if frozen == self.backbone_frozen:
            return
        self.backbone_frozen = frozen
        self.model.backbone.requires_grad_(not frozen)
        self._apply_train_mode()
        if self.world > 1:  # DDP records which parameters train when it is built
            ids = [self.device.index] if self._cuda else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        if self.main and not frozen and it == self.config.train.freeze_backbone_iters > 0:
            print(f"iteration {it}: backbone unfrozen (stage 2)", flush=True)

    def _apply_train_mode(self) -> None:
        set_train_mode(
            self.model,
            backbone_frozen=bool(self.backbone_frozen),
            freeze_bn=self.config.train.freeze_bn,
        )

    def _validate_and_save(
        self, done: int, loss: float | None, stop: StopRequest, started: float
    ) -> dict[str, Any]:
        """Validate, save the checkpoints, then log: the log never runs ahead of last.pt."""
        single = self.world == 1  # under torchrun every rank must finish the reduction
        self._validating = True
        metrics, samples = evaluate(
            self.model,
            self.val_loader,
            num_classes=self.num_classes,
            class_names=self.train_set.class_names,
            ignore_index=self.config.train.ignore_index,
            device=self.device,
            config=self.config.eval,
            keep_samples=4,
            should_stop=(lambda: stop.signum is not None) if single else None,
        )
        self._validating = False
        self._apply_train_mode()
        lr = self.optimizer.param_groups[-1]["lr"]
        record = {"iter": done, **metrics.compute(), "loss": loss, "lr": lr}
        record["seconds"] = round(time.perf_counter() - started, 2)
        self._last_miou = f"{record['mIoU']:.3f}"
        self._last_table = metrics.format_table()
        self._save(done, record)
        if self.main:
            self.reporter.log_validation(record, metrics.matrix, samples)
        return record

    _last_miou = "-"
    _validating = False
    _last_table = ""

    def _should_stop(self, stop: StopRequest, done: int) -> bool:
        limit = self.config.train.stop_after
        local = stop.signum is not None or (
            limit is not None and done - self.start_iter >= limit and done < self.total
        )
        flag = dist.mean_across_ranks(torch.tensor(float(local), device=self.device))
        if float(flag) > 0 and self.main:
            why = "signal received" if stop.signum is not None else f"--stop-after {limit}"
            print(f"\nstopping at iteration {done} ({why}); continue with --resume", flush=True)
        return float(flag) > 0

    # -- set-up helpers -------------------------------------------------------------------

    def _resume_state(self) -> dict[str, Any]:
        path = self.work_dir / "checkpoints" / "last.pt"
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
        needed = ("optimizer", "scheduler", "scaler", "iteration", "rng", "config", "best_score")
        missing = [k for k in needed if k not in state]
        if missing:
            raise run_folder.RunFolderError(
                f"{path} holds weights only (no {', '.join(missing)}), so training cannot "
                f"continue exactly from it; start a new run from its weights with --work-dir "
                f"NEW --init-from {path}"
            )
        changed = run_folder.check_resume_changes(state["config"], self.config.to_dict())
        if self.main and changed:
            print(f"resume changes: {', '.join(changed)}", flush=True)
        if self.main:
            run_folder.reconcile_metrics(
                self.work_dir / "metrics.jsonl", int(state["iteration"]), state.get("record")
            )
        return state

    def _preflight(self) -> None:
        """Check every label file of both splits before the first iteration (verdicts cached
        per file): a bad file fails now, naming it, not hours in. With --skip-bad-samples the
        bad samples are left out and listed in ``bad_samples.txt``."""
        skip = self.config.data.skip_bad_samples
        if not self.main:
            dist.barrier()  # rank 0 checks first and fills the cache; the others read it
        skipped = []
        for dataset in (self.train_set, self.val_set):
            started = time.perf_counter()
            report = preflight(dataset, skip_bad=skip, workers=max(1, self.config.data.workers))
            if self.main:
                seconds = time.perf_counter() - started
                print(f"{dataset.split}: {report.summary()} in {seconds:.1f} s", flush=True)
            if report.skipped:
                skipped += problem_lines(report.bad)
        if not self.main:
            return
        dist.barrier()
        listing = self.work_dir / "bad_samples.txt"
        if skipped:
            listing.write_text("".join(line + "\n" for line in skipped))
            print(f"skipping {len(skipped)} bad sample(s), listed in {listing}", flush=True)
        else:
            listing.unlink(missing_ok=True)

    def _report_loads(self, resume: dict[str, Any] | None) -> None:
        reports = list(self.model.load_reports)
        init_from = self.config.train.init_from
        if init_from and resume is None:
            reports.append(load_weights(self.model, init_from))
        if self.main:
            for report in reports:
                print(report, flush=True)

    def _check_sync_bn(self) -> None:
        if not self.config.train.sync_bn:
            return
        if not self._cuda:
            raise ValueError(
                "--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel. On the CPU "
                "drop --sync-bn (each process then normalises its own batch), or use --freeze-bn."
            )
        self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["state_dict"])
        # The schedule is rebuilt from this invocation's settings (a new --lr or --iters after a
        # divergence), then positioned at the saved step; unchanged settings give the saved LRs.
        base_lrs = list(self.scheduler.base_lrs)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = base_lrs
        for group, base in zip(self.optimizer.param_groups, base_lrs, strict=True):
            group["initial_lr"] = base
            group["lr"] = base * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        if state["scaler"]:  # empty when saved without CUDA AMP
            self.scaler.load_state_dict(state["scaler"])
        self.start_iter = int(state["iteration"])
        self.saved_iter = self.start_iter
        self.pending_validation = bool(state.get("pending_validation", False))
        self.best_score = float(state["best_score"])
        if self.rank < len(state["rng"]):  # a run resumed on more processes seeds the rest
            restore_rng(state["rng"][self.rank], self.device)
        if self.main:
            print(f"resumed {self.work_dir} at iteration {self.start_iter}", flush=True)

    def _start_reporting(self) -> RunReporter | None:
        if not self.main:
            return None
        (self.work_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.config.save(self.work_dir / "config.yaml")
        data = self.config.data
        return RunReporter(
            self.work_dir,
            self.train_set.class_names,
            self.train_set.palette,
            data.mean,
            data.std,
            resume_at=self.start_iter if self.config.train.resume else None,
        )

    def _progress(self) -> Any:
        if not self.main:
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.total, initial=self.start_iter, desc="train", unit="it", dynamic_ncols=True
        )

    def _save(
        self, done: int, record: dict[str, Any] | None = None, *, pending: bool = False
    ) -> None:
        """last.pt always; best.pt (weights only) when ``record``'s mIoU beats the best so far.

        Nothing non-finite is written: a model or optimiser state holding NaN or infinity (e.g.
        BatchNorm statistics poisoned before the loss turned NaN) raises
        :class:`TrainingDivergedError` and the last.pt on disk stays as it was.
        """
        states = _gather_rng(self.device)
        if not self.main:
            return
        model_state = self.model.state_dict()
        optimizer_state = self.optimizer.state_dict()
        bad = nonfinite_tensors(model_state) + nonfinite_tensors(optimizer_state, "optimizer")
        if bad:
            shown = ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
            raise TrainingDivergedError(
                f"the model holds NaN or infinite values at iteration {done}; not saved "
                f"({shown}). {self._recovery()}"
            )
        score = None if record is None else record["mIoU"]
        improved = score is not None and score > self.best_score
        if improved:
            self.best_score = score
        payload = {
            "model": self.model.config,
            "state_dict": model_state,
            "meta": self.meta(),
            "config": self.config.to_dict(),
            "iteration": done,
            "best_score": self.best_score,
            "record": record,
        }
        folder = self.work_dir / "checkpoints"
        training = {
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": states,
            "pending_validation": pending,
        }
        try:
            if improved:
                save_checkpoint(folder / "best.pt", payload)
            save_checkpoint(folder / "last.pt", {**payload, **training})
        except CheckpointWriteError as err:
            raise CheckpointWriteError(
                f"{err} Training stopped at iteration {done}; {self._saved_note()}: continue "
                f"with segkit train --resume --work-dir {self.work_dir}",
                path=err.path,
                errno=err.errno,
            ) from None
        self.saved_iter = done

    def _saved_note(self) -> str:
        last = self.work_dir / "checkpoints" / "last.pt"
        if self.saved_iter is None:
            return "no checkpoint was saved yet"
        return f"{last} holds iteration {self.saved_iter}"

    def _recovery(self) -> str:
        """What is on disk after a divergence and the command that continues from it."""
        if self.saved_iter is None:
            return (
                "No checkpoint was saved yet. Lower --lr, add --warmup-iters, drop --amp, or "
                "check the data with `segkit doctor`."
            )
        lr = self.config.train.lr
        return (
            f"The last good checkpoint is intact ({self._saved_note()}); continue from it with "
            f"a lower learning rate: segkit train --resume --work-dir {self.work_dir} "
            f"--lr {lr / 2:g} (or --no-amp)."
        )

    def close(self) -> None:
        """Flush the logs and release the run folder (also after a failure)."""
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def meta(self) -> dict[str, Any]:
        """What eval/predict/export need besides weights: classes, colours, normalisation."""
        data = self.config.data
        return {
            "class_names": list(self.train_set.class_names),
            "palette": [list(c) for c in self.train_set.palette],
            "mean": list(data.mean),
            "std": list(data.std),
            "ignore_index": self.config.train.ignore_index,
            "dataset": data.dataset,
        }


def _gather_rng(device: torch.device) -> list[dict[str, Any]]:
    """Every rank's RNG state (index = rank), so that each resumes its own stream."""
    state = rng_state(device)
    if not dist.is_distributed():
        return [state]
    gathered: list[Any] = [None] * dist.world_size()
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def train(config: Config) -> dict[str, Any]:
    """Train with ``config``; returns the final validation record (plus ``stopped_at``)."""
    trainer = Trainer(config)
    try:
        record = trainer.run()
    finally:
        trainer.close()
        dist.cleanup()
    if trainer.main and "stopped_at" not in record and trainer._last_table:
        print(trainer._last_table)
    if trainer.main:
        print(f"run written to {trainer.work_dir}", flush=True)
    return record
