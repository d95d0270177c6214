"""Engine: the parts that wire models, data, losses and metrics together.

- ``train``: the training loop (:class:`~segkit.engine.train.Trainer`) and :func:`train`.
- ``build``: the resolved configuration and the parts of a run (model, loaders, optimiser...).
- ``run_state``: checkpoints (saving, resuming); ``run_folder``: the folder a run owns.
- ``run_log``, ``progress``, ``summary``, ``report``: what a run says and writes.
- ``signals``: stopping cleanly on SIGINT/SIGTERM/SIGHUP; ``device``: devices and RNG state.
- ``data``: datasets and reproducible loaders; ``optim``: optimiser and LR schedule.
- ``run_report``: a run folder as one HTML page (``report_html`` draws it, with
  ``report_classes``, ``report_pictures`` and ``report_markup``); ``val_samples``: the best and
  worst validation images it shows.
- ``dry_run``: ``segkit train --dry-run``; ``show_samples``: ``segkit doctor --show``.
- ``inference`` holds the one inference function (whole image, sliding window, multi-scale and
  flip) used by evaluation (``evaluate``), prediction and validation during training.
"""
