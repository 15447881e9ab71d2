"""Collection defaults chosen by `make bench-quality` on development data (UKBench and a
rotated UKBench; never on Holidays), by the rule in results/quality.md, which also reports what
each costs. A light module: the CLI's parser reads it without importing FAISS or numpy."""

# Database-side augmentation (alpha-DBA) `imgsim-client index` applies: each vector becomes
# the similarity**alpha-weighted sum of itself and its k nearest neighbours.
DBA_K = 3
DBA_ALPHA = 3.0
# Query expansion (alpha-QE) `search` applies with an index that records it.
QE_K = 0
QE_ALPHA = 3.0
# Rotations of each query `search` embeds; an indexed image scores its best one.
SEARCH_ROTATIONS = 4
# dedup's rule per model: (candidate floor, sure score, inliers, coverage[, fewest features,
# cannot-tell score]). Candidates score at least the floor; from the sure score they are kept at
# once, below it only with that many geometric inliers (SIFT + RANSAC) spanning that share of
# one image; where either image has fewer features verification cannot tell, and a candidate
# is kept from the cannot-tell score. The collection descriptor's rule was chosen by the worst
# F1 over the strong, mild and graphics development sets (results/dedup_rules.md); Lite0-GeM's
# on the strong set (results/neardup.md).
DEDUP_VERIFY: dict[str, tuple] = {
    "efficientnet-lite0-rmac-full384-ms": (0.65, 0.98, 26, 0.1, 40, 0.85),
    "efficientnet-lite0-gem": (0.55, 0.95, 26, 0.2),
}
# How a candidate of a model without a measured rule is verified: the collection model's
# inliers and coverage.
DEDUP_MIN_INLIERS = 26
DEDUP_MIN_COVERAGE = 0.1
# Versions of each image dedup embeds (1 upright; 4 with its turns; 8 with their mirrors): a
# pair scores its best, so that turned copies are candidates (results/dedup_rules.md).
DEDUP_ROTATIONS = 1
# Which image of a duplicate group `dedup --keep` keeps (imgsim_client.photos.keeper).
KEEP_POLICIES = ("largest", "oldest", "first", "shortest-path")
