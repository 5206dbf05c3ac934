"""The shared Lightning training loop: typed config -> Trainer -> run directory."""
