"""What a person reads in a saved model's folder: the model card (README.md of final/ and best/,
model_card.py) and the facts it tells, gathered from a run's config and results (facts.py).

May import: the config schema, train.models, train.engine (checkpoint writing). Used by the
commands only."""
