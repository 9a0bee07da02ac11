"""Prepare (00): input files, duplicates, prompt clusters, folds, text features; needs core and config only."""
