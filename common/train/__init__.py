"""Train (02): engine, optimisers, the fold loop and fingerprints, MLM, the pseudo-labels a student reads, the planner."""
