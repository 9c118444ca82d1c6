"""RL kernel shared by actors, learners and serving: config, Q models, the acting policy (no Ray)."""
