"""How a model is built, loaded and saved: where its files come from (sources), a bi-encoder,
a cross-encoder, an image–text model, adapters, a random-weight workload, a saved folder read back,
the padding-free forward of the BERT family (packed).

May import: train.data (token layouts), train.errors; build.py alone reads config sections (the
schema's dataclasses) and turns them into plain arguments. Must not know: a task, a loss, the loop."""
