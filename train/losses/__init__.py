"""Losses: the registry (name -> data shape, builder, doc), the losses the library lacks (CLIP's),
and the config -> loss builder."""
