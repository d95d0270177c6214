"""The training loop. :meth:`Trainer.run` reads top to bottom: draw a batch, forward, loss,
backward, step, and every ``val_interval`` iterations validate and checkpoint.

One process, or N under ``torchrun`` (DistributedDataParallel, Gloo on CPU / NCCL on GPU).
Training is counted in iterations (optimiser steps); epochs only decide when the sampler
draws a new permutation. The set-up (resolved configuration, model, loaders, optimiser...) is
:mod:`segkit.engine.build`; checkpoints are :mod:`segkit.engine.run_state`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from segkit.config import Config
from segkit.datasets import SampleError
from segkit.engine import distributed as dist
from segkit.engine import run_folder
from segkit.engine.build import prepare_run, set_train_mode
from segkit.engine.device import autocast, process_device
from segkit.engine.evaluate import EvaluationInterruptedError, evaluate
from segkit.engine.progress import TrainProgress, is_terminal, validation_batches, validation_line
from segkit.engine.report import RunReporter, start_reporting
from segkit.engine.run_log import RunLogFile, console_output, logger
from segkit.engine.run_report import REPORT_FILE
from segkit.engine.run_state import Checkpoints, TrainingDivergedError, load_resume_state
from segkit.engine.signals import StopRequest, stop_signals_blocked
from segkit.engine.summary import describe_run
from segkit.engine.val_samples import SamplePicker, gather_picks


class Trainer:
    """A run: claims its folder, sets up from ``config`` (resolved once, on a copy), then
    :meth:`run` trains; rank 0 also writes the folder's ``train.log``."""

    def __init__(self, config: Config) -> None:
        self.device, self.rank, self.world = process_device(config.train.device)
        self.main = self.rank == 0
        self.work_dir = run_folder.work_dir_for(config)
        self.config = config  # replaced by the resolved copy in _build
        self.lock: run_folder.RunLock | None = None
        self.log_file: RunLogFile | None = None
        self.reporter: RunReporter | None = None
        self.progress: TrainProgress | None = None
        if self.main:
            self.lock = run_folder.claim(
                self.work_dir, resume=config.train.resume, overwrite=config.train.overwrite
            )
        try:
            if self.main:
                self.log_file = RunLogFile(self.work_dir / "train.log", append=config.train.resume)
            self._build(config)
        except BaseException as err:
            self.close(err)
            raise

    def _build(self, config: Config) -> None:
        resume = None
        if config.train.resume:
            resume = load_resume_state(self.work_dir, config, main=self.main)
        self.config, self.recipe, (self.train_set, self.val_set), self.parts = prepare_run(
            config,
            self.work_dir,
            device=self.device,
            rank=self.rank,
            world=self.world,
            init_weights=resume is None,
        )
        cfg, parts, self.num_classes = self.config, self.parts, self.train_set.num_classes
        self.model, self.memory_format = parts.model, parts.memory_format
        self.loader, self.val_loader = parts.loader, parts.val_loader
        self.optimizer, self.scheduler = parts.optimizer, parts.scheduler
        self.scaler, self.criterion = parts.scaler, parts.criterion
        self.iters_per_epoch = len(self.loader)
        self.total = cfg.train.iters
        self.checkpoints = Checkpoints(self.work_dir, device=self.device, main=self.main)
        self.start_iter, self.pending_validation = 0, False
        if resume is not None:
            self.start_iter, self.pending_validation = self.checkpoints.restore(
                resume, parts, rank=self.rank
            )
        self.ddp: nn.Module = self.model
        self.backbone_frozen: bool | None = None
        if self.main:
            resume_at = self.start_iter if cfg.train.resume else None
            self.reporter = start_reporting(cfg, self.train_set, resume_at=resume_at)

    def run(self) -> dict[str, Any]:
        """Train to ``train.iters`` (or until stopped); returns the last validation record.

        A stop signal (INT, TERM, HUP) ends the iteration under way (or the validation, in a
        single process), saves last.pt and returns with ``stopped_at`` and ``signal``. A bad
        sample met by the loader saves last.pt, then raises its :class:`SampleError`.
        """
        stop = StopRequest()
        stop.install()
        self.tty = is_terminal()
        failure: BaseException | None = None
        try:
            self._start()
            record = self._train(stop)
            self._finish(record)
            return record
        except BaseException as err:
            failure = err
            raise
        finally:
            stop.restore()
            if self.progress is not None:
                self.progress.close()
            self.close(failure)

    def _start(self) -> None:
        """Rank 0 says what the run does and where it writes, then shows its progress."""
        if not self.main:
            return
        datasets = (self.train_set, self.val_set)
        for line in describe_run(
            self.config, self.model, datasets, self.device, world=self.world,
            work_dir=self.work_dir, recipe=self.recipe,
        ):  # fmt: skip
            logger.info(line)
        every = self.config.train.log_interval
        self.progress = TrainProgress(
            total=self.total, start=self.start_iter, every=every, tty=self.tty
        )

    def _train(self, stop: StopRequest) -> dict[str, Any]:
        """The loop of :meth:`run`; a bad sample or a stop during validation saves first."""
        cfg = self.config.train
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
                if self.progress is not None:
                    self.progress.update(done, loss=loss, lr=lr, miou=self._last_miou)
                if done % cfg.val_interval == 0 or done == self.total:
                    record = self._validate_and_save(done, running / count, stop, started)
                    running, count = 0.0, 0
                if self._should_stop(stop, done):
                    if self.checkpoints.saved_iter != done:
                        self._save(done)
                    return {**record, "stopped_at": done, "signal": stop.signum}
        except SampleError as err:  # a file that changed or broke after the pre-flight check
            validating = self._validating
            if self.checkpoints.saved_iter != done:
                self._save(done, pending=validating)
            raise self.checkpoints.sample_error(err, done, validating=validating) from None
        except EvaluationInterruptedError:
            if self.checkpoints.saved_iter != done:  # else last.pt already waits for it
                self._save(done, pending=True)
            logger.info(f"stopped during validation ({self.checkpoints.note()}; it validates "
                        "first on --resume)")  # fmt: skip
            return {**record, "stopped_at": self.checkpoints.saved_iter, "signal": stop.signum}
        except Exception:
            # A validation that fails leaves the training state whole: keep it (one process;
            # under torchrun the other ranks may be inside a collective operation).
            if self._validating and self.world == 1 and self.checkpoints.saved_iter != done:
                self._save(done, pending=True)
                logger.error(f"validation failed: {self.checkpoints.note()}; it validates first "
                             "on --resume")  # fmt: skip
            raise
        return record

    def step(self, images: torch.Tensor, masks: torch.Tensor, it: int) -> tuple[float, dict]:
        """One optimisation step on a batch (iteration ``it``); returns the loss and its parts."""
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        masks = masks.to(self.device, non_blocking=True)
        with autocast(self.device, enabled=self.config.train.amp):
            outputs = self.ddp(images)
            loss, parts = self.criterion(outputs, masks)
        value = float(dist.mean_across_ranks(loss.detach()))
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"loss is {value} at iteration {it + 1}; training stopped. "
                f"{self.checkpoints.recovery(self.config.train.lr)}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value, parts

    def _set_phase(self, it: int) -> None:
        """Two-stage training: backbone frozen (BN included) for ``freeze_backbone_iters``."""
        frozen = it < self.config.train.freeze_backbone_iters
        if frozen == self.backbone_frozen:
            return
        self.backbone_frozen = frozen
        self.model.backbone.requires_grad_(not frozen)
        self._apply_train_mode()
        if self.world > 1:  # DDP records which parameters train when it is built
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        if self.main and not frozen and it == self.config.train.freeze_backbone_iters > 0:
            logger.info(f"iteration {it}: backbone unfrozen (stage 2)")

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
        batches: Iterable[Any] = self.val_loader
        if self.main:
            batches = validation_batches(self.val_loader, tty=self.tty, iteration=done)
        began = time.perf_counter()
        self._validating = True
        picker = self._sample_picker()
        metrics, samples = evaluate(
            self.model,
            batches,
            num_classes=self.num_classes,
            class_names=self.train_set.class_names,
            ignore_index=self.config.train.ignore_index,
            device=self.device,
            config=self.config.eval,
            keep_samples=4,
            should_stop=(lambda: stop.signum is not None) if single else None,
            on_image=picker,
        )
        self._validating = False
        self._apply_train_mode()
        picks = gather_picks(picker, done)  # every rank takes part; rank 0 gets them all
        lr = self.optimizer.param_groups[-1]["lr"]
        record = {"iter": done, **metrics.compute(), "per_class_acc": metrics.per_class_acc()}
        record |= {"loss": loss, "lr": lr, "seconds": round(time.perf_counter() - started, 2)}
        record["confusion"] = metrics.matrix.cpu().tolist()  # for the report; last, it is long
        self._last_miou = f"{record['mIoU']:.3f}"
        self._last_table = metrics.format_table()
        self._save(done, record)
        if self.main:
            seconds = time.perf_counter() - began
            logger.info(validation_line(record, best=self.checkpoints.best_score, seconds=seconds))
            if self.progress is not None:
                self.progress.exclude(seconds)
            if picks is not None and picks.error is not None:
                logger.warning(f"validation samples of the report left out: {picks.error}")
            self.reporter.log_validation(record, metrics.matrix, samples, picks)
        return record

    def _sample_picker(self) -> SamplePicker:
        """The report's best and worst validation images, from this process's share."""
        if self._val_names is None:
            self._val_names = [self.val_set.sample_name(i) for i in range(len(self.val_set))]
        data = self.config.data
        return SamplePicker(
            self._val_names,
            class_names=self.train_set.class_names,
            mean=data.mean,
            std=data.std,
            ignore_index=self.config.train.ignore_index,
            first=self.rank,
            step=self.world,
        )

    _last_miou = "-"
    _val_names: list[str] | None = None
    _validating = False
    _last_table = ""
    tty = False  # rank 0's standard output is a terminal: bars, not plain lines

    def _should_stop(self, stop: StopRequest, done: int) -> bool:
        limit = self.config.train.stop_after
        local = stop.signum is not None or (
            limit is not None and done - self.start_iter >= limit and done < self.total
        )
        flag = dist.mean_across_ranks(torch.tensor(float(local), device=self.device))
        if float(flag) > 0 and self.main:
            why = "signal received" if stop.signum is not None else f"--stop-after {limit}"
            logger.info(f"stopping at iteration {done} ({why}); continue with --resume")
        return float(flag) > 0

    def _save(
        self, done: int, record: dict[str, Any] | None = None, *, pending: bool = False
    ) -> None:
        """last.pt, and best.pt on a better mIoU (see :meth:`Checkpoints.save`)."""
        self.checkpoints.save(done, self.parts, config=self.config, record=record, pending=pending)

    def _finish(self, record: dict[str, Any]) -> None:
        """Rank 0's closing lines: the last validation's table, where the run is."""
        if not self.main:
            return
        if "stopped_at" not in record and self._last_table:
            title = f"results of the validation at iteration {record['iter']}:"
            logger.info(f"{title}\n{self._last_table}")
        logger.info(f"run written to {self.work_dir} (report: {self.work_dir / REPORT_FILE})")
        if self.reporter is not None:  # after the last line: the report says how the run ended
            self.reporter.write_report()

    def close(self, error: BaseException | None = None) -> None:
        """Flush the logs and release the run folder (also after a failure, ``error``, which
        train.log records)."""
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None
        if self.log_file is not None:
            self.log_file.close(error)
            self.log_file = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def train(config: Config) -> dict[str, Any]:
    """Train with ``config``; returns the final validation record (plus ``stopped_at``).

    The run's messages (start-up summary, progress, validations, warnings as one line each)
    are shown on the console and kept in the run folder's train.log.
    """
    with console_output():
        trainer = Trainer(config)
        try:
            return trainer.run()
        finally:
            trainer.close()
            dist.cleanup()
