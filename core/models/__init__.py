"""Model builders and versions as files: text encoders, the classifier, the wide part, Q-networks, tokenizers."""
