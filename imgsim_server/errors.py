"""Exceptions of the core. They know nothing of gRPC; `status.py` maps them to status codes."""


class ImgsimError(Exception):
    """Base class for errors the service reports to callers."""


class InvalidImageError(ImgsimError):
    """The bytes are not a decodable, allowed image."""


class InvalidRequestError(ImgsimError):
    """The request is malformed (missing image, bad reference, ...)."""


class ModelNotFoundError(ImgsimError):
    """No model of that name in the registry."""


class WeightsUnavailableError(ImgsimError):
    """The model is registered but its weights file is absent."""


class ConfigurationError(ImgsimError):
    """The server's settings cannot serve this model (e.g. int8 on a torch backend)."""


class OverloadedError(ImgsimError):
    """A bounded queue or limit is full; retry later."""


class CancelledError(ImgsimError):
    """The caller went away or its deadline passed before the work ran."""
