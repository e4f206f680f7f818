"""Evaluation: encoding texts into vectors (encode.py), the corpus vector file and exact search over
it (search.py), STS and retrieval figures through the library's evaluators (figures.py), the one
table formatter (tables.py) and the progress bars of long evaluations (bars.py).

May import: train.data (padding, the cache), train.models (prompts), train.errors. Must not know:
the training loop, a task, the Hydra config."""
