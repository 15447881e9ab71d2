"""The vector index (FAISS) and an index folder that grows (`index add`). Needs `[index]`.

FAISS is the library (chosen by `make bench-collections`, which measures it against usearch):
it has exact and approximate indexes behind one API, and a range search, which dedup needs to
find every pair above a threshold however large a group of copies is.

- Below `exact_below` vectors the index is exact (flat inner product; one matrix product per
  query batch). Above, it is approximate: `PCA{d},IVF{nlist},Flat` with exact re-ranking of the
  candidates on the full vectors (`IndexRefineFlat`: k x `k_factor` candidates), `nprobe`
  lists searched. The parameters are recorded beside the saved index. On structured vectors,
  k_factor 4 stops at recall@10 0.91 whatever nprobe; 16 reaches 0.98 (make bench-collections).
- Scores are similarities in one place (`_to_similarity`): inner product for cosine models
  (the vectors are L2-normalised), 1 - differing bits / bits for hamming models (phash), whose
  0/1 vectors go in an L2 index (squared L2 = differing bits).
- An index folder keeps the vectors as embedded (`vectors.parquet`, with each file's sha256)
  beside the FAISS index; `add_to_index` embeds only what is new or changed, checkpoints those
  vectors as it goes, and rebuilds the index from them with the parameters it recorded.
"""

from __future__ import annotations

from imgsim_client._extras import missing_extra

try:
    import faiss
    import numpy as np
except ModuleNotFoundError as e:
    missing_extra(e, "index", "collections (embed, index, search, dedup)", {"faiss", "numpy"})

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from imgsim_client._csv import write_text_atomic
from imgsim_client._extras import missing_extra
from imgsim_client.client import ImageResult, ImgsimClient
from imgsim_client.photos.files import Digests, file_digest
from imgsim_client.photos.vectors import Vectors, write_parquet

EXACT_BELOW = 50_000


RAW_VECTORS = "vectors.parquet"  # in an index folder: the vectors as embedded, with digests


