"""Training data: identity conversations and their files (identity, identity_files), general chat
(general), the base model's own answers (replay), the registered mixed dataset (mixed) and packed
rows (packing). The identity phrases are package data in phrases/."""
