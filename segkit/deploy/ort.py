"""ONNX Runtime: the one place segkit opens a session, and an exported file behind the
segmenter call contract (:class:`OnnxRuntimeModel`, for ``segkit eval/predict --runtime
onnxruntime``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    import onnxruntime


def ort_session(
    path: str | os.PathLike, *, threads: int | None = None, optimise: bool = True
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session for the ONNX file ``path`` on the CPU, set up as segkit runs it.

    Args:
        path: the ONNX file.
        threads: intra-op threads; when not given, PyTorch's (``torch.get_num_threads()``),
            so the two runtimes of one process do not oversubscribe the cores.
        optimise: apply ONNX Runtime's graph optimisations (``False``: run the graph as
            written, to measure what they bring).

    Raises:
        Exception: ONNX Runtime's own error types (``InvalidProtobuf``, ``Fail``, ...) for a
            file it cannot load.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # By default the idle threads spin for a while after each run, which steals the cores from
    # the PyTorch work that runs next in the same process (resizing, metrics, the next runtime
    # that segkit bench times).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimise:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def input_name(source: onnxruntime.InferenceSession | str | os.PathLike) -> str:
    """The name of the one (image) input of an ONNX model.

    Args:
        source: a session (:func:`ort_session`), or the file itself, whose graph is then read
            without building a session (for the int8 quantiser, which builds its own sessions:
            one here would optimise the whole model only to learn this name).

    Raises:
        ValueError: the model takes no input or more than one.
    """
    if isinstance(source, (str, os.PathLike)):
        import onnx

        graph = onnx.load(str(source), load_external_data=False).graph
        initializers = {tensor.name for tensor in graph.initializer}
        names = [i.name for i in graph.input if i.name not in initializers]
        where = str(source)
    else:
        names = [i.name for i in source.get_inputs()]
        where = "the ONNX model"
    if len(names) != 1:
        raise ValueError(
            f"{where} takes the inputs {names}, not one image; give a file written by "
            "`segkit export`"
        )
    return names[0]


class OnnxRuntimeModel:
    """An exported ONNX file behind the segmenter call contract (``x -> {"out": logits}``), so
    ``segkit eval`` and ``segkit predict`` measure the deployment runtime itself.

    The file must output logits (exported without ``--argmax``). A file exported with
    ``--static HxW`` takes only that size: use ``--mode slide --window HxW`` with it.
    """

    training = False

    def __init__(self, path: str | os.PathLike) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        try:
            self.session = ort_session(path)
        except Exception as err:  # onnxruntime's own error types: InvalidProtobuf, Fail, ...
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"{path} is not an ONNX model ONNX Runtime can load ({reason[:200]}); give "
                "--onnx the file written by `segkit export`"
            ) from err
        self.input_name = input_name(self.session)
        #: ``metadata_props`` of the file (see :func:`export_metadata`).
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        (out,) = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})
        if out.ndim != 4:
            raise ValueError(
                f"the ONNX file returns shape {out.shape}, not N x C x H x W logits; export it "
                "without --argmax to evaluate or predict with it"
            )
        return {"out": torch.from_numpy(out).to(x.device)}

    def eval(self) -> OnnxRuntimeModel:
        return self

    def train(self, mode: bool = True) -> OnnxRuntimeModel:
        return self
