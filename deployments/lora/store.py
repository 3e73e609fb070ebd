"""The LoRA adapters one Denoiser replica holds: loaded on first use, kept in an LRU of `max_loaded`.

Loading has two parts. Reading a file (or fetching it from the hub) and converting it to diffusers'
keys (`lora_state_dict`: diffusers/PEFT, kohya and `diffusion_model.` formats) runs on a reader
thread while the denoising loop keeps stepping; injecting the read weights into the model
(`load_lora_adapter`, then the per-row forward of deployments/lora/per_row.py) runs on the loop's thread
between two steps, since it changes the model's modules. An adapter in use by a running request is
never evicted; evicting deletes the adapter's layers (the base weights were never touched).

A file that is missing, corrupt, not a LoRA or not made for this model fails the requests that asked
for it with an error naming the adapter, and leaves the model as it was.

Read adapters waiting to be installed are bounded too: those no waiting or running request wants
(read for a request that then left: cancelled, timed out) are kept for at most `max_loaded` adapters
(`trim`, the least recently asked for dropped first, and read again if asked for again). Requests
naming many adapters and then leaving can't fill the device.
"""

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from deployments import metrics
from deployments.errors import ModelLoadError
from deployments.lora import per_row
from deployments.settings.lora import LoraSettings

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
Reader = Callable[..., tuple[StateDict, dict | None]]  # diffusers' `Pipeline.lora_state_dict`


