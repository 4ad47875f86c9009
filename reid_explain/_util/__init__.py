"""Private helpers with no knowledge of ReID: atomic file writes and strict JSON (``io``),
freed-memory bookkeeping (``memory``), lazy package exports (``lazy``), and the finder that
keeps moved import paths working (``moved``). Nothing here imports the rest of the package."""
