"""``medpipe export <checkpoint> --format onnx|torchscript``: a deployable model file.

The exported graph is the task's ``forward`` (the network plus any input re-normalisation the
task does) followed by the output activation, with two outputs: ``logits`` and
``probabilities`` (sigmoid of the one logit for binary tasks = P(class 1), sigmoid per label for
multi-label and binary masks, softmax over classes otherwise). Classification and segmentation
checkpoints are both accepted. Its input is ``image``: ``(batch, channels, size, size)`` float
images normalised as the DataModule normalises them; the batch dimension is dynamic.

ONNX uses the ``torch.export``-based exporter; class names, task type and input shape are stored
in the ONNX metadata. After writing, the file is loaded back (onnxruntime / ``torch.jit.load``)
and its outputs compared with PyTorch's on the same input; a difference above 1e-4 is an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medpipe.errors import ConfigError, DataError, MedpipeError
from medpipe.evaluation.metrics import BINARY, MULTILABEL
from medpipe.io import atomic_path

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4


def activation_for(task: nn.Module) -> str:
    """How logits become probabilities for this task (see :class:`ExportWrapper`)."""
    task_type = str(getattr(task, "task_type", ""))
    if task_type == BINARY:
        return "binary"
    if task_type == MULTILABEL:
        return "sigmoid"
    if task_type == "segmentation":  # (N, C, H, W) masks: softmax over classes, else sigmoid
        return "softmax_channels" if getattr(task, "multiclass", False) else "sigmoid"
    return "softmax"


class ExportWrapper(nn.Module):
    """``image -> (logits, probabilities)`` around a trained task.

    ``activation``: ``binary`` (sigmoid of the one logit, shape (N,) = P(class 1)), ``sigmoid``
    (per output: multi-label, binary masks), ``softmax`` (over classes, last dimension) or
    ``softmax_channels`` (over the channel dimension of multi-class masks).
    """

    def __init__(self, task: nn.Module, activation: str) -> None:
        super().__init__()
        self.task = task
        self.activation = activation

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.task(image)
        # As medpipe.evaluation.metrics.logits_to_probs, written without len(), which would
        # freeze the batch size into the exported graph.
        if self.activation == "binary":
            return logits, torch.sigmoid(logits.flatten(1)[:, 0])
        if self.activation == "sigmoid":
            return logits, torch.sigmoid(logits)
        if self.activation == "softmax_channels":
            return logits, torch.softmax(logits, dim=1)
        return logits, torch.softmax(logits, dim=-1)


def load_any_task(path: Path) -> nn.Module:
    """Load a medpipe checkpoint as whichever task kind it was saved from (no config needed)."""
    import importlib

    from medpipe.tasks.factory import TASK_KINDS

    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist; train first or check the path.")
    errors: list[str] = []
    for kind, module_name in TASK_KINDS.items():
        try:
            cls = importlib.import_module(module_name).TASK_CLASS
        except ImportError:
            continue
        try:
            task = cls.load_from_checkpoint(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # wrong kind: unexpected hyper-parameters or keys
            errors.append(f"{kind}: {type(exc).__name__}")
            continue
        task.eval()
        return task
    raise DataError(
        f"checkpoint {path} could not be loaded as any medpipe task ({'; '.join(errors)}); "
        "is it a checkpoint written by `medpipe train`?"
    )


def input_shape(task: nn.Module, path: Path, input_size: int | None) -> tuple[int, int, int, int]:
    """``(1, channels, size, size)``: channels from the checkpoint, size from ``--input-size``
    or the checkpoint's recorded input size."""
    hp = dict(getattr(task, "hparams", {}) or {})
    channels = int(hp.get("in_channels") or hp.get("channels") or 0)
    if channels < 1:
        raise DataError(f"checkpoint {path} does not record its number of input channels")
    if input_size is None:
        for key in ("input_size", "image_size", "size"):
            if hp.get(key):
                input_size = int(hp[key])
                break
    if input_size is None:
        raise ConfigError(
            f"checkpoint {path} does not record its input size; pass --input-size, e.g. "
            "--input-size 28 for MedMNIST at 28 px (the data.size it was trained at)"
        )
    if int(input_size) < 1:
        raise ConfigError(f"--input-size={input_size} must be a positive number of pixels")
    return (1, channels, int(input_size), int(input_size))