class AdapterStore:
    def __init__(
        self, model: torch.nn.Module, read: Reader, settings: LoraSettings, device: torch.device, model_name: str = "",
        hold_structure: bool = False,
    ):
        """`hold_structure`: the model's repeated blocks are compiled, so their LoRA layers are made now
        and kept (`per_row.hold_structure`)."""
        self.model = model  # the denoising model the adapters are injected into
        self.resident: frozenset[str] = frozenset()  # held for good, outside the LRU
        if hold_structure:
            per_row.hold_structure(model)
            self.resident = frozenset({per_row.STRUCTURE_ADAPTER})
        self.read = read
        self.settings = settings
        self.device = device
        self.model_name = model_name  # the metrics' `model` label
        self._installed: collections.OrderedDict[str, None] = collections.OrderedDict()  # least recently used first
        self.loads = 0  # adapters installed so far
        # read (or failed) and not installed, least recently asked for first
        self._reads: collections.OrderedDict[str, Future] = collections.OrderedDict()
        self._read_started: dict[str, float] = {}
        self._lock = threading.Lock()  # _reads is shared with callers of `prefetch`
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="adapter-reader")

    @property
    def installed(self) -> tuple[str, ...]:
        return tuple(self._installed)

    @property
    def reads_held(self) -> int:
        """Adapters read (or being read) and not installed."""
        with self._lock:
            return len(self._reads)

    @property
    def held(self) -> frozenset[str]:
        """Every adapter the model holds now: the installed ones and the resident ones."""
        return frozenset(self._installed) | self.resident

    def prefetch(self, names: Iterable[str]) -> Future:
        """Starts reading the adapters `names` that aren't loaded (any thread); the future resolves when
        every read has finished (to None; a failure surfaces when a request needs the adapter)."""
        with self._lock:
            reads = [self._read_of(name) for name in names if name not in self._installed]
        done: Future = Future()
        remaining = [len(reads)]
        if not reads:
            done.set_result(None)

        def one_done(_):
            with self._lock:
                remaining[0] -= 1
                finished = remaining[0] == 0
            if finished:
                done.set_result(None)

        for read in reads:
            read.add_done_callback(one_done)
        return done

    def ready(self, names: Iterable[str], keep: set[str]) -> bool:
        """On the loop's thread: whether every adapter of `names` is held, installing those whose
        read has finished (evicting the least recently used ones not in `keep` or `names` to make room)
        and starting reads for the others. Raises ModelLoadError for one that can't be loaded."""
        names = list(names)
        for name in names:
            if name in self.resident:
                continue
            if name in self._installed:
                self._installed.move_to_end(name)
                continue
            with self._lock:
                read = self._read_of(name)
            if not read.done() or read.cancelled():  # a dropped read: asked for again next time
                continue
            error = read.exception()
            if error is None:
                if not self._make_room(keep | set(names)):
                    continue
                error = self._install(name, *read.result())
            with self._lock:
                if error is None:
                    self._reads.pop(name, None)
                else:  # kept for this admission round: every request waiting on it fails alike
                    self._reads[name] = failed = Future()
                    failed.set_exception(error)
            if error is not None:
                raise ModelLoadError(f"LoRA adapter {name!r} could not be loaded: {error}") from error
        return set(names) <= self.held

    def forget_failures(self) -> None:
        """Drops failed loads, so a later request tries again (e.g. once the file is fixed)."""
        with self._lock:
            for name in [n for n, read in self._reads.items() if read.done() and not read.cancelled() and read.exception() is not None]:
                del self._reads[name]

    def trim(self, wanted: set[str]) -> None:
        """Keeps the reads of at most `max_loaded` adapters outside `wanted` (the adapters of the requests
        waiting or running), dropping the least recently asked for: their tensors are freed (one being
        read is dropped once read; one not started never runs)."""
        with self._lock:
            unwanted = [name for name in self._reads if name not in wanted]  # least recently asked first
            for name in unwanted[: max(0, len(unwanted) - self.settings.max_loaded)]:
                self._reads.pop(name).cancel()

    def evict(self, name: str) -> None:
        """Unloads adapter `name`: its layers are deleted, the base weights were never changed."""
        self.model.delete_adapters([name])
        del self._installed[name]
        metrics.ADAPTER_EVICTIONS.inc(model=self.model_name, adapter=name)
        logger.info("unloaded LoRA adapter %r", name)

    # ---- internals ---------------------------------------------------------------------------------

    def _read_of(self, name: str) -> Future:  # under self._lock
        if name not in self._reads:
            self._read_started[name] = time.perf_counter()
            self._reads[name] = self._readers.submit(self._read, name)
        self._reads.move_to_end(name)
        return self._reads[name]

    def _read(self, name: str) -> tuple[StateDict, dict | None]:
        """The adapter's weights in diffusers' keys, on the model's device (off the loop's thread)."""
        adapter = self.settings.adapters[name]
        state_dict, metadata = self.read(adapter.location(), weight_name=adapter.weight_name, return_lora_metadata=True)
        if not state_dict or not all("lora" in key for key in state_dict):
            raise ValueError(f"{adapter.location()} holds no LoRA weights (every key must name lora_A/lora_B or lora_down/lora_up)")
        # A copy: tensors straight from a safetensors file are unaligned, which changes some kernels' results.
        return {key: value.to(self.device, copy=True) for key, value in state_dict.items()}, metadata

    def _make_room(self, keep: set[str]) -> bool:
        while len(self._installed) >= self.settings.max_loaded:
            victim = next((name for name in self._installed if name not in keep), None)
            if victim is None:  # every loaded adapter is in use: wait for a request to finish
                return False
            self.evict(victim)
        return True

    def _install(self, name: str, state_dict: StateDict, metadata: Any) -> Exception | None:
        """Injects a read adapter into the model; on any problem the model is left as it was and the
        problem returned."""
        expected = sum(key.endswith("lora_A.weight") for key in state_dict)
        try:
            # diffusers' pipelines load the keys under "transformer."; a bare PEFT file has no prefix
            prefix = "transformer" if any(key.startswith("transformer.") for key in state_dict) else None
            self.model.load_lora_adapter(dict(state_dict), adapter_name=name, metadata=metadata, prefix=prefix)
            matched = _layers_with(self.model, name)
            if matched != expected:  # diffusers only warns about keys it can't place: never drop them silently
                raise ValueError(f"{expected - matched} of its {expected} LoRA layers match no layer of this model")
            per_row.check_plain_lora(self.model, name)
            per_row.install(self.model)
        except Exception as error:
            if name in getattr(self.model, "peft_config", {}):
                self.model.delete_adapters([name])
            metrics.ADAPTER_LOADS.inc(model=self.model_name, adapter=name, status="error")
            logger.warning("LoRA adapter %r failed to load: %s", name, error)
            return error
        self._installed[name] = None
        self.loads += 1
        seconds = time.perf_counter() - self._read_started.pop(name, time.perf_counter())
        metrics.ADAPTER_LOADS.inc(model=self.model_name, adapter=name, status="ok")
        metrics.ADAPTER_LOAD_SECONDS.observe(seconds, model=self.model_name)
        logger.info("loaded LoRA adapter %r in %.2fs", name, seconds)
        return None


def _layers_with(model: torch.nn.Module, adapter: str) -> int:
    """How many LoRA layers of `model` hold `adapter`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) and adapter in m.lora_A for m in model.modules())
