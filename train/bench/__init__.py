"""python -m train.bench: this project against the library's trainers, measured (train/bench/recipes.py
for the recipes, image_text.py for CLIP-style training, scale.py for memory and start-up at corpus size,
steps.py for steady-state step rates, suite.py for the GPU suite).

A command: may import anything of train/ (it drives the loop and the library's trainers side by
side); nothing else imports it."""

from train.bench.cli import main

__all__ = ["main"]
