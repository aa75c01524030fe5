#!/usr/bin/env bash
# What zstd level 1 saves on typical H.264/HEVC sources, and what it costs (issue 3, "Compression").
# Makes two 1080p clips with ffmpeg (camera-like: moving test pattern + temporal grain, AAC audio),
# then runs zstd's built-in benchmark (-b1: level 1, one thread, in memory) on each and on random bytes.
# Usage: bench/compression.sh [workdir]   (default bench/out/zstd; ~1-2 min on 2 cores)
set -euo pipefail
dir=${1:-$(dirname "$0")/out/zstd}
mkdir -p "$dir"
src="testsrc2=size=1920x1080:rate=25,noise=alls=12:allf=t+u"
aud="sine=frequency=440:sample_rate=48000"
[ -s "$dir/h264.mp4" ] || ffmpeg -loglevel error -y -f lavfi -i "$src" -f lavfi -i "$aud" -t 10 \
    -c:v libx264 -preset veryfast -crf 23 -pix_fmt yuv420p -c:a aac -b:a 128k "$dir/h264.mp4"
[ -s "$dir/hevc.mp4" ] || ffmpeg -loglevel error -y -f lavfi -i "$src" -f lavfi -i "$aud" -t 10 \
    -c:v libx265 -x265-params log-level=error -preset ultrafast -crf 28 -pix_fmt yuv420p -tag:v hvc1 \
    -c:a aac -b:a 128k "$dir/hevc.mp4"
[ -s "$dir/random.bin" ] || head -c 64M /dev/urandom > "$dir/random.bin"
for f in h264.mp4 hevc.mp4 random.bin; do
    size=$(stat -c %s "$dir/$f")
    echo "== $f: $size bytes"
    zstd -b1 -e1 -T1 -i3 "$dir/$f" 2>&1 | tr "\r" "\n" | grep -- "->" | tail -1 | sed "s/^ *[^:]*: */   zstd -b1 (in memory, 1 thread): /"
    zstd -q -1 -T1 -f "$dir/$f" -o "$dir/$f.zst"
    echo "   zstd -1 file: $(stat -c %s "$dir/$f.zst") bytes ($(python3 -c "print(f'{100*(1-$(stat -c %s "$dir/$f.zst")/$size):.2f}')") % saved)"
done
