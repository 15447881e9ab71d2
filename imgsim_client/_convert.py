"""Protobuf <-> the client's typed results (`types.py`): the one place that reads messages."""

from __future__ import annotations

import dataclasses

import grpc
from imgsim.v1 import similarity_pb2 as pb

from imgsim_client.types import (
    CompareResult,
    Face,
    FaceBox,
    FaceMatch,
    ImageRequest,
    ImageResult,
    ModelInfo,
    ModelList,
    ModelStats,
    PairRequest,
    PairResult,
    Stats,
    Threshold,
    Verified,
)

_CODES_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


def _image(data: bytes | None, ref: str, image_id: str) -> pb.Image:
    """An Image message: a ref to an earlier image of the stream, or bytes (with an id)."""
    return pb.Image(ref=ref) if ref else pb.Image(data=data or b"", id=image_id)


def _error(resp) -> tuple[grpc.StatusCode, str] | None:
    """(code, message) of a response's per-item error, or None when it succeeded."""
    if not resp.HasField("error"):
        return None
    return _CODES_BY_VALUE.get(resp.error.code, grpc.StatusCode.UNKNOWN), resp.error.message


def pair_request(req: PairRequest) -> pb.CompareRequest:
    return pb.CompareRequest(
        pair_id=req.pair_id,
        model=req.model,
        image_a=_image(req.data_a, req.ref_a, req.id_a),
        image_b=_image(req.data_b, req.ref_b, req.id_b),
    )


def image_request(req: ImageRequest) -> pb.EmbedRequest:
    return pb.EmbedRequest(
        image_id=req.image_id, image=_image(req.data, req.ref, req.id), model=req.model
    )


def compare_result(resp: pb.CompareResponse) -> CompareResult:
    return CompareResult(resp.score, resp.model, resp.verdict)


def _box(box: pb.FaceBox) -> FaceBox:
    return FaceBox(box.left, box.top, box.right, box.bottom)


def face_match(resp: pb.CompareResponse) -> FaceMatch:
    return FaceMatch(resp.score, resp.model, resp.verdict, _box(resp.face_a), _box(resp.face_b))


def verified(resp: pb.CompareResponse) -> Verified:
    return Verified(
        resp.score, resp.model, resp.verdict, resp.inliers, resp.verified, resp.verification
    )


def pair_result(resp: pb.CompareResponse) -> PairResult:
    if (error := _error(resp)) is not None:
        return PairResult(resp.pair_id, None, resp.model, *error)
    faces = {}
    if resp.HasField("face_a"):
        faces = {"face_a": _box(resp.face_a), "face_b": _box(resp.face_b)}
    return PairResult(resp.pair_id, resp.score, resp.model, verdict=resp.verdict, **faces)


def image_result(resp: pb.EmbedResponse) -> ImageResult:
    if (error := _error(resp)) is not None:
        return ImageResult(resp.image_id, None, resp.model, "", *error)
    faces = tuple(Face(_box(f.box), list(f.vector)) for f in resp.faces)
    return ImageResult(resp.image_id, list(resp.vector), resp.model, resp.similarity, faces=faces)


def _fields(msg, cls) -> dict:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(cls)}


def model_list(resp: pb.ListModelsResponse) -> ModelList:
    models = tuple(
        ModelInfo(
            **{
                **_fields(m, ModelInfo),
                "thresholds": tuple(Threshold(**_fields(t, Threshold)) for t in m.thresholds),
            }
        )
        for m in resp.models
    )
    return ModelList(models, resp.default_model, resp.collection_model)


def stats(resp: pb.GetStatsResponse) -> Stats:
    models = tuple(ModelStats(**_fields(m, ModelStats)) for m in resp.models)
    return Stats(**{**_fields(resp, Stats), "models": models})
