"""Data the loops read: labeled text, corpora, sentence pairs, request inputs, the replay tables' Arrow schemas."""
