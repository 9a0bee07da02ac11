"""Train (02): engine, optimisers, the fold loop and fingerprints, MLM (mlm, mlm_corpus, mlm_loop), the pseudo-labels a
student reads, the planner."""
