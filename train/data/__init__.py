"""Data: formats (files -> records), folders (a save_to_disk or shard folder -> the files of a
split), rows (records -> checked rows; a bad row named with its file and line), readers (a path ->
rows, one reader a kind of data), images, presets (the datasets this project knows by name), shapes
(rows -> what a loss trains on), the cache (tokenized once, memory-mapped, shared by every process),
samplers, padding and packing.

May import: train.errors and itself; build.py alone reads the schema's DataConfig and turns it into
plain arguments. Must not know: a model, a loss, a task, the loop."""
