"""Exceptions of the core. They know nothing of gRPC or HTTP: `transport/grpc_status.py` and
`transport/http_status.py` map them to status codes."""

MAX_MESSAGE = 2000  # characters of an error message sent to a caller


def bounded_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """An error message short enough for any client's metadata limit (8 KiB by default)."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


class CoreError(Exception):
    """Base class for errors the service reports to callers."""


class InvalidImageError(CoreError):
    """The bytes are not a decodable, allowed image."""


class ImageTooLargeError(InvalidImageError):
    """The image is over a size limit (bytes or pixels); HTTP answers 413."""


class InvalidRequestError(CoreError):
    """The request is malformed (missing image, bad reference, ...)."""


class ModelNotFoundError(CoreError):
    """No model of that name in the registry."""


class WeightsUnavailableError(CoreError):
    """The model is registered but its weights file is absent."""


class ConfigurationError(CoreError):
    """The server's settings cannot serve this model (e.g. int8 on a torch backend)."""


class OverloadedError(CoreError):
    """A bounded queue or limit is full; retry later."""


class CancelledError(CoreError):
    """The caller went away or its deadline passed before the work ran."""


class GraphUnavailableError(WeightsUnavailableError):
    """A torch-less server has no exported ONNX graph for the model."""


class DeadlineExceededError(CancelledError):
    """The call's deadline passed before its result was ready."""
