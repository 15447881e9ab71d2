"""The dataplane (`dataplane.Dataplane`) and what it is built of: loaded models (`engines`),
dynamic batching (`batcher`), the embedding cache (`cache`), image decoding (`images`), and
the typed results its verbs return (`types`). Transports import from the modules themselves;
this file imports nothing, so that `config` can use `core.images` without a cycle."""
