"""Losses: the registry (name -> data shape, builder, doc), the losses the library lacks (CLIP's),
and the config -> loss builder (build.py).

May import: train.data.shapes (what shape a loss trains on), train.errors; build.py reads the
schema's LossConfig. Must not know: a task, the loop, how a model is built."""
