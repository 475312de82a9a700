"""Defaults shared by the torch-free CLI and the training configs (one place for each number)."""

GAME_BATCH = 256  # transitions per minibatch on a benchmark game
# Decision epochs per minibatch on dispatch logs; each epoch holds every agent of the city, far more samples
# than a game's transition.
DISPATCH_BATCH = 64
