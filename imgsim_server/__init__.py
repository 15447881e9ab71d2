"""imgsim server: image-similarity over gRPC with a pretrained CNN and dynamic batching."""

__version__ = "0.1.0"
