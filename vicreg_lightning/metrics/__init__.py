"""Pure tensor functions that score representations: RankMe and the health statistics, weighted
k-NN, invariance, distances between groups."""
