"""Small helpers shared by tests: deterministic input images as encoded bytes, the command lines of
the processes Ray starts, and waiting on a condition (never a sleep standing in for one)."""

import io
import time

import numpy as np
import psutil
from PIL import Image


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_bytes(image: Image.Image, format: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save_args)
    return buffer.getvalue()


def command_line(process: psutil.Process) -> str:
    """The process's command line, or "" when it ended (or is a zombie awaiting its parent) meanwhile:
    Ray starts and reaps short-lived helper processes all the time."""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return ""


def wait_until(condition, message: str, timeout_s: float = 60, poll_s: float = 0.05) -> None:
    """Returns as soon as `condition()` holds; fails with `message` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(poll_s)


def edit_request(model: str, images, lora_settings=None, **values):
    """What every edge makes of `values` for `model` (a checkpoint directory): validated against its
    family's declaration under the default limits (and the adapters `lora_settings` offers), with its
    defaults filled in. `images`: upload bytes."""
    from deployments.checkpoints.loader import resolve_model
    from deployments.contracts import EditRequest
    from deployments.request.binding import parse
    from deployments.settings.limits import Limits
    from deployments.settings.lora import LoraSettings

    bound = resolve_model(model).request_model(Limits(), lora_settings or LoraSettings())
    return EditRequest(parse(bound, {**values, "image": list(images)}))
