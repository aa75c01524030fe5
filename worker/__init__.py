"""The converter worker: claims jobs, moves files over HTTP, converts them with FFmpeg."""
