"""imgsim client: a Python API (`ImgsimClient`) and the `imgsim-client` CLI."""

from imgsim_client.client import ImgsimClient, ImgsimError, PairRequest, PairResult

__all__ = ["ImgsimClient", "ImgsimError", "PairRequest", "PairResult"]
