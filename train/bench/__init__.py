"""python -m train.bench: this project against the library's trainers, measured (train/bench/recipes.py
for the recipes, image_text.py for CLIP-style training, scale.py for memory and start-up at corpus size)."""

from train.bench.cli import main

__all__ = ["main"]
