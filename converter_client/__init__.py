"""The client side of the master's HTTP protocol, shared by the worker and converterctl (needs only requests).

* ``transport``        MasterHttp: base URL, a requests session per thread (1 MiB blocks), timeouts
* ``errors``           what a transfer raises, before the worker or converterctl judges it
* ``responses``        a JSON answer, or the error it is
* ``control``          WorkerControl: register, claim, heartbeat, fail, complete, release
* ``download``         Downloader, PartialDownload: resumable, verified GETs of a whole file (or of its first bytes)
* ``download_writer``  HashingWriter: a download written by a helper thread, hashed as it arrives
* ``tus``              TusClient, TusUpload: the tus 1.0.0 client (worker outputs, converterctl sources)
* ``multipart``        MultipartUploader: a one-file multipart POST with its Repr-Digest
* ``request_bodies``   FileRangeBody, MultipartFileBody: streamed request bodies read from disk

Protocol names (routes, headers, error codes) come from ``converter_common.protocol``.
"""
