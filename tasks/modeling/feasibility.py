"""Whether timm and this machine can do what params ask, found out in a second or two
instead of after minutes of work: the architecture, its fit to the input, the optimiser and
the schedule, the device.

Each check asks timm (or torch) itself rather than a copy of its tables, so a timm upgrade
changes what passes without an edit here, and raises ``ValueError`` with a message that
ends in the fix; the caller (``tasks/stages/preflight.py``) puts the params key in front.

What "the architecture fits the input" means here: timm builds ``model.arch`` on the meta
device (no memory, no weights) for ``preprocess.channels`` input channels, and a batch of
two ``preprocess.image_size`` square images on the meta device goes through it in eval mode
to a (2, classes) output. That catches a ViT made for 224 px given 32 px, or a network whose
strides and kernels leave nothing of an 8 px image; it does not judge whether the size is a
good idea (a ResNet on 8 px runs, with little spatial detail left).
"""

from __future__ import annotations

import difflib

# timm 1.0's create_scheduler_v2 names, for a "did you mean" only: timm decides what passes
SCHEDULER_NAMES = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "wsd", "rsqrt")
SCHEDULER_NAMES += ("constant",)


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def check_arch(arch: str, channels: int, image_size: int) -> None:
    """``arch`` is a timm model and takes ``channels`` x ``image_size`` px inputs."""
    import timm
    import torch

    if not timm.is_model(arch):
        hint = _suggest(arch, timm.list_models())
        raise ValueError(
            f"{arch!r} is not a timm architecture{hint}; timm.list_models('PATTERN*') lists them"
        )
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=2, in_chans=channels)
            out = model.eval()(torch.empty(2, channels, image_size, image_size))
    except NotImplementedError:  # an operator without a meta kernel: unknown, not refused
        return
    except Exception as exc:
        reason = next(
            (ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__
        )
        raise ValueError(
            f"timm {arch} does not take {channels}-channel {image_size}x{image_size} px images "
            f"({reason[:160]}); change preprocess.image_size or model.arch"
        ) from None
    if tuple(out.shape) != (2, 2):
        raise ValueError(
            f"timm {arch} gives outputs of shape {tuple(out.shape)} for "
            f"{image_size}x{image_size} px images, not one score per class; choose another "
            "model.arch"
        )


def _probe_parameters():
    import torch

    return [torch.nn.Parameter(torch.zeros(1))]


def check_optimizer(name: str) -> None:
    """timm's ``create_optimizer_v2`` builds ``name`` here (an optional backend missing,
    bitsandbytes or apex, counts as unknown: training would fail the same way)."""
    from timm.optim import create_optimizer_v2, list_optimizers

    try:
        create_optimizer_v2(_probe_parameters(), opt=name, lr=0.1)
    except Exception as exc:
        reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        hint = _suggest(name.lower(), list_optimizers())
        raise ValueError(
            f"{name!r} is not an optimizer timm can create here ({reason[:120]}){hint}; "
            "timm.optim.list_optimizers() lists them"
        ) from None


def check_scheduler(name: str, epochs: int, warmup_epochs: int) -> None:
    """timm's ``create_scheduler_v2`` builds ``name`` the way training does (stepped per
    update) and the result steps; ``none`` and ``plateau`` (which needs a metric per epoch)
    are refused because the training loop has neither."""
    import torch
    from timm.scheduler import create_scheduler_v2

    optimizer = torch.optim.SGD(_probe_parameters(), lr=0.1)
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=name,
            num_epochs=epochs,
            warmup_epochs=warmup_epochs,
            step_on_epochs=False,
            updates_per_epoch=2,
        )
        if scheduler is None:
            raise ValueError("no schedule")
        scheduler.step_update(num_updates=1)
        scheduler.step(1)
    except Exception as exc:
        reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        reason = reason or type(exc).__name__
        hint = _suggest(name, SCHEDULER_NAMES)
        raise ValueError(
            f"{name!r} is not a schedule timm's create_scheduler_v2 can run per step "
            f"({reason[:120]}){hint}; e.g. cosine, step, poly, constant"
        ) from None


def check_device(name: str) -> None:
    """``cuda`` needs a CUDA device here; ``auto`` and ``cpu`` always work."""
    if name != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError("cuda was asked for but this machine has no CUDA device; use cpu or auto")
