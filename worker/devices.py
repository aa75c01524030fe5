"""The worker's Vulkan devices at run time: which job slot uses which, and which are disabled.

Slots are pinned to the devices round-robin (slot ``i`` on device ``i % n``). A disabled device's slots
move to the devices left, round-robin again; with none left, the jobs run their CPU form.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.capabilities import VulkanInfo

SLOTS_PER_GPU = 8  # the most measured on one H200 (docs/gpu.md): 8 slots still added jobs per hour
CPUS_PER_SLOT = 2  # a tone-map job kept ~1.5 cores busy per slot at 8 slots on 16 cores (libx264 after the GPU)


@dataclass
class Device:
    position: int  # in ffmpeg.vulkan_devices: the ``device`` label of the metrics, ``position`` in capabilities
    info: VulkanInfo
    failures: int = 0  # consecutive Vulkan runs that failed here
    disabled: str | None = None  # why, once disabled (until the worker restarts)

    def usable(self, accel: str) -> bool:
        """Probed, not disabled, a Vulkan filter ran; a software device (lavapipe) only with ``accel: vulkan``."""
        info = self.info
        return (info.available and not self.disabled and bool(info.filters)
                and (accel == "vulkan" or info.type != "cpu"))

    def to_dict(self) -> dict:
        return {"position": self.position, **self.info.to_dict(), "disabled": self.disabled}


def device_for_slot(slot: int, devices: list[Device], accel: str) -> Device | None:
    """The slot's own device while it is usable, else one of the usable ones (round-robin); None: the CPU."""
    if not devices:
        return None
    home = devices[slot % len(devices)]
    if home.usable(accel):
        return home
    usable = [device for device in devices if device.usable(accel)]
    return usable[slot % len(usable)] if usable else None


def auto_slots(cpus: int, gpus: int) -> int:
    """``worker.concurrency: auto``: one slot without a GPU (FFmpeg's own threads fill the cores); with GPUs,
    ``SLOTS_PER_GPU`` each, but no more than one per ``CPUS_PER_SLOT`` cores (the CPU encoder is the bound)."""
    if gpus <= 0:
        return 1
    return max(1, min(SLOTS_PER_GPU * gpus, cpus // CPUS_PER_SLOT))
