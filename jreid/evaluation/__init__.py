"""The evaluation's passes over the device mesh; ``jreid.evaluate`` is their public API.

* ``plan``: tile and chunk sizes, and the backend's compilation choices.
* ``common``: placement of host arrays on the mesh, the sharded item columns,
  score kinds, and the timer that logs compilation and run time apart.
* ``neighbours``: the symmetric neighbour pass of re-ranking.
* ``rerank_pass``: expansion sets, V, query expansion and the inverted index.
* ``ranks``: the query x gallery pass that gives every method's good-item ranks
  and the top items.
"""
