"""Configuration: the typed schema Hydra composes (schema.py: training's sections;
command_schema.py: train.evaluate, mine, retrieve and score), the checks that run once it is
composed (checks.py: ranges, combinations, messages that name the key) and what a resume may change
(resume_rules.py).

May import: schema.py and command_schema.py only the engine's settings and the loss registry's names (see below);
checks.py, resume_rules.py and reference.py the data, losses and engine they check.

schema.py is plain dataclasses and enums: the builders (models/build.py, data/build.py,
losses/build.py) and the tasks read its sections; it imports only the engine's settings and the
loss registry's names. checks.py and resume_rules.py belong to the commands' floor: nothing below
the commands imports them."""