def _weighted_sum(
    x: np.ndarray, ids: np.ndarray, sims: np.ndarray, alpha: float, plus: np.ndarray | None = None
) -> np.ndarray:
    """Rows of `x` at `ids` summed with weights max(sim, 0)**alpha (and `plus`, weight 1),
    L2-normalised: DBA's and QE's one formula."""
    w = np.clip(sims, 0.0, None) ** alpha * (ids >= 0)
    out = np.einsum("nk,nkd->nd", w.astype(np.float32), x[np.clip(ids, 0, None)])
    if plus is not None:
        out += plus
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def augment_database(x: np.ndarray, k: int, alpha: float, batch: int = 4096) -> np.ndarray:
    """Database-side augmentation (alpha-DBA, Radenović et al. 2018): each L2-normalised
    vector replaced by the normalised, similarity**alpha-weighted sum of itself and its k
    nearest neighbours. Exact neighbours below EXACT_BELOW vectors, else an IVF index."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if k <= 0 or len(x) < 2:
        return x.copy()
    index = VectorIndex.build(Vectors(list(range(len(x))), x, "", "cosine"))
    out = np.empty_like(x)
    for start in range(0, len(x), batch):
        sims, ids = index.search(x[start : start + batch], k + 1)  # itself first
        out[start : start + batch] = _weighted_sum(x, ids, sims, alpha)
    return out


def best_over(sims: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, ...]:
    """Merge the hits of several versions of the same queries (rotations): each indexed
    vector keeps its best score; the k best per query, best first."""
    s, i = np.concatenate(sims, axis=1), np.concatenate(ids, axis=1)
    order = np.argsort(-s, axis=1, kind="stable")
    s, i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    out_s = np.full((len(s), k), -np.inf, np.float32)
    out_i = np.full((len(s), k), -1, np.int64)
    for row in range(len(s)):
        _, first = np.unique(i[row], return_index=True)
        keep = np.sort(first[i[row][first] >= 0])[:k]
        out_s[row, : len(keep)], out_i[row, : len(keep)] = s[row][keep], i[row][keep]
    return out_s, out_i


@dataclass(frozen=True)
class IndexParams:
    """How an index was built (saved beside it)."""

    kind: str  # "exact" or "approximate"
    factory: str
    metric: str  # "inner_product" or "l2"
    similarity: str
    model: str
    dimension: int
    count: int
    nprobe: int = 0
    k_factor: int = 0
    build_s: float = 0.0
    # Database-side augmentation applied to the stored vectors (0: none), and the query
    # expansion `search` applies by default (0: none); weights are similarity**alpha.
    dba_k: int = 0
    dba_alpha: float = 0.0
    qe_k: int = 0
    qe_alpha: float = 0.0


class VectorIndex:
    """A FAISS index and its keys; batch in, batch out; scores are similarities."""

    def __init__(self, index, keys: list[str], params: IndexParams) -> None:
        self.index = index
        self.keys = keys
        self.params = params

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(
        cls,
        vectors: Vectors,
        exact_below: int = EXACT_BELOW,
        pca: int = 192,
        nprobe: int = 8,
        k_factor: int = 16,
        codes: str = "Flat",
        dba_k: int = 0,
        dba_alpha: float = 3.0,
        qe_k: int = 0,
        qe_alpha: float = 3.0,
    ) -> VectorIndex:
        """Exact below `exact_below` vectors, else PCA + IVF with exact re-ranking. `dba_k`
        augments the stored vectors first (`augment_database`); `qe_k`/`qe_alpha` are recorded
        as the query expansion that `query` applies by default (cosine models only)."""
        x = np.ascontiguousarray(vectors.matrix, dtype=np.float32)
        n, d = x.shape
        cosine = vectors.similarity == "cosine"
        if dba_k and cosine:
            x = augment_database(x, dba_k, dba_alpha)
        metric = faiss.METRIC_L2 if vectors.similarity == "hamming" else faiss.METRIC_INNER_PRODUCT
        started = time.perf_counter()
        if n < exact_below or vectors.similarity == "hamming":
            factory, kind = "Flat", "exact"
            index = faiss.index_factory(d, factory, metric)
        else:
            nlist = max(64, min(2048, int(4 * math.sqrt(n))))
            factory = f"PCA{min(pca, d)},IVF{nlist},{codes}"
            base = faiss.index_factory(d, factory, metric)
            sample = x[np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)]
            base.train(sample)
            faiss.extract_index_ivf(base).nprobe = nprobe
            index = faiss.IndexRefineFlat(base)  # re-rank candidates on the full vectors
            index.k_factor = k_factor
            kind = "approximate"
        index.add(x)
        params = IndexParams(
            kind=kind,
            factory=factory + (",RFlat" if kind == "approximate" else ""),
            metric="l2" if metric == faiss.METRIC_L2 else "inner_product",
            similarity=vectors.similarity,
            model=vectors.model,
            dimension=d,
            count=n,
            nprobe=nprobe if kind == "approximate" else 0,
            k_factor=k_factor if kind == "approximate" else 0,
            build_s=time.perf_counter() - started,
            dba_k=dba_k if cosine else 0,
            dba_alpha=dba_alpha if dba_k and cosine else 0.0,
            qe_k=qe_k if cosine else 0,
            qe_alpha=qe_alpha if qe_k and cosine else 0.0,
        )
        return cls(index, list(vectors.keys), params)

    def _to_similarity(self, raw: np.ndarray) -> np.ndarray:
        if self.params.metric == "l2":  # 0/1 bit vectors: squared L2 = differing bits
            return 1.0 - raw / self.params.dimension
        return raw

    def _threshold_to_raw(self, threshold: float) -> float:
        if self.params.metric == "l2":
            return (1.0 - threshold) * self.params.dimension + 1e-6
        return threshold

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, positions) of the k nearest per query, best first; -1 = none."""
        k = min(k, len(self))
        raw, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return self._to_similarity(raw), ids

    def stored(self) -> np.ndarray:
        """The indexed vectors as stored (after any augmentation), in key order."""
        return self.index.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, 0))

    def query(
        self, versions: np.ndarray, k: int, qe_k: int | None = None, qe_alpha: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best hits of queries given as (R, n, d): R versions of each (its rotations;
        R = 1 for plain queries), each indexed vector scored by its best version. Then
        alpha-query expansion (Radenović et al. 2018) with the index's recorded k and alpha
        unless given: the best version plus its `qe_k` first hits, weighted by
        similarity**alpha, searched again."""
        versions = np.asarray(versions, dtype=np.float32)
        if versions.ndim == 2:
            versions = versions[None]
        qe_k = self.params.qe_k if qe_k is None else qe_k
        qe_alpha = self.params.qe_alpha if qe_alpha is None else qe_alpha
        wide = max(k, qe_k + 1)
        hits = [self.search(v, wide) for v in versions]
        sims, ids = best_over([h[0] for h in hits], [h[1] for h in hits], wide)
        if qe_k <= 0 or self.params.metric != "inner_product":
            return sims[:, :k], ids[:, :k]
        # The version that scored the best first hit stands for the query.
        best = np.argmax(np.stack([h[0][:, 0] for h in hits]), axis=0)
        q = versions[best, np.arange(versions.shape[1])]
        # Only the hits' stored vectors, not the whole index (a million rows at 1M vectors).
        top = ids[:, :qe_k]
        rows = self.index.reconstruct_batch(np.clip(top, 0, None).reshape(-1))
        slots = np.where(top >= 0, np.arange(top.size).reshape(top.shape), -1)
        expanded = _weighted_sum(rows, slots, sims[:, :qe_k], qe_alpha, q)
        return self.search(expanded, k)

    def self_pairs(
        self,
        x: np.ndarray,
        threshold: float,
        batch: int = 4096,
        versions: np.ndarray | None = None,
    ) -> tuple[list[tuple[int, int, float]], int]:
        """Every pair (i < j) of the indexed vectors `x` scoring at or above `threshold` (and 0:
        no vector is capped), by FAISS's range search on an exact index, however many copies.
        `versions` (R, n, d): other versions of each image (its turns): a pair scores the best
        of either image's versions against the other upright. Past the exact size, `dedup`
        self-joins with `self_knn` and `knn_pairs` instead."""
        if self.params.kind != "exact":
            raise ValueError(
                "range search needs an exact index; use self_knn for an approximate one"
            )
        best: dict[tuple[int, int], float] = {}
        raw_t = self._threshold_to_raw(threshold)
        for queries in [x, *(versions if versions is not None else [])]:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
            for start in range(0, len(self), batch):
                q = queries[start : start + batch]
                lims, raw, ids = self.index.range_search(q, raw_t)
                sims = self._to_similarity(raw)
                for row in range(len(q)):
                    i, span = start + row, slice(lims[row], lims[row + 1])
                    for s, j in zip(sims[span], ids[span], strict=True):
                        if j != i and s >= threshold:
                            key = (i, int(j)) if i < j else (int(j), i)
                            best[key] = max(best.get(key, -1.0), float(s))
        return sorted((a, b, s) for (a, b), s in best.items()), 0

    def save(self, folder: Path, vectors: Vectors | None = None) -> None:
        """`index.faiss`, `keys.json` and `index.json` (the parameters) in `folder`, each
        written whole then renamed; with `vectors`, also the vectors as embedded (before any
        augmentation), `vectors.parquet`, which `index add` grows and rebuilds from."""
        folder.mkdir(parents=True, exist_ok=True)
        if vectors is not None:
            write_parquet(vectors, folder / RAW_VECTORS)
        tmp = folder / ".index.faiss.tmp"
        faiss.write_index(self.index, str(tmp))
        tmp.replace(folder / "index.faiss")
        write_text_atomic(folder / "keys.json", json.dumps(self.keys))
        write_text_atomic(folder / "index.json", json.dumps(asdict(self.params), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> VectorIndex:
        if not (folder / "index.faiss").is_file():
            raise FileNotFoundError(f"no saved index in {folder} (index.faiss)")
        params = IndexParams(**json.loads((folder / "index.json").read_text()))
        keys = json.loads((folder / "keys.json").read_text())
        return cls(faiss.read_index(str(folder / "index.faiss")), keys, params)


def knn_pairs(
    sims: np.ndarray, ids: np.ndarray, threshold: float, can_cap: bool = True
) -> tuple[list[tuple[int, int, float]], int]:
    """The pairs (i < j, best score) of k-NN results (row i's hits `ids[i]`) at or above
    `threshold`, each pair once however many ends found it, and how many rows had every hit
    above it (with `can_cap`: their groups may be larger than found)."""
    found = (sims >= threshold) & (ids >= 0)
    capped = int(found.all(axis=1).sum()) if can_cap and sims.size else 0
    rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
    i, j, s = rows[found], ids[found].astype(np.int64), sims[found].astype(np.float64)
    keep = i != j
    a, b, s = np.minimum(i, j)[keep], np.maximum(i, j)[keep], s[keep]
    order = np.lexsort((-s, b, a))  # by pair, best score first
    a, b, s = a[order], b[order], s[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return list(zip(a[first].tolist(), b[first].tolist(), s[first].tolist(), strict=True)), capped


def self_knn(
    x: np.ndarray, k: int, nprobe: int = 6, pca: int = 256, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of every row of `x`'s k nearest rows by inner product, itself
    included: exact products inside the `nprobe` inverted lists of each row, the lists chosen
    on a PCA projection (cheap at 1280-d), the scan done by FAISS's `big_batch_search`, which
    groups the rows by list so that it runs as matrix products. The self-join of `dedup` on
    an approximate index (results/collections.md has its time and recall at 1M)."""
    import contextlib
    import io

    from faiss.contrib.big_batch_search import big_batch_search
    from faiss.contrib.ivf_tools import add_preassigned

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    nlist = max(16, min(4096, int(4 * math.sqrt(n))))
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(n, min(n, 20 * nlist), replace=False)]
    proj = faiss.PCAMatrix(d, min(pca, d))
    proj.train(sample)
    kmeans = faiss.Kmeans(proj.d_out, nlist, niter=10, seed=seed, spherical=True)
    kmeans.train(proj.apply(sample))
    lists = np.empty((n, nprobe), np.int64)
    for start in range(0, n, 65536):
        part = proj.apply(x[start : start + 65536])
        lists[start : start + len(part)] = kmeans.index.search(part, nprobe)[1]
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.is_trained = True  # the lists are assigned here, not by its quantizer
    add_preassigned(ivf, x, np.ascontiguousarray(lists[:, 0]))
    ivf.nprobe = nprobe
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        sims, ids = big_batch_search(ivf, x, min(k, n), q_assign=lists.astype(np.int32), verbose=1)
    return sims, ids


def groups(n: int, pairs: list[tuple[int, int, float]]) -> list[int]:
    """Connected components of the pair graph (as imagededup's groups): a label per vector."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, _ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


@dataclass(frozen=True)
class Added:
    """What `add_to_index` did."""

    new: int
    changed: int
    unchanged: int
    failed: dict[str, str]
    count: int  # vectors in the index now
    kind: str
    embed_s: float
    build_s: float


class ModelMismatchError(ValueError):
    """The index was made with another model than the one asked for."""


def stored_vectors(folder: Path) -> Path:
    """The vectors an index folder keeps as embedded (`vectors.parquet`), which `index add`
    grows and `dedup --against` reads; FileNotFoundError, saying what to do, where an index
    was built before it kept them."""

    path = folder / RAW_VECTORS
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {RAW_VECTORS} (an index built before `index add` existed): build "
            "it again with `imgsim-client index VECTORS -o DIR`"
        )
    return path


def add_to_index(
    client: ImgsimClient,
    folder: Path,
    paths: list[str],
    model: str = "",
    progress: bool = True,
    checkpoint_s: float = 30.0,
) -> Added:
    """Embed the `paths` not in the index at `folder` (by path and content: a changed file is
    embedded again), append them, and rebuild the index with its recorded parameters. The
    new vectors are written to `vectors.parquet` every `checkpoint_s` seconds and when
    interrupted, so a second run embeds only what is still missing. `model`, if given, must be
    the index's (ModelMismatchError)."""
    import numpy as np

    from imgsim_client.photos.embed import embed_paths
    from imgsim_client.photos.files import display_path
    from imgsim_client.photos.vectors import read_parquet, to_vectors

    params = IndexParams(**json.loads((folder / "index.json").read_text()))
    if model and client.resolve_model(model) != params.model:
        raise ModelMismatchError(
            f"{folder} holds vectors of {params.model}, not {client.resolve_model(model)}; "
            "an index holds one model's vectors (build another index for that model)"
        )
    raw_path = stored_vectors(folder)
    old = read_parquet(raw_path)
    stored = dict(zip(old.keys, old.matrix, strict=True))
    digests = dict(old.digests)
    keyed = {display_path(p): p for p in paths}
    todo, changed, unchanged = [], 0, 0
    for key, path in keyed.items():
        if key in stored:
            now = file_digest(path)
            if digests.setdefault(key, now) == now:  # no digest recorded: taken as unchanged
                unchanged += 1
                continue
            changed += 1
        todo.append(path)
    reader = Digests()

    def merged(results: dict[str, ImageResult]) -> Vectors:
        """The old vectors, changed ones replaced by the new where embedded."""
        new = to_vectors(results, todo)
        rows = dict(stored)
        rows.update(zip(new.keys, new.matrix, strict=True))
        for key in new.errors:  # a changed file that no longer embeds leaves the index
            rows.pop(key, None)
        digest = {**digests, **{display_path(p): d for p, d in reader.of.items()}}
        keys = list(rows)
        dim = old.matrix.shape[1] if old.keys else (new.matrix.shape[1] if new.keys else 0)
        matrix = np.stack([rows[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
        return Vectors(keys, matrix.astype(np.float32), params.model, params.similarity,
                       new.errors, {k: digest[k] for k in keys if k in digest})  # fmt: skip

    def checkpoint(results: dict[str, ImageResult]) -> None:

        write_parquet(merged(results), raw_path)

    started = time.perf_counter()
    results = embed_paths(
        client, todo, params.model, progress, checkpoint=checkpoint if todo else None,
        checkpoint_s=checkpoint_s, read=reader,
    )  # fmt: skip
    embed_s = time.perf_counter() - started
    vectors = merged(results)
    built = VectorIndex.build(
        vectors, dba_k=params.dba_k, dba_alpha=params.dba_alpha or 3.0, qe_k=params.qe_k,
        qe_alpha=params.qe_alpha or 3.0,
    )  # fmt: skip
    built.save(folder, replace(vectors, errors={}))
    new_count = len(todo) - changed
    return Added(new_count, changed, unchanged, vectors.errors, len(built), built.params.kind,
                 embed_s, built.params.build_s)  # fmt: skip
