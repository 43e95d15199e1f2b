"""geosane: learn from models, not data.

Stages (one sub-package each, data flows top to bottom):

- :mod:`geosane.zoo`          collect models from timm, the Hub, TorchGeo and local checkpoints
- :mod:`geosane.tokens`       turn weights into token sequences and back, bit for bit
- :mod:`geosane.autoencoder`  the transformer weight-space autoencoder and its training
- :mod:`geosane.generation`   sample new weights around a prompt model
- :mod:`geosane.downstream`   fine-tune and compare initializations on geospatial tasks
- :mod:`geosane.analysis`     layerwise probing and CKA of geospatial models
- :mod:`geosane.difuser`      SatDiFuser: diffusion UNet features with learned fusion

Shared infrastructure: :mod:`geosane.config`, :mod:`geosane.io`, :mod:`geosane.data`.
"""

__version__ = "0.1.0"
