"""The allowed values of the input pipeline's options, importable without TensorFlow
(``jreid.validation`` checks configs against them; ``jreid.data.pipeline`` uses them)."""

# Batch samplers: "random" (a permutation of the images each epoch) or "pk"
# (data.ids_per_batch identities x data.images_per_id images).
SAMPLERS = ("random", "pk")
# Epoch lengths of the "pk" sampler: as many batches as the random sampler's, or
# one identity pass of the sampler on average.
PK_EPOCHS = ("images", "identity_pass")
