"""Data side of lightdiff's embedded demo model: procedural scenes, their tokenizer and a checker.

``scenes`` draws captioned shape scenes (English and Chinese), ``vocab`` builds the word-level
tokenizer of their grammar, ``checker`` scores an image against a caption by plain image analysis.
Importing this package does not import torch.
"""
