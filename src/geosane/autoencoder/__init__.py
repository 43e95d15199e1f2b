"""Weight-space autoencoder."""