def _metadata(task: nn.Module, shape: tuple[int, ...]) -> dict[str, str]:
    hp = dict(getattr(task, "hparams", {}) or {})
    return {
        "producer": "medpipe",
        "task_type": str(getattr(task, "task_type", hp.get("task_type", ""))),
        "class_names": json.dumps(list(hp.get("class_names") or [])),
        "input_shape": json.dumps(["batch", *shape[1:]]),
        "outputs": "logits; probabilities",
        "activation": activation_for(task),
    }


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The exporter's optimiser logs every pass at INFO; keep the CLI output to our one line."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    wrapper: ExportWrapper, example: torch.Tensor, target: Path, meta: dict[str, str]
) -> None:
    """ONNX via the torch.export-based exporter, with a dynamic batch dimension and metadata."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(target) as tmp, warnings.catch_warnings(), _quiet("onnxscript", "torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=["image"],
            output_names=["logits", "probabilities"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
        model = program.model_proto
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(model, str(tmp))


def run_onnx(path: Path, x: torch.Tensor) -> list[Any]:
    """Outputs of the ONNX file on ``x`` with onnxruntime (CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})


def export_torchscript(wrapper: ExportWrapper, example: torch.Tensor, target: Path) -> None:
    """TorchScript by tracing (``torch.jit`` is deprecated upstream but still the format many
    C++/mobile runtimes load; ONNX is the recommended export)."""
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # Lightning's own tracing first: torch.jit cannot walk a LightningModule's attributes
        # (its `trainer` property raises when detached), then the wrapper around the result.
        task = wrapper.task.to_torchscript(method="trace", example_inputs=example)
        traced = torch.jit.trace(
            ExportWrapper(task, wrapper.activation), example, check_trace=False
        )
        torch.jit.save(traced, str(tmp))


def max_difference(reference: tuple[torch.Tensor, ...], outputs: list[Any]) -> float:
    return max(
        float((torch.as_tensor(o).reshape(r.shape) - r).abs().max())
        for r, o in zip(reference, outputs, strict=True)
    )


def run(
    checkpoint: str | Path,
    format: str = "onnx",  # the CLI option is --format
    output: str | Path | None = None,
    input_size: int | None = None,
) -> Path:
    """Export ``checkpoint`` to ``output`` (default: beside it, ``best.onnx`` / ``best.torchscript.pt``)."""
    if format not in FORMATS:
        raise ConfigError(f"--format={format!r} is not supported; use one of {sorted(FORMATS)}")
    path = Path(checkpoint)
    task = load_any_task(path)
    shape = input_shape(task, path, input_size)
    target = Path(output) if output else path.with_name(path.stem + FORMATS[format])
    wrapper = ExportWrapper(task, activation_for(task)).eval()
    # batch of 2: torch.export specialises a size-1 dimension instead of keeping it dynamic
    example = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = wrapper(example)
    if format == "onnx":
        export_onnx(wrapper, example, target, _metadata(task, shape))
        check = torch.randn(3, *shape[1:], generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            reference = wrapper(check)
        diff = max_difference(reference, run_onnx(target, check))
    else:
        export_torchscript(wrapper, example, target)
        loaded = torch.jit.load(str(target))
        with torch.no_grad():
            diff = max_difference(reference, list(loaded(example)))
    if not diff <= TOLERANCE:
        raise MedpipeError(
            f"exported {target} differs from PyTorch by {diff:.2e} (> {TOLERANCE}); "
            "the model uses an operation the exporter does not translate faithfully"
        )
    log.info("exported %s -> %s (%s, input %s, max |diff| %.1e)", path, target, format, shape, diff)
    return target
