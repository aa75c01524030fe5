#!/bin/bash
# On the GPU host, from the repository root: unpack the Vulkan loader and the FFmpeg 9 binary, then bench.
# Expects .gpu/ffmpeg.xz (imageio-ffmpeg's binary, xz) and the Debian 12 .debs of the Vulkan loader and the
# GL vendor-neutral dispatch (libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2): see docs/gpu.md.
set -euo pipefail
for deb in .gpu/*.deb; do dpkg -x "$deb" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
mkdir -p /tmp/gpu-bench
xz -T0 -dc .gpu/ffmpeg.xz > /tmp/gpu-bench/ffmpeg
chmod +x /tmp/gpu-bench/ffmpeg
nproc; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 PYTHONPATH=. timeout -k 10 "${BENCH_LIMIT:-540}" python3 bench/gpu/bench.py \
  --ffmpeg /tmp/gpu-bench/ffmpeg --work /tmp/gpu-bench --out "${OUT:-bench/out}/gpu.json" "$@"
