"""The adaptive layer's logic (no Ray): drift detectors, the controller's rules, continual-learning metrics."""
