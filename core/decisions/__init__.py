"""Decision policies: rank a request's actions from context and action features, learn from rewards."""
