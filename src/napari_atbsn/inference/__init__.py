"""The inference engine: a loaded model (:mod:`.denoiser`), in-memory, lazy and chunked, resumable denoising
(:mod:`.inmemory`, :mod:`.lazy`, :mod:`.plan`, :mod:`.run`, :mod:`.schedulers`)."""
