"""How a model is built, loaded and saved: where its files come from (sources), a bi-encoder,
a cross-encoder, an image–text model, adapters, a random-weight workload, a saved folder read back."""
